"""Readers, writers and generators of annotated crop data."""
from .records import SPLITS, CropSet, DataError, UserData, format_box

__all__ = ["SPLITS", "CropSet", "DataError", "UserData", "format_box"]
