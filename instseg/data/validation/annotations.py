"""The checks of a parsed instances json: every record against the schema, ids unique and
known, each annotation cleaned (`cleaning`), and the images without usable annotations."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from instseg.data.validation.cleaning import clean_annotation
from instseg.data.validation.problems import CheckedAnnotations, Problem
from instseg.data.validation.schema import (
    ANNOTATION_FIELDS,
    CATEGORY_FIELDS,
    IMAGE_FIELDS,
    OPTIONAL_ANNOTATION_FIELDS,
    Field,
    record_problems,
)
from instseg.utils.errors import InstsegError


def read_annotation_json(path: str | Path) -> dict:
    """The parsed json, LVIS-format records completed as COCO's (`complete_lvis_records`);
    InstsegError for a missing or unparsable file."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"annotation file not found: {path} (expected a COCO instances json "
                           "with 'images', 'annotations' and 'categories')")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InstsegError(f"{path}: unreadable json: not a COCO instances json "
                           f"({error})") from error
    return complete_lvis_records(data)


def complete_lvis_records(data):
    """A parsed json with LVIS's records completed in place as COCO's, and returned:
      - an image without `file_name` that has a `coco_url` (LVIS v1 has no file names) gets
        the url's last two path parts, e.g. "val2017/000000391895.jpg" from
        "http://images.cocodataset.org/val2017/000000391895.jpg": relative to the split's
        image folder, which for LVIS v1 is therefore the COCO root holding train2017/ and
        val2017/ (LVIS v1 val takes images from both);
      - an annotation without `iscrowd` gets 0 (LVIS has no crowd regions; pycocotools
        reads the key of every annotation).
    Anything else (another json, malformed records) is left as it is, for the checks to
    report."""
    if not isinstance(data, dict):
        return data
    for image in data.get("images", ()) if isinstance(data.get("images"), list) else ():
        if isinstance(image, dict) and "file_name" not in image:
            name = _file_name_of_url(image.get("coco_url"))
            if name:
                image["file_name"] = name
    for ann in data.get("annotations", ()) if isinstance(data.get("annotations"), list) else ():
        if isinstance(ann, dict) and "iscrowd" not in ann:
            ann["iscrowd"] = 0
    return data


def _file_name_of_url(url) -> str | None:
    """The url path's last two parts ("folder/file"), or its only one; None if no path."""
    if not isinstance(url, str):
        return None
    parts = [p for p in PurePosixPath(urlparse(url).path).parts if p != "/"]
    return "/".join(parts[-2:]) or None


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
        found = record_problems(record, fields, {}, f"{plural}[{i}]", src)
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
        found = record_problems(record, ANNOTATION_FIELDS, OPTIONAL_ANNOTATION_FIELDS,
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
