"""Readers, writers and generators of annotated crop data."""
from .common import ImageIndex, ReadResult
from .dataset import Dataset
from .gaicd import gaicd_splits, read_gaicd_dir, read_gaicd_txt, read_split_list
from .images import DEFAULT_MAX_PIXELS, ImageMissing, image_size, load_image, to_network_input
from .json_sets import read_cpc, read_cpc_raw, read_json, write_cpc, write_json
from .records import SPLITS, CropSet, DataError, UserData, format_box
from .user_csv import read_user_csv, write_user_csv

__all__ = [
    "DEFAULT_MAX_PIXELS", "SPLITS", "CropSet", "DataError", "Dataset", "ImageIndex", "ImageMissing", "ReadResult",
    "UserData", "format_box", "gaicd_splits", "image_size", "load_image", "read_cpc", "read_cpc_raw",
    "read_gaicd_dir", "read_gaicd_txt", "read_json", "read_split_list", "read_user_csv", "to_network_input",
    "write_cpc", "write_json", "write_user_csv",
]
