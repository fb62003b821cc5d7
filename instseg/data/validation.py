"""Checks of a COCO instances json and its image folder: every problem is named by file, image
id and annotation id, together with what training does about it.

Severities (`KINDS` is the one table of cases; the README's bad-data table lists the same):
    error  training refuses to start: the json cannot be trusted as it is
    skip   training goes on without the record (annotation or image), counted and logged
    fixed  training uses the record after the repair or conversion the kind names

`check_annotations` is the cheap part (json records, image files exist), run by every training
and evaluation start; `check_images` decodes every image (the checker command,
`python -m instseg.data.check`, runs both). The result, `CheckedAnnotations`, carries what the
datasets use: the usable non-crowd annotations per image (boxes clipped to the image,
polygons of fewer than 3 points dropped) and the evaluation ground truth (the json without
its skipped annotations, a missing `area` computed from the segmentation).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from instseg.data.images import UnreadableImage, read_header, read_rgb
from instseg.utils.errors import InstsegError

ERROR, SKIP, FIXED = "error", "skip", "fixed"


@dataclass(frozen=True)
class Kind:
    severity: str
    action: str  # what training does


KINDS: dict[str, Kind] = {
    "unreadable json": Kind(ERROR, "stops: the file is not a COCO instances json"),
    "missing key": Kind(ERROR, "stops, naming the record and the key"),
    "wrong type": Kind(ERROR, "stops, naming the record and the field"),
    "duplicate image id": Kind(ERROR, "stops, naming both file names"),
    "duplicate annotation id": Kind(ERROR, "stops"),
    "duplicate category id": Kind(ERROR, "stops"),
    "different categories": Kind(ERROR, "stops: both splits need the same 'categories'"),
    "unknown image id": Kind(SKIP, "annotation skipped"),
    "unknown category id": Kind(SKIP, "annotation skipped"),
    "degenerate box": Kind(SKIP, "annotation skipped (box width or height under 1 px)"),
    "box outside image": Kind(SKIP, "annotation skipped (no part of its box is in the image)"),
    "empty segmentation": Kind(SKIP, "annotation skipped"),
    "short polygons only": Kind(SKIP, "annotation skipped (every polygon has < 3 points)"),
    "mask size mismatch": Kind(SKIP, "annotation skipped (RLE size is not the image's)"),
    "missing image file": Kind(SKIP, "image skipped"),
    "unreadable image": Kind(SKIP, "image skipped when read: logged, train/skipped_images"),
    "size mismatch": Kind(SKIP, "image skipped when read: logged, train/skipped_images"),
    "only crowd regions": Kind(SKIP, "not trained on; kept in the evaluation ground truth"),
    "no annotations": Kind(SKIP, "not trained on; kept in the evaluation ground truth"),
    "box partly outside image": Kind(FIXED, "box clipped to the image"),
    "short polygon part": Kind(FIXED, "polygons of < 3 points dropped, the rest kept"),
    "missing area": Kind(FIXED, "area computed from the segmentation"),
    "converted colour": Kind(FIXED, "read as 8-bit RGB"),
    "exif orientation": Kind(FIXED, "not rotated: annotations refer to the stored pixels"),
    "large image": Kind(FIXED, "downscaled when read for training (data.max_image_side)"),
}


@dataclass(frozen=True)
class Problem:
    kind: str
    source: str  # the json, or the image file
    detail: str
    image_id: int | None = None
    annotation_id: int | None = None

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity

    def __str__(self) -> str:
        return f"{self.source}{self._ids()}: {self.kind}: {self.detail}"

    def brief(self) -> str:
        """Without the json's path and the kind (for a table of one json's problems)."""
        name = "" if self.source.endswith(".json") else f" {Path(self.source).name}"
        return f"{self._ids().strip()}{name}: {self.detail}".lstrip(": ")

    def _ids(self) -> str:
        return "".join(
            f" {name} {value}" for name, value in
            (("image", self.image_id), ("annotation", self.annotation_id)) if value is not None
        )

    def as_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "source": self.source,
                "image_id": self.image_id, "annotation_id": self.annotation_id,
                "detail": self.detail}


@dataclass
class CheckedAnnotations:
    """A checked json: its problems and what the datasets and the evaluator use."""

    source: Path
    problems: list[Problem] = field(default_factory=list)
    images: dict[int, dict] = field(default_factory=dict)
    categories: list[dict] = field(default_factory=list)
    train_annotations: dict[int, list[dict]] = field(default_factory=dict)
    ground_truth: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    def skipped_images(self) -> set[int]:
        return {p.image_id for p in self.problems if p.kind == "missing image file"}

    @cached_property
    def coco(self) -> COCO:
        """pycocotools' index of the evaluation ground truth."""
        coco = COCO()
        coco.dataset = self.ground_truth
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


