"""COCO results records: grouped by image, reduced to the fields a task scores, written.

Results reach the scorer as COCO records (dicts, from a results file) or as
`instseg.structures.Detections` (an image's detections kept compactly, ~0.2 KB of RLE per
detection, until a slice of images is scored or written: 500k record dicts, COCO val at 100
detections per image, would be most of an evaluation's memory).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from instseg.structures.detections import Detections


def records_by_image(
    results: Iterable[dict | Detections],
) -> dict[int, list[dict | Detections]]:
    """Results (COCO records, `Detections`, or both) grouped by image id, in order."""
    grouped: dict[int, list] = {}
    for item in results:
        image_id = item.image_id if isinstance(item, Detections) else item["image_id"]
        grouped.setdefault(int(image_id), []).append(item)
    return grouped


def records_of(
    items: Sequence[dict | Detections], iou_type: str, mask_areas: bool,
    categories: set[int] | None = None,
) -> list[dict]:
    """Fresh COCO records (loadRes adds keys to those it gets) of one image's grouped results,
    of `categories` only if given, without fields `iou_type` does not use. mask_areas: a segm
    record loses its box, so that loadRes takes the area (small/medium/large) from the mask,
    as detectron2 scores masks; otherwise loadRes takes it from the box when there is one."""
    records = []
    for item in items:
        if isinstance(item, Detections):
            candidates = item.records(categories)
        elif categories is None or item["category_id"] in categories:
            candidates = (item,)
        else:
            continue
        for record in candidates:
            unused = ()
            if iou_type == "bbox" and "bbox" in record:  # without a box, the mask gives one
                unused = ("segmentation",)
            elif iou_type == "segm" and mask_areas:
                unused = ("bbox",)
            records.append({k: v for k, v in record.items() if k not in unused})
    return records


def write_results(path: Path, detections: Iterable[Detections],
                  categories: set[int] | None = None) -> int:
    """Write a COCO results json (a list of records), one image at a time, of `categories`
    only if given; returns the count written."""
    count = 0
    with open(path, "w") as file:
        file.write("[")
        for image in detections:
            for record in image.records(categories):
                file.write(("," if count else "") + json.dumps(record))
                count += 1
        file.write("]")
    return count
