"""A COCO results file to score: read, checked record by record, and the tasks it holds.

The COCO results format is a json list of detections, each with `image_id`, `category_id`,
`score` and `bbox` [x, y, w, h] (detection results) and/or `segmentation` (instance
segmentation results: compressed RLE as the format specifies; uncompressed RLE and polygons
are accepted and converted). pycocotools' `loadRes` decides what every record holds from the
first record alone, so a file whose records differ, or a task whose field no record has, ends
in a KeyError deep inside it (a bbox-only file scored for segm: KeyError('id')). Here every
record is checked first, and the tasks are those the records hold:

    records = load_results(path)                  # the json list; InstsegError otherwise
    checked = check_results(records, coco_gt, path)
    checked.tasks           # ("bbox",) or ("bbox", "segm"), in IOU_TYPES order
    checked.not_applicable  # {"segm": why} for bbox-only results
    checked.records         # the records, every segmentation as compressed RLE

Every error is an InstsegError naming the file and, where there is one, the record
("boxes.json: record 3: ...", records counted from 0 as in the list).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from pycocotools.coco import COCO

from instseg.structures.masks import json_rle, to_rle
from instseg.utils.errors import InstsegError

IOU_TYPES = ("bbox", "segm")  # instseg.evaluation.coco's order
FIELDS = "image_id, category_id, score, and bbox and/or segmentation"
# Characters of pycocotools' compressed RLE strings (rleToString: 48 + 6-bit groups).
_RLE_STRING = re.compile(r"[0-o]+")


@dataclass(frozen=True)
class CheckedResults:
    records: list[dict]
    tasks: tuple[str, ...]  # the iou types these records can be scored on
    not_applicable: dict[str, str]  # iou type -> why it cannot be scored

    def summary(self) -> dict:
        """The tasks as metrics.json records them."""
        return {"scored": list(self.tasks), "not_applicable": dict(self.not_applicable)}


def load_results(path: Path) -> list:
    """The json list of a results file (InstsegError: missing, not json, or not a list)."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"predictions file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InstsegError(f"{path}: not a json file ({error})") from error
    if not isinstance(results, list):
        raise InstsegError(f"{path}: expected a COCO results list of detections "
                           f"({FIELDS} each), got a json {type(results).__name__}")
    return results


def check_results(records: Sequence, coco_gt: COCO, name: str | Path) -> CheckedResults:
    """`records` checked against `coco_gt` (image and category ids, mask sizes), and the
    tasks they hold: bbox when every record has a box or a mask (loadRes then boxes the
    mask), segm when every record has a mask. An empty list holds both (no detections)."""
    checked = [_checked_record(record, index, coco_gt, name)
               for index, record in enumerate(records)]
    for field in ("bbox", "segmentation"):
        _check_all_or_none(checked, field, name)
    if checked and "segmentation" not in checked[0]:
        return CheckedResults(checked, ("bbox",), {
            "segm": f"no record of {name} has a segmentation (bbox-only results)"})
    return CheckedResults(checked, IOU_TYPES, {})


def _checked_record(record, index: int, coco_gt: COCO, name) -> dict:
    """The record, its segmentation as compressed RLE; InstsegError naming what is wrong."""
    where = f"{name}: record {index}"
    if not isinstance(record, dict):
        raise InstsegError(f"{where}: expected an object with {FIELDS}, "
                           f"got a json {type(record).__name__}")
    missing = [key for key in ("image_id", "category_id", "score") if key not in record]
    if not ("bbox" in record or "segmentation" in record):
        missing.append("bbox or segmentation")
    if missing:
        raise InstsegError(f"{where}: missing {', '.join(missing)} (a record needs {FIELDS})")
    _check_id(record, "image_id", coco_gt.imgs, where)
    _check_id(record, "category_id", coco_gt.cats, where)
    if not _is_number(record["score"]):
        raise InstsegError(f"{where}: score must be a finite number, got {record['score']!r}")
    if "bbox" in record:
        _check_box(record["bbox"], where)
    if "segmentation" in record:
        image = coco_gt.imgs[record["image_id"]]
        rle = _compressed_rle(record["segmentation"], image["height"], image["width"], where)
        if rle is not record["segmentation"]:  # converted; a compressed RLE is kept as it is
            record = record | {"segmentation": rle}
    return record


def _check_id(record: dict, key: str, known: dict, where: str) -> None:
    value = record[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InstsegError(f"{where}: {key} must be an integer, got {value!r}")
    if value not in known:
        raise InstsegError(f"{where}: {key} {value} is not in the ground truth")


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_box(box, where: str) -> None:
    if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
        raise InstsegError(f"{where}: bbox must be [x, y, width, height] (4 finite numbers), "
                           f"got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise InstsegError(f"{where}: bbox {box} has a negative width or height")


def _compressed_rle(segmentation, height: int, width: int, where: str) -> dict:
    """`segmentation` (compressed or uncompressed RLE, or polygons) as compressed RLE with a
    str `counts`, of the image's size (masks of another size cannot be matched to it); a
    compressed RLE is returned itself (no copy of every record of a large file)."""
    if isinstance(segmentation, dict):
        return _rle_of_dict(segmentation, height, width, where)
    if (isinstance(segmentation, list) and segmentation
            and all(_is_polygon(polygon) for polygon in segmentation)):
        # One RLE per detection, its polygons merged: as loadRes and annToRLE make them.
        return json_rle(to_rle(segmentation, height, width))
    raise InstsegError(f"{where}: segmentation must be an RLE {{size, counts}} or a list of "
                       f"polygons [x1, y1, x2, y2, ...] of 3 points or more")


def _is_polygon(polygon) -> bool:
    return (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
            and all(_is_number(v) for v in polygon))


def _rle_of_dict(rle: dict, height: int, width: int, where: str) -> dict:
    if rle.get("size") != [height, width]:
        raise InstsegError(f"{where}: segmentation size {rle.get('size')!r} is not the "
                           f"image's [height, width] = {[height, width]}")
    counts = rle.get("counts")
    if isinstance(counts, str) and _RLE_STRING.fullmatch(counts):
        return rle
    if (isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
            and sum(counts) == height * width):  # uncompressed: runs covering the image
        return json_rle(to_rle(rle, height, width))
    raise InstsegError(f"{where}: segmentation counts must be a compressed RLE string or a "
                       f"list of run lengths summing to height x width = {height * width}")


def _check_all_or_none(records: list[dict], field: str, name) -> None:
    """loadRes reads the first record's fields as every record's: a field is in all or none."""
    having = [index for index, record in enumerate(records) if field in record]
    if 0 < len(having) < len(records):
        lacking = next(i for i, record in enumerate(records) if field not in record)
        raise InstsegError(f"{name}: record {lacking} has no {field} but record {having[0]} "
                           f"has one: give every record a {field}, or none")
