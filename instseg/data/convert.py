"""`python -m instseg.data.convert {labelme,voc,yolo} ... -o OUT.json`: other annotation
formats to a COCO instances json that `instseg.data.validation.check_annotations` accepts and
`data=coco_format` trains on.

In:
    labelme  a folder of labelme json files: `shapes` [{label, points, group_id, shape_type}],
             `imagePath` (relative to the json), `imageHeight`, `imageWidth`. Shapes sharing a
             non-null group_id are one instance (several polygons); rectangles become 4-point
             polygons; other shape types (circle, line, point, mask, ...) are reported.
             Categories: `--labels FILE` (one name per line) or the sorted labels seen.
             labelme's reserved labels are never classes, with or without `--labels`
             (whose reserved lines, e.g. labels.txt's first two, `__ignore__` and
             `_background_`, are dropped): a `__ignore__` shape (or group) is an ignore
             region, see below; `_background_` (and the other NOT_CLASSES) shapes are
             reported and skipped.
    voc      `--root` with SegmentationObject/*.png (instance index per pixel), SegmentationClass
             /*.png (class index per pixel), both palette PNGs read as indices (0 background,
             255 void: never part of a mask), and JPEGImages/*.jpg. An instance's class is the
             majority class of its pixels. Only images with a SegmentationObject PNG are
             converted. Categories: the 20 PASCAL VOC classes (index 1..20) or `--labels`.
    yolo     `--labels DIR` of YOLO-seg txt files (`class x1 y1 x2 y2 ...`, normalised to [0, 1]
             of the image's width and height), `--images DIR` (same relative path and stem),
             `--names FILE` (line i = class i; or an Ultralytics data yaml with `names`) and
             optionally `--category-ids FILE` (line i = the category id of class i, e.g. COCO's
             1..90) to keep a dataset's own ids.

Out (the same for all): images with ids 1..N in sorted `file_name` order (the path relative to
the image folder), `width`/`height` from the image file's header (labelme: its json's size);
annotations with ids 1..M, `iscrowd` 0 (labelme's ignore regions: 1, see below), `area` and
`bbox` of the instance's mask (pycocotools' area / toBbox of its RLE); `categories` in the
names' order (else sorted) with ids 1..K (yolo with `--category-ids`: those). Segmentation:
polygons [[x1, y1, ...], ...] rounded to 0.01 px (labelme, yolo: the mask is that of the
rounded polygons) or a compressed RLE with `counts` a str (voc: pixel masks stay exact).

Ignore regions (labelme's `__ignore__`; labelme2voc.py gives it id -1, below `_background_`'s
0): `iscrowd` 1, the segmentation a compressed RLE of the rounded polygons' mask (COCO's form
for crowd regions), `area` and `bbox` of that mask, on their image, one such annotation for
every category. Why every category: COCO has no category-less annotation, and pycocotools'
COCOeval matches a crowd region only against detections of its own category, so one copy per
category is what lets the region absorb a detection of any class, as "ignore" means. Training
never uses crowd records as targets (instseg.data.coco); they stay in the evaluation ground
truth, where ignored ground truth adds no positives: the copies change AP only by no longer
counting detections inside the region as false positives. (labelme's own labelme2coco.py drops
`__ignore__` shapes, so such detections count as false positives.) The summary counts the
regions; with no category at all they are reported and dropped.

Bad records (unreadable file, unknown label, polygon of < 3 points, class index out of range,
instance without pixels, ...) are each reported with their file and skipped; `Converted.
warnings` lists them and the command prints them with a count by kind. Unusable arguments
(a missing folder or names file) raise InstsegError: one line, exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from instseg.data.images import UnreadableImage, read_header
from instseg.data.validation import to_rle
from instseg.utils.errors import InstsegError, exit_on_user_error

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
# Lines of a names file that are not classes (labelme's and VOC label lists start with them).
NOT_CLASSES = {"__ignore__", "_background_", "__background__", "background"}
IGNORE = "__ignore__"  # labelme: a region left out of training and scoring (a crowd region)
VOID = 255  # VOC's boundary / "difficult" index in both PNGs
DECIMALS = 2  # polygon coordinates: 0.01 px, as in COCO's own files


@dataclass(frozen=True)
class Reported:
    """One bad record: the file (and line or shape), what is wrong, what was done."""

    source: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}: {self.detail}"


@dataclass
class Converted:
    """The COCO instances json and every record reported while converting."""

    dataset: dict
    warnings: list[Reported]
    ignore_regions: int = 0  # labelme `__ignore__` regions (each: one iscrowd per category)

    def summary(self) -> str:
        counts = Counter(w.kind for w in self.warnings)
        found = ", ".join(f"{n} x {kind}" for kind, n in counts.most_common()) or "none"
        d = self.dataset
        instances = sum(not a["iscrowd"] for a in d["annotations"])
        crowd = len(d["annotations"]) - instances
        ignored = (f", {self.ignore_regions} ignore regions ({crowd} iscrowd annotations: one "
                   "per category)") if self.ignore_regions else ""
        return (f"{len(d['images'])} images, {instances} instances{ignored}, "
                f"{len(d['categories'])} categories; {len(self.warnings)} problems reported: "
                f"{found}")


class Skip(Exception):
    """A bad record: the caller reports it with its file and goes on without it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


