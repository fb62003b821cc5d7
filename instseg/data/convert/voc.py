"""PASCAL VOC to COCO: `root` with SegmentationObject/*.png (instance index per pixel),
SegmentationClass/*.png (class index per pixel) and JPEGImages/*.jpg.

Both PNGs are read as indices (palette or 8-bit gray): 0 is background and VOID (255) the
boundary, never part of a mask. An instance's class is the majority class of its pixels; its
segmentation a compressed RLE (pixel masks stay exact). Only images with a
SegmentationObject PNG are converted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from instseg.data.convert.builder import (
    IMAGE_SUFFIXES,
    NOT_CLASSES,
    Builder,
    Converted,
    Skip,
    categories,
    existing_folder,
    given_names,
    image_size,
    instance,
)
from instseg.structures.masks import encode_mask

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID = 255  # VOC's boundary / "difficult" index in both PNGs


def convert_voc(root, labels=None) -> Converted:
    """A VOC folder (see the package docstring); `labels`: the names of class indices 1, 2, ...
    (a names file or list; default the 20 PASCAL VOC classes)."""
    root = existing_folder(root, "VOC")
    objects_dir = existing_folder(root / "SegmentationObject", "VOC SegmentationObject")
    names = given_names(labels, NOT_CLASSES) or list(VOC_CLASSES)
    builder = Builder("voc")
    for objects_png in sorted(objects_dir.glob("*.png")):
        try:
            _voc_image(root, objects_png, names, builder)
        except Skip as skip:
            builder.report(objects_png, skip.kind, skip.detail)
    return builder.result(categories(names, builder))


def _voc_image(root: Path, objects_png: Path, names: list[str], builder: Builder) -> None:
    """One SegmentationObject PNG's image and instances into `builder`; Skip when the image
    or its class PNG is unusable."""
    image_path = _find_image(root / "JPEGImages", objects_png.stem)
    width, height = image_size(image_path)
    objects = _index_png(objects_png, width, height)
    class_png = root / "SegmentationClass" / objects_png.name
    if not class_png.is_file():
        raise Skip("missing class png", f"no {class_png}: the image is skipped")
    classes = _index_png(class_png, width, height)
    instances = builder.add_image(objects_png, image_path.name, width, height)
    if instances is None:
        return
    for object_id in np.unique(objects):
        if object_id in (0, VOID):
            continue
        try:
            instances.append(_object_instance(objects == object_id, classes, names,
                                              f"object {object_id}"))
        except Skip as skip:
            builder.report(objects_png, skip.kind, skip.detail)


def _object_instance(mask: np.ndarray, classes: np.ndarray, names: list[str],
                     what: str) -> dict:
    """The instance of one object's mask, as a compressed RLE; Skip without a class."""
    category = _majority_class(classes[mask], names, what)
    rle = encode_mask(mask)
    return instance(category, rle, rle)


def _find_image(folder: Path, stem: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    raise Skip("missing image", f"no image {stem}.jpg (or .png, ...) in {folder}: skipped")


def _index_png(path: Path, width: int, height: int) -> np.ndarray:
    """The palette indices (or 8-bit gray values) of an index PNG; Skip when unusable."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            indices = np.asarray(image) if mode in ("P", "L") else None
    except (OSError, ValueError, UnidentifiedImageError) as error:
        raise Skip("unreadable file", f"{error}: the image is skipped") from error
    if indices is None:
        raise Skip("not an index png", f"{path.name} is mode {mode}, expected a palette or "
                   "8-bit gray PNG of indices: the image is skipped")
    if indices.shape != (height, width):
        raise Skip("size mismatch", f"{path.name} is {indices.shape[1]}x{indices.shape[0]}, "
                   f"the image {width}x{height}: the image is skipped")
    return indices


def _majority_class(classes: np.ndarray, names: list[str], what: str) -> str:
    """The name of the most frequent class index, background and void left out; Skip when
    there is none or it has no name."""
    counts = np.bincount(classes, minlength=256)
    counts[[0, VOID]] = 0  # background or void under an object: a boundary, not a class
    index = int(counts.argmax())
    if counts[index] == 0:
        raise Skip("no class", f"{what}: SegmentationClass is background or void under all "
                   "its pixels: skipped")
    if index > len(names):
        raise Skip("class out of range", f"{what}: class index {index}, {len(names)} names: "
                   "skipped")
    return names[index - 1]
