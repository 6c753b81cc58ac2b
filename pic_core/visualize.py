"""Pictures people look at: boxes drawn on photos, crops cut out, contact sheets."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

PALETTE = [(230, 57, 70), (29, 161, 242), (46, 196, 182), (255, 183, 3), (155, 93, 229), (255, 255, 255)]
"""RGB colours for rank 1, 2, 3, ..."""


def _free_spot(rect: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]],
               limit: int) -> tuple[int, int, int, int]:
    """Move a label rectangle (x1, y1, x2, y2) down until it overlaps no label already placed."""
    x1, y1, x2, y2 = rect
    height = y2 - y1
    while any(x1 < b[2] and b[0] < x2 and y1 < b[3] and b[1] < y2 for b in taken) and y2 + height < limit:
        y1, y2 = y1 + height + 1, y2 + height + 1
    return x1, y1, x2, y2


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], labels: Optional[Sequence[str]] = None,
               colors: Optional[Sequence[tuple[int, int, int]]] = None, thickness: Optional[int] = None) -> np.ndarray:
    """A copy of an RGB image with numbered boxes drawn: the first (best) box thickest and on top,
    each label in its box's colour and moved down where it would cover another label."""
    canvas = np.ascontiguousarray(image.copy())
    h, w = canvas.shape[:2]
    thickness = thickness or max(2, round(min(h, w) / 150))
    scale = max(0.4, min(h, w) / 600)
    palette = colors or PALETTE
    for index in reversed(range(len(boxes))):  # lines first, best last so it stays visible
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[index])
        width = thickness + (1 if index == 0 else 0) - min(index, 2) // 2
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), palette[index % len(palette)],
                      max(1, width), cv2.LINE_AA)
    taken: list[tuple[int, int, int, int]] = []
    for index in range(len(boxes)):  # labels best first, each in a free spot
        x1, y1 = (int(round(v)) for v in boxes[index][:2])
        text = labels[index] if labels else str(index + 1)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thickness // 2))
        tx, ty = min(max(0, x1 + thickness), max(0, w - tw - 4)), max(0, y1 + thickness)
        rect = _free_spot((tx, ty, tx + tw + 4, ty + th + base + 4), taken, h)
        taken.append(rect)
        cv2.rectangle(canvas, rect[:2], rect[2:], palette[index % len(palette)], -1)
        cv2.putText(canvas, text, (rect[0] + 2, rect[1] + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    max(1, thickness // 2), cv2.LINE_AA)
    return canvas


def cut(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The pixels of one crop (box rounded outward, clipped to the image)."""
    h, w = image.shape[:2]
    x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
    x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
    return image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]


def contact_sheet(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None, cell: int = 320,
                  columns: int = 4, legend: Optional[str] = None) -> np.ndarray:
    """Tiles of RGB images (each fitted into a cell x cell square) with an optional title bar per
    tile and an optional one-line `legend` under the sheet."""
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = (len(images) + columns - 1) // columns
    bar = 24 if titles else 0
    sheet = np.full((rows * (cell + bar), columns * cell, 3), 245, np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        h, w = image.shape[:2]
        scale = min((cell - 8) / w, (cell - 8) / h)
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        y0 = r * (cell + bar) + bar + (cell - small.shape[0]) // 2
        x0 = c * cell + (cell - small.shape[1]) // 2
        sheet[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
        if titles:
            cv2.putText(sheet, titles[index][:40], (c * cell + 6, r * (cell + bar) + 17), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (20, 20, 20), 1, cv2.LINE_AA)
    if legend:
        lines = _wrap(legend, max(20, sheet.shape[1] // 8))
        foot = np.full((18 * len(lines) + 10, sheet.shape[1], 3), 255, np.uint8)
        for i, line in enumerate(lines):
            cv2.putText(foot, line, (6, 18 * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (20, 20, 20), 1, cv2.LINE_AA)
        sheet = np.vstack([sheet, foot])
    return sheet


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def save_rgb(path: Union[str, Path], image: np.ndarray, quality: int = 92, exif: Optional[bytes] = None) -> Path:
    """Write an RGB image (JPEG or PNG by extension); raises when it cannot be written.
    `exif`: an EXIF block to keep in the file (written through Pillow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif:
        from PIL import Image

        try:
            Image.fromarray(np.ascontiguousarray(image)).save(path, quality=quality, exif=exif)
        except (OSError, ValueError) as exc:
            raise OSError(f"{path}: could not write this image ({exc})") from None
        return path
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"{path}: OpenCV could not write this image")
    return path
