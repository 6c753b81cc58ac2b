"""Image loading: EXIF orientation, mode conversion, damaged files, network input."""
import struct
import zlib

import cv2
import numpy as np
import torch
import pytest
from PIL import Image

from pic_core.data import DataError, ImageMissing, image_size, load_image, to_network_input
from pic_core.data.images import IMAGENET_MEAN, IMAGENET_STD

RED, BLUE = (255, 0, 0), (0, 0, 255)


def halves(height: int, width: int) -> np.ndarray:
    """Left half red, right half blue."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 2] = RED
    img[:, width // 2:] = BLUE
    return img


def save_with_orientation(path, pixels: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())


def is_red(px) -> bool:
    return px[0] > 200 and px[2] < 60


def is_blue(px) -> bool:
    return px[2] > 200 and px[0] < 60


def test_exif_rotate_90_gives_displayed_orientation(tmp_path):
    path = tmp_path / "portrait.jpg"
    save_with_orientation(path, halves(40, 64), 6)  # 6: display rotated 90 degrees clockwise
    img = load_image(path)
    assert img.shape == (64, 40, 3) and img.dtype == np.uint8
    # clockwise: the stored left (red) column becomes the top row
    assert is_red(img[2, 20]) and is_blue(img[-3, 20])
    assert image_size(path) == (64, 40)
    # cv2.imread also honours EXIF by default, so both paths agree on the displayed shape
    assert cv2.imread(str(path)).shape == img.shape


def test_exif_rotate_180_and_no_exif(tmp_path):
    path = tmp_path / "flipped.jpg"
    save_with_orientation(path, halves(40, 64), 3)
    img = load_image(path)
    assert img.shape == (40, 64, 3) and is_blue(img[20, 2]) and is_red(img[20, -3])
    plain = tmp_path / "plain.png"
    Image.fromarray(halves(10, 20)).save(plain)
    assert np.array_equal(load_image(plain), halves(10, 20))
    assert image_size(plain) == (10, 20)


def test_mode_conversions(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (3, 4, 3) and np.array_equal(out[:, :, 1], gray) and np.array_equal(out[:, :, 0], gray)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent -> white
    rgba[1, 0] = (0, 0, 0, 51)  # 20 % black over white -> 204
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255] * 3 and out[1, 0].tolist() == [204] * 3

    gray16 = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    assert load_image(tmp_path / "g16.png")[0, :, 0].tolist() == [0, 100, 255]

    bgr16 = np.zeros((1, 1, 3), np.uint16)
    bgr16[0, 0] = (257 * 30, 257 * 20, 257 * 10)  # cv2 writes BGR: R = 10, G = 20, B = 30
    cv2.imwrite(str(tmp_path / "c16.png"), bgr16)
    assert load_image(tmp_path / "c16.png")[0, 0].tolist() == [10, 20, 30]

    Image.fromarray(halves(4, 4)).convert("P").save(tmp_path / "p.gif")
    assert is_red(load_image(tmp_path / "p.gif")[0, 0])


def test_missing_empty_and_garbage_files(tmp_path):
    with pytest.raises(ImageMissing, match="nope.jpg: image file not found"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg: image file is empty"):
        image_size(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"definitely not a picture" * 10)
    with pytest.raises(DataError, match="junk.jpg: not a readable image"):
        load_image(tmp_path / "junk.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_images_are_errors(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    good = tmp_path / f"good{suffix}"
    Image.fromarray(noise).save(good)
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    assert image_size(cut) == (64, 96)  # the header survives: readers only look at headers
    with pytest.raises(DataError, match=f"cut{suffix}: image data is corrupt or truncated"):
        load_image(cut)
    broken = bytearray(data)
    broken[len(data) // 3: len(data) // 3 + 200] = b"\xff" * 200
    (tmp_path / f"broken{suffix}").write_bytes(bytes(broken))
    if suffix == ".png":  # PNG carries checksums; JPEG noise may decode to a wrong but valid picture
        with pytest.raises(DataError, match="broken.png"):
            load_image(tmp_path / "broken.png")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but holds almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
            + chunk(b"IEND", b""))


def test_gigantic_images_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_only(9000, 9000))  # 81 MP > 50 MP default
    for fn in (load_image, image_size):
        with pytest.raises(DataError, match="huge.png: 9000x9000 = 81000000 pixels exceeds the limit"):
            fn(path)
    path.write_bytes(png_header_only(100_000, 100_000))  # beyond Pillow's own bomb limit
    with pytest.raises(DataError, match="huge.png: image too large"):
        load_image(path, max_pixels=10**12)
    small = tmp_path / "small.png"
    Image.fromarray(halves(20, 20)).save(small)
    with pytest.raises(DataError, match="400 pixels exceeds the limit of 399"):
        load_image(small, max_pixels=399)
    assert load_image(small, max_pixels=400).shape == (20, 20, 3)


def test_to_network_input_sizes_and_normalization():
    value = (100, 150, 200)
    img = np.empty((200, 300, 3), np.uint8)
    img[:] = value
    tensor, size = to_network_input(img)
    assert size == (256, 384) and tuple(tensor.shape) == (3, 256, 384) and tensor.dtype.is_floating_point
    for c in range(3):
        expected = (value[c] / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert float(tensor[c].min()) == pytest.approx(expected, abs=1e-5)
        assert float(tensor[c].max()) == pytest.approx(expected, abs=1e-5)
    assert tensor.is_contiguous()
    from pic_core.data.images import normalized

    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    view = normalized(pixels, channels_last=True)[None]  # what a channels-last Cropper feeds its network
    assert view.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(view[0], normalized(pixels))
    big, size = to_network_input(np.zeros((1000, 3000, 3), np.uint8))
    assert size == (256, 768) and tuple(big.shape) == (3, 256, 768)
    _, size = to_network_input(np.zeros((100, 100, 3), np.uint8), short_side=128)
    assert size == (128, 128)
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError, match="RGB uint8"):
            to_network_input(bad)