@dataclass
class _Builder:
    """Images and instances collected in any order; `result` numbers them."""

    source_format: str
    warnings: list[Reported] = field(default_factory=list)
    images: dict[str, tuple[int, int, list[dict]]] = field(default_factory=dict)

    def report(self, source, kind: str, detail: str) -> None:
        self.warnings.append(Reported(str(source), kind, detail))

    def add_image(self, source, file_name: str, width: int, height: int) -> list[dict] | None:
        """The image's (empty) instance list; None when another record claimed the file."""
        if file_name in self.images:
            self.report(source, "duplicate image", f"{file_name} was converted from an "
                        "earlier file: skipped")
            return None
        self.images[file_name] = (width, height, [])
        return self.images[file_name][2]

    def result(self, categories: Sequence[tuple[int, str]]) -> Converted:
        """The json: images and annotations numbered in sorted file name order."""
        ids = {name: category_id for category_id, name in categories}
        images, annotations, regions = [], [], 0
        for image_id, file_name in enumerate(sorted(self.images), start=1):
            width, height, instances = self.images[file_name]
            images.append({"id": image_id, "file_name": file_name, "width": width,
                           "height": height})
            regions += self._count_regions(file_name, instances, ids)
            for instance in instances:
                for category_id in _category_ids(instance, ids):
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image_id,
                        "category_id": category_id, "segmentation": instance["segmentation"],
                        "area": instance["area"], "bbox": instance["bbox"],
                        "iscrowd": instance.get("iscrowd", 0)})
        dataset = {
            "info": {"description": f"converted from {self.source_format} by "
                                    "instseg.data.convert"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name} for i, name in categories],
        }
        return Converted(dataset, self.warnings, regions)

    def _count_regions(self, file_name: str, instances: list[dict], ids: dict) -> int:
        """The image's ignore regions that become annotations; without any category they
        cannot (COCO needs a category_id): reported."""
        regions = sum(1 for instance in instances if instance.get("iscrowd"))
        if regions and not ids:
            self.report(file_name, "ignore region dropped", f"{regions} ignore regions: no "
                        "category to give them to (COCO needs a category_id): skipped")
            return 0
        return regions


def _category_ids(instance: dict, ids: dict[str, int]) -> list[int]:
    """An instance's category id; an ignore region's: every category's (see the module
    docstring: pycocotools lets a crowd region ignore detections of its category only)."""
    return list(ids.values()) if instance.get("iscrowd") else [ids[instance["category"]]]