# ---------------------------------------------------------------------------- record types
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def _all_numbers(values: list) -> bool:
    """Every value an int or float, none NaN or infinite (fast: polygons are long)."""
    if not set(map(type, values)) <= {int, float}:
        return False
    try:
        return math.isfinite(sum(values))  # a NaN or an infinity anywhere makes it NaN / inf
    except OverflowError:
        return False


def _is_polygons(value) -> bool:
    return isinstance(value, list) and all(isinstance(p, list) and _all_numbers(p)
                                           for p in value)


def _is_rle(value) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("counts"), str | list)
            and isinstance(value.get("size"), list) and len(value["size"]) == 2
            and all(_is_int(v) for v in value["size"]))


Field = tuple[Callable[[object], bool], str]
IMAGE_FIELDS: dict[str, Field] = {
    "id": (_is_int, "an integer"),
    "file_name": (lambda v: isinstance(v, str) and bool(v), "a file name"),
    "width": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "height": (lambda v: _is_int(v) and v > 0, "a positive integer"),
}
CATEGORY_FIELDS: dict[str, Field] = {
    "id": (_is_int, "an integer"),
    "name": (lambda v: isinstance(v, str), "a string"),
}
ANNOTATION_FIELDS: dict[str, Field] = {
    "id": (_is_int, "an integer"),
    "image_id": (_is_int, "an integer"),
    "category_id": (_is_int, "an integer"),
    "bbox": (lambda v: isinstance(v, list) and len(v) == 4 and _all_numbers(v),
             "[x, y, width, height] numbers"),
    "segmentation": (lambda v: _is_polygons(v) or _is_rle(v),
                     "a list of polygons [x1, y1, x2, y2, ...] or an RLE {size, counts}"),
}
OPTIONAL_ANNOTATION_FIELDS: dict[str, Field] = {
    "iscrowd": (lambda v: v in (0, 1) and not isinstance(v, float), "0 or 1"),
    "area": (_is_number, "a number"),
}


