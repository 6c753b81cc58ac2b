"""Image files -> RGB arrays in displayed orientation, and arrays -> network input.

Decoding goes through Pillow (a torchvision dependency) rather than cv2.imread because
cv2 returns a half-grey picture for a truncated JPEG with only a note on stderr, while
Pillow raises; a damaged photo must be an error, not a silent training sample. The EXIF
orientation tag is applied (phones store portrait shots as rotated landscape pixels),
so boxes in annotation files refer to the picture as it is displayed.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..geometry import resized_size
from .records import DataError

DEFAULT_MAX_PIXELS = 50_000_000
"""Images above this many pixels are refused (a 50 MP photo decodes to 150 MB of RGB)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90 or 270 degrees
_EXIF_ORIENTATION = 0x0112

PathLike = Union[str, Path]


class ImageMissing(DataError):
    """The image file does not exist (a separate class so readers can count it apart)."""


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count before anything is decoded."""
    try:
        if not path.is_file():
            raise ImageMissing(f"{path}: image file not found")
        empty = path.stat().st_size == 0
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # name too long, NUL byte, no permission...
        raise DataError(f"{path}: cannot access image file ({exc})") from None
    if empty:
        raise DataError(f"{path}: image file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # we apply our own, lower, limit below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to open safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        img.close()
        raise DataError(f"{path}: image has zero size ({width}x{height})")
    if width * height > max_pixels:
        img.close()
        raise DataError(f"{path}: {width}x{height} = {width * height} pixels exceeds the limit of "
                        f"{max_pixels} (raise max_pixels to accept it)")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block must not hide a decodable picture
        return 1


def image_size(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) as displayed (EXIF rotation applied), read from the header only."""
    path = Path(path)
    img = _open(path, max_pixels)
    with img:
        width, height = img.size
        if _orientation(img) in _SWAPS_AXES:
            width, height = height, width
    return height, width


def _to_rgb8(img: Image.Image, path: Path) -> np.ndarray:
    """Any Pillow mode -> HxWx3 uint8. Alpha is composited over white; 16-bit is scaled."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(img).astype(np.float64)
        gray = np.clip(np.round(gray / 257.0), 0, 255).astype(np.uint8)  # 65535 -> 255
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{path}: floating-point images (mode F) are not supported")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[:, :, 3:] / 255.0
        return np.round(rgba[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image to an RGB uint8 (H, W, 3) array as displayed.

    Grayscale, palette, CMYK, RGBA (over white) and 16-bit inputs are converted. Missing,
    empty, truncated, corrupt or over-`max_pixels` files raise DataError naming the file.
    """
    path = Path(path)
    img = _open(path, max_pixels)
    try:
        with img:
            img.load()  # full decode: raises on truncated or corrupt data
            oriented = ImageOps.exif_transpose(img)
            rgb = _to_rgb8(oriented, path)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: image data is corrupt or truncated ({exc})") from None
    return np.ascontiguousarray(rgb)


def to_network_input(image: np.ndarray, short_side: int = 256) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 (H, W, 3) -> ((3, h, w) float32 ImageNet-normalized tensor, (h, w)).

    (h, w) follows geometry.resized_size (short side to `short_side`, each side a multiple
    of 32). Shrinking uses area averaging (no aliasing on big photos), enlarging bilinear.
    """
    resized = network_size(image, short_side)
    return normalized(resized), resized.shape[:2]


def network_size(image: np.ndarray, short_side: int = 256) -> np.ndarray:
    """The RGB uint8 photo resized to the network input's (h, w) (to_network_input's first step;
    the Cropper also hands it to the subject detectors, so a large photo is shrunk once)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 (H, W, 3) array, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    new_h, new_w = resized_size(height, width, short_side)
    shrinking = new_h * new_w < height * width
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


_SCALE = tuple(float(v) for v in (1.0 / (255.0 * np.asarray(IMAGENET_STD))).astype(np.float32)) + (0.0,)
_SHIFT = tuple(float(v) for v in (-np.asarray(IMAGENET_MEAN) / np.asarray(IMAGENET_STD)).astype(np.float32)) + (0.0,)


def normalized(resized: np.ndarray, channels_last: bool = False) -> torch.Tensor:
    """RGB uint8 (h, w, 3) -> (3, h, w) float32 ImageNet-normalized tensor: (x / 255 - mean) / std
    as a per-channel multiply and add (OpenCV: a tenth of numpy's time on a 3-wide last axis).
    `channels_last`: a view in channels-last layout (no copy: the pixels are already stored that
    way), for a network that runs channels-last."""
    data = cv2.add(cv2.multiply(resized.astype(np.float32), _SCALE), _SHIFT)
    tensor = torch.from_numpy(data.reshape(resized.shape)).permute(2, 0, 1)
    return tensor if channels_last else tensor.contiguous()