# ------------------------------------------------------------------------------ shared parts
def _folder(path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise InstsegError(f"{what} folder not found: {path}")
    return path


def read_names(path, drop: set[str] = frozenset()) -> list[str]:
    """Class names, one per line (blank lines at the end and names in `drop` left out), or
    the `names` list / {index: name} mapping of a yaml file (an Ultralytics data yaml)."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"names file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        names = (_yaml_names(text, path) if path.suffix in (".yaml", ".yml")
                 else [line.strip() for line in text.rstrip().splitlines()])
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InstsegError(f"{path}: cannot read the names ({error})") from error
    names = [name for name in names if name not in drop]
    if not names or not all(names):
        raise InstsegError(f"{path}: expected one class name per line, no blank lines")
    if len(set(names)) < len(names):
        repeated = sorted(n for n, k in Counter(names).items() if k > 1)
        raise InstsegError(f"{path}: class names repeated: {', '.join(repeated)}")
    return names


def _yaml_names(text: str, path: Path) -> list[str]:
    names = yaml.safe_load(text)
    names = names.get("names") if isinstance(names, dict) else names
    if isinstance(names, dict):  # {0: person, 1: bicycle, ...}
        if sorted(names) != list(range(len(names))):
            raise InstsegError(f"{path}: 'names' keys must be the class indices 0..K-1")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise InstsegError(f"{path}: expected a list of names or a 'names' mapping")
    return [str(name).strip() for name in names]


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
    if len(ids) != count:
        raise InstsegError(f"{source}: {len(ids)} category ids for {count} class names")
    if len(set(ids)) < len(ids) or not all(isinstance(i, int) and i >= 1 for i in ids):
        raise InstsegError(f"{source}: category ids must be distinct positive integers")
    return ids


def _names(value, drop: set[str] = frozenset()) -> list[str] | None:
    """A names file's names, or the names given as a list (library use); `drop` left out."""
    if value is None or isinstance(value, list | tuple):
        return None if value is None else [name for name in value if name not in drop]
    return read_names(value, drop)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the stored pixels; Skip when unreadable or EXIF-rotated (labelme
    and YOLO tools label the rotated view, instseg reads the stored pixels)."""
    try:
        header = read_header(path)
    except UnreadableImage as error:
        raise Skip("unreadable image", f"{error}: skipped") from error
    if header.orientation != 1:
        raise Skip("exif orientation", f"EXIF orientation {header.orientation}: its labels "
                   "refer to the rotated view, not the stored pixels: skipped")
    return header.width, header.height


def _points(value, source: str) -> np.ndarray:
    """[n, 2] float64 finite points; Skip otherwise."""
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise Skip("bad points", f"{source}: not a list of [x, y] numbers: skipped") from error
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise Skip("bad points", f"{source}: not a list of finite [x, y] numbers: skipped")
    return points


def _polygon_instance(category: str, polygons: list[np.ndarray], width: int,
                      height: int) -> dict:
    """An instance of rounded polygons; area and bbox of their mask; Skip when it is empty."""
    segmentation = _rounded(polygons)
    return _instance(category, segmentation, to_rle(segmentation, height, width))


def _rounded(polygons: list[np.ndarray]) -> list[list[float]]:
    return [np.round(p, DECIMALS).ravel().tolist() for p in polygons]


def _instance(category: str, segmentation, rle: dict) -> dict:
    area = float(mask_utils.area(rle))
    if area == 0:
        raise Skip("no pixels", f"{category!r} instance covers no pixel of the image: skipped")
    return {"category": category, "segmentation": segmentation, "area": area,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)]}


def _categories(names: list[str] | None, builder: _Builder,
                ids: list[int] | None = None) -> list[tuple[int, str]]:
    if names is None:  # the labels seen, sorted (an ignore region's label is no class)
        names = sorted({i["category"] for _, _, instances in builder.images.values()
                        for i in instances if not i.get("iscrowd")})
    return list(zip(ids or range(1, len(names) + 1), names, strict=True))


# ------------------------------------------------------------------------------------ labelme
SUPPORTED_SHAPES = ("polygon", "rectangle")


def convert_labelme(folder, images=None, labels=None) -> Converted:
    """A folder of labelme json files (see the module docstring); `images`: the image folder
    that file names are relative to (default `folder`); `labels`: a names file or list, its
    reserved names (NOT_CLASSES) left out. `__ignore__` shapes become iscrowd=1 annotations
    of every category; shapes of the other reserved labels are reported and skipped."""
    folder = _folder(folder, "labelme")
    image_dir = _folder(images, "image") if images is not None else folder
    names = _names(labels, NOT_CLASSES)
    builder = _Builder("labelme")
    for path in sorted(folder.glob("*.json")):
        try:
            _labelme_file(path, image_dir.resolve(), names, builder)
        except Skip as skip:
            builder.report(path, skip.kind, skip.detail)
    return builder.result(_categories(names, builder))


def _labelme_file(path: Path, image_dir: Path, names: list[str] | None,
                  builder: _Builder) -> None:
    data = _read_labelme(path)
    image_path = _labelme_image(path, data["imagePath"], image_dir)
    width, height = _labelme_size(data, image_path)
    groups: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for index, shape in enumerate(data["shapes"]):
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
    instances = builder.add_image(path, image_path.relative_to(image_dir).as_posix(), width,
                                  height)
    if instances is None:
        return
    for key, members in groups.items():
        try:
            instances.append(_labelme_instance(key, members, names, width, height))
        except Skip as skip:
            builder.report(path, skip.kind, skip.detail)


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
    width, height = _image_size(image_path)
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
    points = _points(shape.get("points"), where)
    if kind == "rectangle":
        if len(points) != 2:
            raise Skip("bad points", f"{where}: {len(points)} corners, expected 2: skipped")
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif len(points) < 3:
        raise Skip("short polygon", f"{where}: {len(points)} points: skipped")
    return shape["label"], points


def _labelme_instance(key: tuple, members: list[tuple[str, np.ndarray]],
                      names: list[str] | None, width: int, height: int) -> dict:
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
        return _polygon_instance(label, polygons, width, height)
    except Skip as skip:
        raise Skip(skip.kind, f"{what}: {skip.detail}") from None


def _ignore_region(polygons: list[np.ndarray], width: int, height: int) -> dict:
    """A crowd instance: the compressed RLE (counts a str) of the rounded polygons' mask,
    COCO's form for iscrowd=1; Skip when it covers no pixel."""
    rle = to_rle(_rounded(polygons), height, width)
    rle = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}  # json: a str
    return {**_instance(IGNORE, rle, rle), "iscrowd": 1}


