"""The record schema of a COCO instances json: the fields of images, categories and
annotations and their types, and the problems of one record (missing keys, wrong types)."""

from __future__ import annotations

import math
from collections.abc import Callable

from instseg.data.validation.problems import Problem, short_repr


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


def record_problems(record, fields: dict[str, Field], optional: dict[str, Field],
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
                                    f"{short_repr(record[key])} is not {expected}", **ids))
    return problems
