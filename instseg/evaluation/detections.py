"""One image's detections in COCO terms, stored compactly until they are scored or written.

A COCO results record is a dict per detection (~1.5 KB of Python objects with its RLE):
500k of them, COCO val at 100 detections per image, is most of an evaluation's memory.
`ImageDetections` keeps an image's detections as arrays plus the RLE strings (~0.2 KB per
detection) and builds the records only when a slice of images is scored or written.

Contract:
    ImageDetections.from_output(image_id, output, categories)
        output: a torchvision detection dict: boxes XYXY float [N, 4] in image pixels, labels
        int64 contiguous (1..K), scores [N], and masks float [N, 1, H, W] or mask_probs
        [N, 1, M, M] + image_size (H, W) (instseg.models.forward.predict_unpasted).
    .records() -> COCO results records: image_id, category_id (the dataset's ids, converted
        by CategoryMap), bbox [x, y, w, h], score and segmentation (compressed RLE, masks
        thresholded at 0.5).
The values are those of torch's float32 tensors, exactly: records are identical whether
built at once or later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from instseg.data.categories import CategoryMap
from instseg.evaluation.paste import paste_masks_to_rles


@dataclass
class ImageDetections:
    image_id: int
    category_ids: np.ndarray  # int64 [N], the dataset's category ids
    boxes: np.ndarray  # float32 [N, 4], x y w h
    scores: np.ndarray  # float32 [N]
    mask_size: list[int] | None = None  # [H, W] of every RLE; None: no masks
    mask_counts: list[str] | None = None  # N compressed RLE strings

    @classmethod
    def from_output(
        cls, image_id: int, output: dict, categories: CategoryMap, mask_threshold: float = 0.5
    ) -> ImageDetections:
        category_ids = categories.to_category_ids(output["labels"].cpu())
        return cls.from_category_ids(image_id, output, category_ids, mask_threshold)

    @classmethod
    def from_category_ids(
        cls, image_id: int, output: dict, category_ids: Sequence[int], mask_threshold: float = 0.5
    ) -> ImageDetections:
        """from_output with the dataset's category ids given (`output` needs no labels)."""
        boxes = output["boxes"].detach().float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        detections = cls(
            image_id=int(image_id),
            category_ids=np.asarray(category_ids, dtype=np.int64),
            # copies: a view would keep the model output's whole storage alive
            boxes=xywh.numpy().reshape(-1, 4).copy(),
            scores=output["scores"].detach().float().cpu().numpy().copy(),
        )
        if len(boxes) and ("mask_probs" in output or "masks" in output):
            rles = _mask_rles(output, boxes, mask_threshold)
            detections.mask_size = list(rles[0]["size"])
            detections.mask_counts = [rle["counts"] for rle in rles]
        return detections

    def __len__(self) -> int:
        return len(self.scores)

    def records(self, categories: set[int] | None = None) -> list[dict]:
        """COCO results records, of `categories` only if given."""
        keep = range(len(self))
        if categories is not None:
            keep = np.flatnonzero(np.isin(self.category_ids, list(categories))).tolist()
        category_ids, scores = self.category_ids.tolist(), self.scores.tolist()
        boxes = self.boxes.tolist()
        records = [{"image_id": self.image_id, "category_id": category_ids[k],
                    "bbox": boxes[k], "score": scores[k]} for k in keep]
        if self.mask_counts is not None:
            for record, k in zip(records, keep, strict=True):
                record["segmentation"] = {"size": list(self.mask_size),
                                          "counts": self.mask_counts[k]}
        return records


def _mask_rles(output: dict, boxes: torch.Tensor, threshold: float) -> list[dict]:
    if "mask_probs" in output:  # unpasted [N, 1, 28, 28]: paste straight into RLE
        return paste_masks_to_rles(output["mask_probs"].detach().float().cpu(), boxes,
                                   output["image_size"], threshold)
    binary = (output["masks"][:, 0] > threshold).cpu().numpy().astype(np.uint8)
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")}
            for r in mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))]


def records_by_image(
    results: Iterable[dict | ImageDetections],
) -> dict[int, list[dict | ImageDetections]]:
    """Results (COCO records, `ImageDetections`, or both) grouped by image id, in order."""
    grouped: dict[int, list] = {}
    for item in results:
        image_id = item.image_id if isinstance(item, ImageDetections) else item["image_id"]
        grouped.setdefault(int(image_id), []).append(item)
    return grouped


def records_of(
    items: Sequence[dict | ImageDetections], iou_type: str, mask_areas: bool,
    categories: set[int] | None = None,
) -> list[dict]:
    """Fresh COCO records (loadRes adds keys to those it gets) of one image's grouped results,
    of `categories` only if given, without fields `iou_type` does not use. mask_areas: a segm
    record loses its box, so that loadRes takes the area (small/medium/large) from the mask,
    as detectron2 scores masks; otherwise loadRes takes it from the box when there is one."""
    records = []
    for item in items:
        if isinstance(item, ImageDetections):
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


def write_results(path: Path, detections: Iterable[ImageDetections],
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