# ---------------------------------------------------------------------------------------- voc
def convert_voc(root, labels=None) -> Converted:
    """A VOC folder (see the module docstring); `labels`: the names of class indices 1, 2, ...
    (a names file or list; default the 20 PASCAL VOC classes)."""
    root = _folder(root, "VOC")
    objects_dir = _folder(root / "SegmentationObject", "VOC SegmentationObject")
    names = _names(labels, NOT_CLASSES) or list(VOC_CLASSES)
    builder = _Builder("voc")
    for objects_png in sorted(objects_dir.glob("*.png")):
        try:
            _voc_image(root, objects_png, names, builder)
        except Skip as skip:
            builder.report(objects_png, skip.kind, skip.detail)
    return builder.result(_categories(names, builder))


def _voc_image(root: Path, objects_png: Path, names: list[str], builder: _Builder) -> None:
    image_path = _find_image(root / "JPEGImages", objects_png.stem)
    width, height = _image_size(image_path)
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
        mask = objects == object_id
        try:
            category = _majority_class(classes[mask], names, f"object {object_id}")
            rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
            rle["counts"] = rle["counts"].decode("ascii")  # json: a str
            instances.append(_instance(category, rle, rle))
        except Skip as skip:
            builder.report(objects_png, skip.kind, skip.detail)


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


