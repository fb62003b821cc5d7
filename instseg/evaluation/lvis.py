"""LVIS evaluation: the official `lvis` package's numbers through faster-coco-eval's LVIS mode.

LVIS is federated: an image's detections of a category count only where the category is
known to be present (it has ground truth there) or absent (`neg_category_ids`); unmatched
detections of a category whose annotation is not exhaustive (`not_exhaustive_category_ids`)
are ignored; each image keeps its 300 best detections; AP is also averaged over the rare,
common and frequent categories (`frequency` r/c/f). faster-coco-eval's LVIS mode
(`COCOeval_faster(..., lvis_style=True)`) applies the per-image rules, but on its own it is
not the official LVISEval (lvis 0.5.3, lvis/eval.py and lvis/results.py); what
`run_cocoeval(..., lvis=True)` adds, so that every stat equals the official one
(tests/evaluation/test_lvis.py, to 1e-12):
  - 300 detections per *image* over all categories (LVISResults.limit_dets_per_image, a
    stable sort by score), where COCO's maxDets caps each (image, category) pair:
    `top_detections` keeps each image's best 300 before any slicing by category;
  - detections and ground truth of area 0 are left out (LVISEval._prepare loads them with
    LVIS.get_ann_ids, which keeps only area > 0 once categories are given; an empty mask or
    a zero-width box is thus no false positive): `drop_zero_area`, `lvis_dataset`;
  - LVIS has no crowd regions: LVISEval treats every annotation as a regular one, even one
    marked iscrowd=1, which faster-coco-eval would ignore (`lvis_dataset` sets iscrowd 0);
  - detections of a category neither present nor negative on their image are left out
    before loading (`known_categories`), as LVISEval._prepare leaves them out: faster-coco-
    eval 1.8.0 drops them too, but only after asking for the masks of all detections, which
    fails (IndexError: unordered_map::at) for segm on an image whose every detection is
    dropped and that has no ground truth of the slice's categories;
  - the frequency groups index the categories of the whole evaluation, not of one category
    slice (`frequency_groups`);
  - the 13 LVIS stats in LVISEval.summarize's order (`lvis_stats`): faster-coco-eval's
    `stats` in LVIS mode has empty AR@1/AR@10 slots and puts APr/APc/APf last.
An image without `neg_category_ids` / `not_exhaustive_category_ids` has empty lists (the
official code requires the keys); every category needs a `frequency`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from instseg.structures.detections import Detections
from instseg.utils.errors import InstsegError

# Detections scored per image (LVIS's official value).
LVIS_MAX_DETECTIONS = 300
FREQUENCIES = ("r", "c", "f")  # rare (< 10 training images), common (10-99), frequent
# instseg's names ({task}_{name}) of LVISEval's results AP, AP50, AP75, APs, APm, APl, APr,
# APc, APf, AR@300, ARs@300, ARm@300, ARl@300, in that order.
LVIS_STAT_NAMES = (
    "mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l", "mAP_r", "mAP_c", "mAP_f",
    "mAR300", "mAR_s", "mAR_m", "mAR_l",
)
# The same stats as faster-coco-eval's stats_as_dict labels them in LVIS mode.
_FASTER_LABELS = (
    "AP_all", "AP_50", "AP_75", "AP_small", "AP_medium", "AP_large", "APr", "APc", "APf",
    "AR_all", "AR_small", "AR_medium", "AR_large",
)
# Set on a faster-coco-eval COCO made by `lvis_dataset`, so that it is not prepared twice.
PREPARED = "instseg_lvis_prepared"


def is_lvis(coco_gt) -> bool:
    """Whether a ground truth (a pycocotools or faster-coco-eval COCO, or its dataset dict) is
    LVIS-format: an image with `neg_category_ids` or a category with `frequency`."""
    dataset = coco_gt if isinstance(coco_gt, dict) else coco_gt.dataset
    return (any("neg_category_ids" in image for image in dataset.get("images", ()))
            or any("frequency" in category for category in dataset.get("categories", ())))


def check_frequencies(categories: Sequence[dict], source: str = "the ground truth") -> None:
    """InstsegError naming the categories (of `source`) without an r/c/f `frequency`."""
    bad = [c for c in categories if c.get("frequency") not in FREQUENCIES]
    if bad:
        shown = ", ".join(f"id {c.get('id')} ({c.get('name')!r}: frequency "
                          f"{c.get('frequency')!r})" for c in bad[:5])
        raise InstsegError(
            f"{source}: LVIS evaluation needs every category's 'frequency' to be one of "
            f"{FREQUENCIES}; {len(bad)} categories have none or another, e.g. {shown}")


def lvis_dataset(dataset: dict) -> dict:
    """The ground truth as LVISEval scores it: annotations of area <= 0 left out, none a crowd
    region (iscrowd 0). `dataset` itself is returned when nothing changes; otherwise a new
    dict sharing the unchanged records."""
    annotations = dataset["annotations"]
    if not any(a.get("iscrowd", 0) or a.get("area", 1) <= 0 for a in annotations):
        return dataset
    kept = [a if not a.get("iscrowd", 0) else {**a, "iscrowd": 0}
            for a in annotations if a.get("area", 1) > 0]
    return {**dataset, "annotations": kept}


def top_detections(items: Sequence[dict | Detections],
                   limit: int = LVIS_MAX_DETECTIONS) -> list[np.ndarray] | None:
    """Which detections of one image's results (COCO records and/or Detections, in order)
    LVIS keeps: per item a bool mask over its detections, or None when the image has at most
    `limit` (all kept). The best `limit` by score, ties in the results' order, as
    LVISResults.limit_dets_per_image's stable sort keeps them."""
    scores = [item.scores.double().numpy() if isinstance(item, Detections)
              else np.array([float(item["score"])]) for item in items]
    sizes = [len(s) for s in scores]
    if sum(sizes) <= limit:
        return None
    order = np.argsort(-np.concatenate(scores), kind="stable")
    keep = np.zeros(sum(sizes), dtype=bool)
    keep[order[:limit]] = True
    return np.split(keep, np.cumsum(sizes)[:-1])