def _record_problems(record, fields: dict[str, Field], optional: dict[str, Field],
                     what: str, source: str) -> list[Problem]:
    """Missing keys and wrong types of one record; `what` names it (e.g. "images[3]")."""
    if not isinstance(record, dict):
        return [Problem("wrong type", source, f"{what} is not an object")]
    is_image = what.startswith("images")
    ids = {"image_id": record.get("id" if is_image else "image_id"),
           "annotation_id": record.get("id") if what.startswith("annotations") else None}
    ids = {k: v if _is_int(v) else None for k, v in ids.items()}
    problems = []
    for key, (valid, expected) in {**fields, **optional}.items():
        if key not in record:
            if key in fields:
                problems.append(Problem("missing key", source, f"{what} has no {key!r}", **ids))
        elif not valid(record[key]):
            problems.append(Problem("wrong type", source, f"{what}[{key!r}] = "
                                    f"{_short(record[key])} is not {expected}", **ids))
    return problems


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ------------------------------------------------------------------------- json checks
def read_annotation_json(path: str | Path) -> dict:
    """The parsed json; InstsegError for a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"annotation file not found: {path} (expected a COCO instances json "
                           "with 'images', 'annotations' and 'categories')")
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InstsegError(f"{path}: unreadable json: not a COCO instances json "
                           f"({error})") from error


def check_annotations(data, source: str | Path,
                      image_dir: str | Path | None = None) -> CheckedAnnotations:
    """Every record of a parsed instances json (and, with `image_dir`, that its images exist)."""
    checked = CheckedAnnotations(Path(source))
    src = str(source)
    if not isinstance(data, dict):
        checked.problems.append(Problem("wrong type", src, "the json is not an object"))
        return checked
    for key in ("images", "annotations", "categories"):
        if key not in data:
            checked.problems.append(Problem("missing key", src, f"no top-level {key!r}"))
        elif not isinstance(data[key], list):
            checked.problems.append(Problem("wrong type", src, f"{key!r} is not a list"))
    if checked.problems:
        return checked
    checked.images = _valid_images(data["images"], src, checked.problems)
    checked.categories = _valid_categories(data["categories"], src, checked.problems)
    annotations = _valid_annotations(data["annotations"], src, checked.problems)
    ground_truth = _sort_annotations(checked, annotations)
    _image_problems(checked, ground_truth, image_dir)
    checked.ground_truth = {**data, "images": list(checked.images.values()),
                            "categories": checked.categories, "annotations": ground_truth}
    return checked


def _valid_images(records: list, src: str, problems: list[Problem]) -> dict[int, dict]:
    return _unique_records(records, IMAGE_FIELDS, "image", "file_name", src, problems)


def _valid_categories(records: list, src: str, problems: list[Problem]) -> list[dict]:
    return list(_unique_records(records, CATEGORY_FIELDS, "category", "name", src,
                                problems).values())


def _unique_records(records: list, fields: dict[str, Field], what: str, label: str, src: str,
                    problems: list[Problem]) -> dict[int, dict]:
    """The well-formed records by id; malformed ones and repeated ids become problems
    (`label`: the field that tells two records of one id apart in the message)."""
    unique: dict[int, dict] = {}
    plural = "categories" if what == "category" else f"{what}s"
    for i, record in enumerate(records):
        found = _record_problems(record, fields, {}, f"{plural}[{i}]", src)
        problems.extend(found)
        if found:
            continue
        if record["id"] in unique:
            problems.append(Problem(
                f"duplicate {what} id", src, f"{plural}[{i}] ({record[label]!r}) has the id of "
                f"{unique[record['id']][label]!r}",
                image_id=record["id"] if what == "image" else None))
        unique[record["id"]] = record
    return unique


def _valid_annotations(records: list, src: str, problems: list[Problem]) -> list[dict]:
    annotations, seen = [], set()
    for i, record in enumerate(records):
        found = _record_problems(record, ANNOTATION_FIELDS, OPTIONAL_ANNOTATION_FIELDS,
                                 f"annotations[{i}]", src)
        problems.extend(found)
        if found:
            continue
        if record["id"] in seen:
            problems.append(Problem("duplicate annotation id", src, f"annotations[{i}] has an "
                                    "id used before", record["image_id"], record["id"]))
        seen.add(record["id"])
        annotations.append(record)
    return annotations


def _sort_annotations(checked: CheckedAnnotations, annotations: list[dict]) -> list[dict]:
    """Fill checked.train_annotations; return the evaluation ground truth's annotations."""
    src = str(checked.source)
    category_ids = {c["id"] for c in checked.categories}
    ground_truth = []
    for ann in annotations:
        image = checked.images.get(ann["image_id"])
        where = dict(image_id=ann["image_id"], annotation_id=ann["id"])
        if image is None:
            checked.problems.append(Problem("unknown image id", src, "no image has this id",
                                            **where))
            continue
        if ann["category_id"] not in category_ids:
            checked.problems.append(Problem("unknown category id", src, f"category_id "
                                            f"{ann['category_id']} is not in 'categories'",
                                            **where))
            continue
        cleaned, found = clean_annotation(ann, image)
        checked.problems.extend(Problem(kind, src, detail, **where) for kind, detail in found)
        if cleaned is None:
            continue
        gt = {**ann, "segmentation": cleaned["segmentation"], "area": cleaned["area"]}
        ground_truth.append(gt if gt != ann else ann)
        if not ann.get("iscrowd", 0):
            checked.train_annotations.setdefault(ann["image_id"], []).append(cleaned)
    return ground_truth


def clean_annotation(ann: dict, image: dict) -> tuple[dict | None, list[tuple[str, str]]]:
    """(the annotation as training uses it, or None when skipped; [(kind, detail)])."""
    width, height = image["width"], image["height"]
    x, y, w, h = ann["bbox"]
    if w < 1 or h < 1:
        return None, [("degenerate box", f"bbox {_short(ann['bbox'])}")]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None, [("box outside image", f"bbox {_short(ann['bbox'])} in a "
                       f"{width}x{height} image")]
    found = []
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        found.append(("box partly outside image", f"bbox {_short(ann['bbox'])} in a "
                      f"{width}x{height} image"))
    segmentation, problem = _clean_segmentation(ann["segmentation"], height, width)
    if segmentation is None:
        return None, [*found, problem]
    if problem:
        found.append(problem)
    area = ann.get("area")
    if area is None:
        area = float(mask_utils.area(to_rle(segmentation, height, width)))
        found.append(("missing area", f"area computed: {area:g}"))
    if not found and segmentation is ann["segmentation"]:
        return ann, found  # the common case: no copy
    cleaned = {**ann, "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": segmentation,
               "area": area}
    return cleaned, found