# --------------------------------------------------------------------------------------- yolo
def convert_yolo(labels, images, names, category_ids=None) -> Converted:
    """YOLO-seg label files and their images (see the module docstring); `names`: a names
    file (or list), line i = class i; `category_ids`: a file (or list) of their ids."""
    label_dir, image_dir = _folder(labels, "YOLO labels"), _folder(images, "image")
    names = _names(names)
    if not names:
        raise InstsegError("yolo needs the class names (line i = class i)")
    if isinstance(category_ids, str | Path):
        category_ids = read_category_ids(category_ids, len(names))
    elif category_ids is not None:
        category_ids = _checked_ids(list(category_ids), len(names), "category_ids")
    builder = _Builder("yolo")
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
    for key, image_path in sorted(found.items()):
        try:
            width, height = _image_size(image_path)
        except Skip as skip:
            builder.report(image_path, skip.kind, skip.detail)
            continue
        builder.report(image_path, "no label file", f"no {key}.txt in {label_dir}: kept as an "
                       "image without instances")
        builder.add_image(image_path, image_path.relative_to(image_dir).as_posix(), width,
                          height)
    return builder.result(_categories(names, builder, category_ids))


def _images_by_stem(image_dir: Path, builder: _Builder) -> dict[str, Path]:
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


def _yolo_file(label_file: Path, image_path: Path, image_dir: Path, names: list[str],
               builder: _Builder) -> None:
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise Skip("unreadable file", f"{error}: skipped with its image") from error
    width, height = _image_size(image_path)
    instances = builder.add_image(label_file, image_path.relative_to(image_dir).as_posix(),
                                  width, height)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            category, polygon = _yolo_line(line, names)
            instances.append(_polygon_instance(category, [polygon * (width, height)], width,
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
    polygon = _points(np.reshape(coordinates, (-1, 2)), "coordinates")
    return names[int(index)], polygon


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m instseg.data.convert",
        description="Convert labelme, VOC or YOLO-seg annotations to a COCO instances json.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="{labelme,voc,yolo}")
    labelme = formats.add_parser("labelme", help="a folder of labelme json files")
    labelme.add_argument("folder", help="the labelme json files")
    labelme.add_argument("--images", help="image folder; file names are relative to it "
                         "(default: the labelme folder)")
    labelme.add_argument("--labels", help="class names, one per line; lines __ignore__ and "
                         "_background_ are not classes (default: the labels seen, sorted)")
    labelme.set_defaults(run=lambda a: convert_labelme(a.folder, a.images, a.labels))
    voc = formats.add_parser("voc", help="SegmentationObject + SegmentationClass PNGs")
    voc.add_argument("--root", required=True, help="folder with SegmentationObject/, "
                     "SegmentationClass/ and JPEGImages/")
    voc.add_argument("--labels", help="names of class indices 1, 2, ..., one per line "
                     "(default: the 20 PASCAL VOC classes)")
    voc.set_defaults(run=lambda a: convert_voc(a.root, a.labels))
    yolo = formats.add_parser("yolo", help="YOLO-seg txt label files")
    yolo.add_argument("--labels", required=True, help="folder of YOLO-seg .txt files")
    yolo.add_argument("--images", required=True, help="image folder (same relative names)")
    yolo.add_argument("--names", required=True, help="class names, line i = class i "
                      "(or an Ultralytics data yaml)")
    yolo.add_argument("--category-ids", help="category id of each class, one per line "
                      "(default 1..K)")
    yolo.set_defaults(run=lambda a: convert_yolo(a.labels, a.images, a.names, a.category_ids))
    for sub in (labelme, voc, yolo):
        sub.add_argument("-o", "--output", required=True, help="the COCO json to write")
    return parser


def write_json(dataset: dict, path) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataset))
    except OSError as error:
        raise InstsegError(f"cannot write {path}: {error}") from error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors: exit status 2
    with exit_on_user_error():  # bad input: its message and exit status 1
        converted = args.run(args)
        write_json(converted.dataset, args.output)
    for warning in converted.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.output}: {converted.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
