"""YOLO-seg to COCO: a folder of label files, one per image (same relative path and stem),
each line `class x1 y1 x2 y2 ...` with the polygon normalised to [0, 1] of the image's width
and height; class i is line i of the names file (or of an Ultralytics data yaml's `names`).

Label files without an image are reported and skipped; images without a label file are
reported and kept, without instances. `category_ids` keeps a dataset's own ids (e.g. COCO's
1..90) instead of 1..K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from instseg.data.convert.builder import (
    IMAGE_SUFFIXES,
    Builder,
    Converted,
    Skip,
    categories,
    existing_folder,
    finite_points,
    given_names,
    image_size,
    polygon_instance,
)
from instseg.utils.errors import InstsegError


def convert_yolo(labels, images, names, category_ids=None) -> Converted:
    """YOLO-seg label files and their images (see the package docstring); `names`: a names
    file (or list), line i = class i; `category_ids`: a file (or list) of their ids."""
    label_dir = existing_folder(labels, "YOLO labels")
    image_dir = existing_folder(images, "image")
    names = given_names(names)
    if not names:
        raise InstsegError("yolo needs the class names (line i = class i)")
    category_ids = _given_category_ids(category_ids, len(names))
    builder = Builder("yolo")
    found = _images_by_stem(image_dir, builder)
    for label_file in sorted(label_dir.rglob("*.txt")):
        key = label_file.relative_to(label_dir).with_suffix("").as_posix()
        image_path = found.pop(key, None)
        if image_path is None:
            builder.report(label_file, "missing image", f"no image {key}.* in {image_dir}: "
                           "skipped")
            continue
        try:
            _yolo_file(label_file, image_path, image_dir, names, builder)
        except Skip as skip:
            builder.report(label_file, skip.kind, skip.detail)
    _add_unlabelled_images(found, image_dir, label_dir, builder)
    return builder.result(categories(names, builder, category_ids))


def _given_category_ids(value, count: int) -> list[int] | None:
    """The ids of a category ids file or list (library use); None when none are given."""
    if isinstance(value, str | Path):
        return read_category_ids(value, count)
    return None if value is None else _checked_ids(list(value), count, "category_ids")


def read_category_ids(path, count: int) -> list[int]:
    """Category ids, one integer per line, one per class name."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"category ids file not found: {path}")
    try:
        ids = [int(line) for line in path.read_text(encoding="utf-8").split()]
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise InstsegError(f"{path}: expected one integer per line ({error})") from error
    return _checked_ids(ids, count, str(path))


def _checked_ids(ids: list[int], count: int, source: str) -> list[int]:
    """`ids` when there are `count` of them, distinct and positive; InstsegError otherwise."""
    if len(ids) != count:
        raise InstsegError(f"{source}: {len(ids)} category ids for {count} class names")
    if len(set(ids)) < len(ids) or not all(isinstance(i, int) and i >= 1 for i in ids):
        raise InstsegError(f"{source}: category ids must be distinct positive integers")
    return ids


def _images_by_stem(image_dir: Path, builder: Builder) -> dict[str, Path]:
    """{relative path without suffix: image file}; a second image of one stem is reported."""
    found: dict[str, Path] = {}
    for path in sorted(image_dir.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        key = path.relative_to(image_dir).with_suffix("").as_posix()
        if key in found:
            builder.report(path, "duplicate image", f"{found[key].name} has the same name: "
                           "skipped")
            continue
        found[key] = path
    return found


def _add_unlabelled_images(unlabelled: dict[str, Path], image_dir: Path, label_dir: Path,
                           builder: Builder) -> None:
    """Images no label file names: reported, and kept as images without instances (an image
    without objects is a valid negative)."""
    for key, image_path in sorted(unlabelled.items()):
        try:
            width, height = image_size(image_path)
        except Skip as skip:
            builder.report(image_path, skip.kind, skip.detail)
            continue
        builder.report(image_path, "no label file", f"no {key}.txt in {label_dir}: kept as an "
                       "image without instances")
        builder.add_image(image_path, image_path.relative_to(image_dir).as_posix(), width,
                          height)


def _yolo_file(label_file: Path, image_path: Path, image_dir: Path, names: list[str],
               builder: Builder) -> None:
    """One label file's image and instances into `builder`; Skip when the file or image is
    unreadable. Bad lines are reported with their line number."""
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise Skip("unreadable file", f"{error}: skipped with its image") from error
    width, height = image_size(image_path)
    instances = builder.add_image(label_file, image_path.relative_to(image_dir).as_posix(),
                                  width, height)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            category, polygon = _yolo_line(line, names)
            instances.append(polygon_instance(category, [polygon * (width, height)], width,
                                              height))
        except Skip as skip:
            builder.report(f"{label_file}:{number}", skip.kind, skip.detail)


def _yolo_line(line: str, names: list[str]) -> tuple[str, np.ndarray]:
    """(class name, [n, 2] normalised polygon) of `class x1 y1 x2 y2 ...`."""
    values = line.split()
    try:
        index, coordinates = float(values[0]), [float(v) for v in values[1:]]
    except ValueError as error:
        raise Skip("bad line", f"not numbers ({error}): skipped") from None
    if not index.is_integer() or not 0 <= index < len(names):
        raise Skip("class out of range", f"class {values[0]}, {len(names)} names: skipped")
    if len(coordinates) % 2:
        raise Skip("bad line", f"{len(coordinates)} coordinates, not x y pairs: skipped")
    if len(coordinates) < 6:
        hint = " (a box line: this needs YOLO-seg polygon labels)" if len(coordinates) == 4 else ""
        raise Skip("short polygon", f"{len(coordinates) // 2} points{hint}: skipped")
    polygon = finite_points(np.reshape(coordinates, (-1, 2)), "coordinates")
    return names[int(index)], polygon