def _clean_segmentation(segmentation, height: int, width: int):
    """(segmentation to use or None, (kind, detail) or None)."""
    if isinstance(segmentation, dict):  # RLE
        if list(segmentation["size"]) != [height, width]:
            return None, ("mask size mismatch", f"RLE size {segmentation['size']}, image "
                          f"[{height}, {width}]")
        if not segmentation["counts"] or not mask_utils.area(to_rle(segmentation, height, width)):
            return None, ("empty segmentation", "the RLE mask has no pixel")
        return segmentation, None
    if not segmentation:
        return None, ("empty segmentation", "no polygon")
    polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
    short = [len(p) // 2 for p in segmentation if p not in polygons]
    if not polygons:
        return None, ("short polygons only", f"polygons of {short} points")
    if short:
        return polygons, ("short polygon part", f"dropped polygons of {short} points")
    return segmentation, None


def to_rle(segmentation, height: int, width: int) -> dict:
    """One RLE of a (cleaned) segmentation: polygons are merged, RLE is compressed."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def _image_problems(checked: CheckedAnnotations, ground_truth: list[dict],
                    image_dir: str | Path | None) -> None:
    src = str(checked.source)
    with_crowd = {ann["image_id"] for ann in ground_truth if ann.get("iscrowd", 0)}
    for image_id, image in checked.images.items():
        if image_dir is not None and not (Path(image_dir) / image["file_name"]).is_file():
            checked.problems.append(Problem("missing image file", str(Path(image_dir) /
                                            image["file_name"]), "no such file", image_id))
        elif image_id in checked.train_annotations:
            continue
        elif image_id in with_crowd:
            checked.problems.append(Problem("only crowd regions", src, f"{image['file_name']}"
                                            " has only iscrowd annotations", image_id))
        else:
            checked.problems.append(Problem("no annotations", src, f"{image['file_name']} has "
                                            "no usable annotation", image_id))


# ------------------------------------------------------------------------ image checks
def check_split(annotation_file: str | Path, image_dir: str | Path, full: bool = True,
                max_image_side: int = 4096,
                progress: Callable[[Iterable], Iterable] = iter) -> CheckedAnnotations:
    """All checks of one json and its image folder (`full`: decode every image too)."""
    try:
        data = read_annotation_json(annotation_file)
    except InstsegError as error:
        checked = CheckedAnnotations(Path(annotation_file))
        checked.problems.append(Problem("unreadable json", str(annotation_file), str(error)))
        return checked
    image_dir = Path(image_dir)
    checked = check_annotations(data, annotation_file, image_dir)
    if not image_dir.is_dir():
        checked.problems.append(Problem("missing image file", str(image_dir),
                                        "the image folder does not exist"))
    elif full and not checked.errors:
        checked.problems.extend(check_images(checked, image_dir, max_image_side, progress))
    return checked


def raise_on_errors(checked: CheckedAnnotations, shown: int = 10) -> None:
    """InstsegError listing the first `shown` errors of `checked`, if it has any."""
    errors = checked.errors
    if not errors:
        return
    lines = [f"  {problem}" for problem in errors[:shown]]
    if len(errors) > shown:
        lines.append(f"  ... and {len(errors) - shown} more")
    raise InstsegError(
        f"{checked.source}: {len(errors)} error(s) in the annotations:\n" + "\n".join(lines)
        + f"\nFull report: python -m instseg.data.check annotations={checked.source} "
        "images=<image folder>"
    )


def check_images(checked: CheckedAnnotations, image_dir: str | Path, max_image_side: int,
                 progress: Callable[[Iterable], Iterable] = iter) -> list[Problem]:
    """Header and full decode of every image of `checked` that exists."""
    problems = []
    missing = checked.skipped_images()
    for image_id, image in progress(list(checked.images.items())):
        if image_id not in missing:
            problems.extend(_one_image(Path(image_dir) / image["file_name"], image,
                                       max_image_side))
    return problems


def _one_image(path: Path, image: dict, max_image_side: int) -> list[Problem]:
    image_id, src = image["id"], str(path)
    try:
        header = read_header(path)
        pixels = read_rgb(path)
    except UnreadableImage as error:
        return [Problem("unreadable image", src, str(error).removeprefix(f"{path}: "), image_id)]
    problems = []
    if header.mode != "RGB":
        problems.append(Problem("converted colour", src, f"mode {header.mode}", image_id))
    if header.orientation != 1:
        problems.append(Problem("exif orientation", src, f"EXIF orientation {header.orientation}"
                                " is ignored", image_id))
    height, width = pixels.shape[-2:]
    if (width, height) != (image["width"], image["height"]):
        hint = (" (swapped: was it labelled on an EXIF-rotated view?)"
                if (height, width) == (image["width"], image["height"]) else "")
        problems.append(Problem("size mismatch", src, f"image is {width}x{height}, the json says "
                                f"{image['width']}x{image['height']}{hint}", image_id))
    elif max(width, height) > max_image_side:
        problems.append(Problem("large image", src, f"{width}x{height}, longer side over "
                                f"{max_image_side}", image_id))
    return problems