def kept_positions(item: dict | Detections, categories: set[int]) -> np.ndarray:
    """Positions, in `item`'s detections, of the records that `records_of([item], ...,
    categories)` returns, in its order (Detections.records keeps the index order)."""
    if isinstance(item, Detections):
        return np.flatnonzero(np.isin(item.category_ids.numpy(), sorted(categories)))
    return np.zeros(1 if item["category_id"] in categories else 0, dtype=np.int64)


def known_categories(gt, image_id: int) -> set[int]:
    """The categories whose detections LVIS scores on an image of `gt` (a faster-coco-eval
    COCO made by `lvis_dataset`): those with ground truth there, and its negatives."""
    return (set(gt.imgs[image_id].get("neg_category_ids", ()))
            | {a["category_id"] for a in gt.imgToAnns.get(image_id, ())})


def drop_zero_area(dt) -> None:
    """Leave loaded detections (a faster-coco-eval COCO from loadRes) of area <= 0 out, in
    place, re-indexing only when there are any."""
    annotations = dt.dataset["annotations"]
    kept = [a for a in annotations if a["area"] > 0]
    if len(kept) < len(annotations):
        dt.dataset["annotations"] = kept
        dt.createIndex()


def frequency_groups(categories: Sequence[dict], category_ids: Sequence[int]) -> list[list[int]]:
    """[rare, common, frequent] positions in `category_ids` (LVISEval._prepare_freq_group)."""
    frequency = {c["id"]: c["frequency"] for c in categories}
    groups: list[list[int]] = [[] for _ in FREQUENCIES]
    for position, category_id in enumerate(category_ids):
        groups[FREQUENCIES.index(frequency[category_id])].append(position)
    return groups


def lvis_stats(evaluator) -> np.ndarray:
    """The 13 LVIS stats (LVIS_STAT_NAMES' order) of a summarised LVIS-mode COCOeval_faster."""
    stats = evaluator.stats_as_dict
    return np.array([stats[label] for label in _FASTER_LABELS], dtype=np.float64)
