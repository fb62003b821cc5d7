"""Reading image files as the datasets, the checker and the demo see them.

`read_rgb(path)` returns uint8 RGB [3, H, W] of the *stored* pixels: EXIF orientation tags are
not applied (COCO annotations refer to the stored pixels), grayscale / RGBA / CMYK / palette
images become RGB, 16-bit images are scaled to 8 bits. torchvision's decoders read JPEG, PNG,
WebP, GIF and AVIF/HEIC (the fast path); other formats (BMP, TIFF, ...) fall back to Pillow.
Failures raise `UnreadableImage` (an InstsegError) naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from instseg.utils.errors import InstsegError

EXIF_ORIENTATION = 0x0112


class UnreadableImage(InstsegError):
    """An image file that is missing, corrupt, truncated or in an unknown format."""


def read_rgb(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB of the stored pixels of `path` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableImage(f"{path}: no such image file")
    try:
        pixels = decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as error:
        pixels = _read_with_pillow(path, error)
    if pixels.dtype != torch.uint8:  # 16-bit PNG
        pixels = to_dtype(pixels, torch.uint8, scale=True)
    return pixels


def _read_with_pillow(path: Path, torchvision_error: Exception) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            # Pillow reads lazily: load() is where a truncated file fails.
            array = np.asarray(_to_rgb(image))
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"{path}: cannot read image ({torchvision_error}; "
                              f"Pillow: {error})") from error
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I;16") or image.mode == "I":  # 16/32-bit gray: keep the top byte
        array = np.asarray(image).astype(np.uint32) >> (8 if image.mode.startswith("I;16") else 24)
        image = Image.fromarray(array.astype(np.uint8))
    return image.convert("RGB")


@dataclass(frozen=True)
class ImageHeader:
    """What an image file says about itself without decoding its pixels."""

    width: int
    height: int
    mode: str  # Pillow's: "RGB", "L", "RGBA", "CMYK", "P", "I;16", ...
    orientation: int  # EXIF orientation tag, 1 (or absent) = as stored


def read_header(path: str | Path) -> ImageHeader:
    """Size, colour mode and EXIF orientation of `path` (UnreadableImage if unidentifiable)."""
    try:
        with Image.open(path) as image:
            orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
            return ImageHeader(image.width, image.height, image.mode, orientation)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise UnreadableImage(f"{path}: cannot read image ({error})") from error
