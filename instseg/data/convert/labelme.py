"""labelme to COCO: a folder of labelme json files, `shapes` [{label, points, group_id,
shape_type}] and `imagePath` (relative to the json), `imageHeight`, `imageWidth`.

Shapes sharing a non-null group_id are one instance (several polygons); rectangles become
4-point polygons; other shape types are reported. `__ignore__` shapes become ignore regions
(iscrowd 1, one annotation per category; why: the package docstring), the other reserved
labels (NOT_CLASSES) are reported and skipped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instseg.data.convert.builder import (
    NOT_CLASSES,
    Builder,
    Converted,
    Skip,
    categories,
    existing_folder,
    finite_points,
    given_names,
    image_size,
    instance,
    polygon_instance,
    rounded,
)
from instseg.structures.masks import json_rle, to_rle

IGNORE = "__ignore__"  # labelme: a region left out of training and scoring (a crowd region)
SUPPORTED_SHAPES = ("polygon", "rectangle")

Shapes = list[tuple[str, np.ndarray]]  # (label, [n, 2] polygon) of the shapes of one object


def convert_labelme(folder, images=None, labels=None) -> Converted:
    """A folder of labelme json files (see the package docstring); `images`: the image folder
    that file names are relative to (default `folder`); `labels`: a names file or list, its
    reserved names (NOT_CLASSES) left out. `__ignore__` shapes become iscrowd=1 annotations
    of every category; shapes of the other reserved labels are reported and skipped."""
    folder = existing_folder(folder, "labelme")
    image_dir = existing_folder(images, "image") if images is not None else folder
    names = given_names(labels, NOT_CLASSES)
    builder = Builder("labelme")
    for path in sorted(folder.glob("*.json")):
        try:
            _labelme_file(path, image_dir.resolve(), names, builder)
        except Skip as skip:
            builder.report(path, skip.kind, skip.detail)
    return builder.result(categories(names, builder))


def _labelme_file(path: Path, image_dir: Path, names: list[str] | None,
                  builder: Builder) -> None:
    """One json file's image and instances into `builder`; Skip when the file is unusable."""
    data = _read_labelme(path)
    image_path = _labelme_image(path, data["imagePath"], image_dir)
    width, height = _labelme_size(data, image_path)
    groups = _grouped_shapes(path, data["shapes"], builder)
    instances = builder.add_image(path, image_path.relative_to(image_dir).as_posix(), width,
                                  height)
    if instances is None:
        return
    for key, members in groups.items():
        try:
            instances.append(_labelme_instance(key, members, names, width, height))
        except Skip as skip:
            builder.report(path, skip.kind, skip.detail)


def _grouped_shapes(path: Path, shapes: list, builder: Builder) -> dict[tuple, Shapes]:
    """The usable shapes by object: ("group", group_id) or, ungrouped, ("shape", index); bad
    shapes are reported."""
    groups: dict[tuple, Shapes] = {}
    for index, shape in enumerate(shapes):
        where = f"shape {index}"
        try:
            label, polygon = _labelme_shape(shape, where)
        except Skip as skip:
            builder.report(path, skip.kind, skip.detail)
            continue
        group_id = shape.get("group_id")
        if group_id is not None and not isinstance(group_id, int | str):
            builder.report(path, "bad shape", f"{where}: group_id {group_id!r}: skipped")
            continue
        # The same group id in one file: one object drawn as several polygons.
        key = ("group", group_id) if group_id is not None else ("shape", index)
        groups.setdefault(key, []).append((label, polygon))
    return groups


def _read_labelme(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise Skip("unreadable file", f"not a json file ({error}): skipped") from error
    if (not isinstance(data, dict) or not isinstance(data.get("shapes"), list)
            or not isinstance(data.get("imagePath"), str) or not data["imagePath"]):
        raise Skip("not labelme", "no 'shapes' list or 'imagePath': skipped")
    return data


def _labelme_image(path: Path, image_path: str, image_dir: Path) -> Path:
    """The image file: imagePath is relative to the json (written on Windows: backslashes),
    else the same file name in the image folder; it must lie in the image folder."""
    relative = Path(image_path.replace("\\", "/"))
    for candidate in (path.parent / relative, image_dir / relative.name):
        candidate = candidate.resolve()
        if candidate.is_file() and candidate.is_relative_to(image_dir):
            return candidate
    raise Skip("missing image", f"imagePath {image_path!r}: not found in {image_dir}: "
               "skipped")


def _labelme_size(data: dict, image_path: Path) -> tuple[int, int]:
    """The image file's (width, height); Skip when the json states another size."""
    width, height = image_size(image_path)
    stated = data.get("imageWidth"), data.get("imageHeight")
    if stated == (None, None):  # not written by every labelme version: the file's size
        return width, height
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in stated):
        raise Skip("bad size", f"imageWidth {stated[0]!r}, imageHeight {stated[1]!r}: not "
                   "integers: skipped")
    if stated != (width, height):
        raise Skip("size mismatch", f"the json says {stated[0]}x{stated[1]}, {image_path.name} "
                   f"is {width}x{height}: skipped")
    return width, height


def _labelme_shape(shape, where: str) -> tuple[str, np.ndarray]:
    """(label, [n, 2] polygon) of one shape; Skip for unsupported or bad shapes."""
    if not isinstance(shape, dict) or not isinstance(shape.get("label"), str):
        raise Skip("bad shape", f"{where}: no 'label': skipped")
    kind = shape.get("shape_type") or "polygon"  # old labelme files have no shape_type
    where = f"{where} ({shape['label']!r}, {kind})"
    if kind not in SUPPORTED_SHAPES:
        raise Skip("unsupported shape", f"{where}: only polygon and rectangle: skipped")
    points = finite_points(shape.get("points"), where)
    if kind == "rectangle":
        if len(points) != 2:
            raise Skip("bad points", f"{where}: {len(points)} corners, expected 2: skipped")
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif len(points) < 3:
        raise Skip("short polygon", f"{where}: {len(points)} points: skipped")
    return shape["label"], points


def _labelme_instance(key: tuple, members: Shapes, names: list[str] | None, width: int,
                      height: int) -> dict:
    """One group's (or ungrouped shape's) instance, or ignore region for `__ignore__`; Skip
    for mixed, reserved (background) or unknown labels and for shapes without pixels."""
    labels = sorted({label for label, _ in members})
    what = f"group {key[1]}" if key[0] == "group" else f"shape {key[1]}"
    if len(labels) > 1:
        raise Skip("mixed labels", f"{what} has labels {labels}: skipped")
    label, polygons = labels[0], [p for _, p in members]
    if label in NOT_CLASSES - {IGNORE}:
        raise Skip("background label", f"{what}: {label!r} is a reserved label (background), "
                   "not an object: skipped")
    if label != IGNORE and names is not None and label not in names:
        raise Skip("unknown label", f"{what}: {label!r} is not in the labels file: skipped")
    try:
        if label == IGNORE:
            return _ignore_region(polygons, width, height)
        return polygon_instance(label, polygons, width, height)
    except Skip as skip:
        raise Skip(skip.kind, f"{what}: {skip.detail}") from None


def _ignore_region(polygons: list[np.ndarray], width: int, height: int) -> dict:
    """A crowd instance: the compressed RLE (counts a str) of the rounded polygons' mask,
    COCO's form for iscrowd=1; Skip when it covers no pixel."""
    rle = json_rle(to_rle(rounded(polygons), height, width))
    return {**instance(IGNORE, rle, rle), "iscrowd": 1}
