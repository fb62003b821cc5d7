"""COCO bbox and segm evaluation, exactly as pycocotools computes it.

Contract (detectron2's evaluator shape):
    evaluator = CocoEvaluator(coco_gt, categories)
    evaluator.process(image_ids, outputs)   # per batch; outputs are torchvision detection dicts:
                                            # boxes XYXY float [N, 4], labels int64 contiguous,
                                            # scores [N], masks float [N, 1, H, W] in image
                                            # pixels, or mask_probs [N, 1, M, M] + image_size
                                            # (instseg.models.inference.predict_unpasted)
    metrics = evaluator.evaluate()          # {"segm_mAP": ..., "bbox_mAP50": ..., ...}

Masks are thresholded at 0.5 and RLE-encoded as they arrive, so only compact records are
kept. Under torch.distributed the records are gathered, images seen twice (a distributed
sampler pads the last batch) are counted once, rank 0 computes and every rank receives the
same numbers. `coco_stats` is the pure scoring step: ground truth + COCO results list ->
the 12 standard stats, with pycocotools or faster-coco-eval (same numbers, faster).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from instseg.data.categories import CategoryMap
from instseg.evaluation.paste import paste_masks_to_rles

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = (
    "mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l",
    "mAR1", "mAR10", "mAR100", "mAR_s", "mAR_m", "mAR_l",
)
BACKENDS = ("faster_coco_eval", "pycocotools")


def detections_to_records(
    image_id: int, output: dict, categories: CategoryMap, mask_threshold: float = 0.5
) -> list[dict]:
    """One image's detections -> COCO results records (xywh box, category id, RLE mask)."""
    boxes = output["boxes"].detach().float().cpu()
    if len(boxes) == 0:
        return []
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].detach().float().cpu().tolist()
    category_ids = categories.to_category_ids(output["labels"].cpu())
    records = [
        {"image_id": int(image_id), "category_id": c, "bbox": b, "score": s}
        for c, b, s in zip(category_ids, xywh, scores, strict=True)
    ]
    if "mask_probs" in output:  # unpasted [N, 1, 28, 28]: paste straight into RLE
        rles = paste_masks_to_rles(output["mask_probs"].detach().float().cpu(), boxes,
                                   output["image_size"], mask_threshold)
    elif "masks" in output:  # full-resolution [N, 1, H, W]
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = [{"size": r["size"], "counts": r["counts"].decode("ascii")}
                for r in mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))]
    else:
        return records
    for record, rle in zip(records, rles, strict=True):
        record["segmentation"] = rle
    return records


def coco_stats(*args, **kwargs) -> np.ndarray:
    """The 12 COCO stats, as `COCOeval.summarize` prints them, of `run_cocoeval(...)`."""
    return np.asarray(run_cocoeval(*args, **kwargs).stats[:12], dtype=np.float64)


def per_category_ap(evaluator) -> dict[int, float]:
    """AP@[.5:.95] (all areas, 100 detections) per category id of an accumulated COCOeval;
    NaN for a category without ground truth."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, category]
    result = {}
    for index, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, index]
        values = values[values > -1]
        result[int(category_id)] = float(values.mean()) if values.size else float("nan")
    return result


def run_cocoeval(
    coco_gt: COCO,
    results: Sequence[dict],
    iou_type: str,
    backend: str = "faster_coco_eval",
    image_ids: Iterable[int] | None = None,
    verbose: bool = True,
):
    """The accumulated and summarised COCOeval of `results` against `coco_gt`.

    `results` are treated exactly as `COCO.loadRes` treats them (a record's `bbox`, if present,
    sets its area, also for segm). `image_ids` restricts evaluation (default: all gt images).
    `coco_gt` may already be the backend's COCO class (`backend_ground_truth`), to index once.
    """
    gt = backend_ground_truth(coco_gt, backend)
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval as Evaluator
    else:
        from faster_coco_eval import COCOeval_faster as Evaluator
    dt = _load_results(gt, results)
    kwargs = {} if backend == "pycocotools" else {"print_function": print}
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        evaluator = Evaluator(gt, dt, iouType=iou_type, **kwargs)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _mean_precision_curves(evaluator) -> np.ndarray:
    """Precision at the 101 recall points, averaged over categories with ground truth:
    [IoU thresholds, 101] (NaN where no category has ground truth)."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, category]
    valid = np.where(precision > -1, precision, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: no ground truth
        return np.nanmean(valid, axis=2)


def print_category_table(category_ap: dict[str, dict[str, float]]) -> None:
    """AP@[.5:.95] per category and task, as a table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="AP per category")
    table.add_column("category")
    for iou_type in category_ap:
        table.add_column(f"{iou_type} AP", justify="right")
    names = next(iter(category_ap.values()), {})
    for name in names:
        cells = [category_ap[t][name] for t in category_ap]
        table.add_row(name, *("-" if np.isnan(v) else f"{v:.3f}" for v in cells))
    Console(width=100).print(table)


def backend_ground_truth(coco_gt: COCO, backend: str):
    """`coco_gt` as the backend's COCO class (faster-coco-eval indexes its own copy)."""
    if backend not in BACKENDS:
        raise ValueError(f"eval backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pycocotools":
        return coco_gt
    from faster_coco_eval import COCO as FasterCOCO

    if isinstance(coco_gt, FasterCOCO):
        return coco_gt
    gt = FasterCOCO()
    gt.dataset = coco_gt.dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _load_results(gt, results: Sequence[dict]):
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            # loadRes only adds keys to each record: shallow copies keep the caller's intact.
            return gt.loadRes([dict(r) for r in results])
    # loadRes cannot take an empty list; no detections is a valid (zero) result.
    empty = type(gt)()
    empty.dataset = {k: gt.dataset[k] for k in ("images", "categories")} | {"annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


class CocoEvaluator:
    """Accumulates detections over batches and scores them against `coco_gt`."""

    def __init__(
        self,
        coco_gt: COCO,
        categories: CategoryMap,
        backend: str = "faster_coco_eval",
        iou_types: Sequence[str] = IOU_TYPES,
        verbose: bool = True,
    ) -> None:
        self.coco_gt = coco_gt
        self.categories = categories
        self.backend = backend
        self.iou_types = tuple(iou_types)
        self.verbose = verbose
        self._backend_gt = backend_ground_truth(coco_gt, backend)  # indexed once, not per task
        self.reset()

    def reset(self) -> None:
        self.image_ids: list[int] = []
        self.records: list[dict] = []
        # Filled by evaluate() (on every rank): all ranks' records, per-category AP, PR curves.
        self.results: list[dict] = []
        self.category_ap: dict[str, dict[str, float]] = {}
        self.pr_curves: dict[str, np.ndarray] = {}

    def process(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        for image_id, output in zip(image_ids, outputs, strict=True):
            self.image_ids.append(int(image_id))
            self.records.extend(detections_to_records(image_id, output, self.categories))

    def evaluate(self) -> dict[str, float]:
        """Flat metrics `{iou_type}_{stat}` over every image processed on any rank."""
        image_ids, self.results = self._gather()
        computed = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            computed = self.score(image_ids, self.results)
        if dist.is_initialized():
            box = [computed]
            dist.broadcast_object_list(box, src=0)
            computed = box[0]
        metrics, self.category_ap, self.pr_curves = computed
        return metrics

    def score(self, image_ids: Sequence[int], records: Sequence[dict]):
        """(flat metrics, {iou_type: {category name: AP}}, {iou_type: PR curve [IoU, 101]})."""
        metrics: dict[str, float] = {}
        category_ap: dict[str, dict[str, float]] = {}
        pr_curves: dict[str, np.ndarray] = {}
        for iou_type in self.iou_types:
            if self.verbose:
                print(f"COCO {iou_type} ({len(image_ids)} images, {len(records)} detections):")
            # Mask AP takes each detection's area from its mask (as detectron2 does): a bbox
            # in the record would make loadRes use the box area for the size ranges.
            unused = "segmentation" if iou_type == "bbox" else "bbox"
            typed = [{k: v for k, v in r.items() if k != unused} for r in records]
            evaluator = run_cocoeval(
                self._backend_gt, typed, iou_type, self.backend, image_ids, self.verbose
            )
            for name, value in zip(STAT_NAMES, evaluator.stats[:12], strict=True):
                metrics[f"{iou_type}_{name}"] = float(value)
            names = {c["id"]: c["name"] for c in self.coco_gt.dataset["categories"]}
            category_ap[iou_type] = {
                names[c]: ap for c, ap in per_category_ap(evaluator).items()
            }
            pr_curves[iou_type] = _mean_precision_curves(evaluator)
        if self.verbose:
            print_category_table(category_ap)
        return metrics, category_ap, pr_curves

    def _gather(self) -> tuple[list[int], list[dict]]:
        if not dist.is_initialized():
            return self.image_ids, self.records
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.image_ids, self.records))
        seen: set[int] = set()
        image_ids, records = [], []
        for rank_ids, rank_records in parts:
            fresh = set(rank_ids) - seen  # padding repeats an image another rank already has
            seen |= fresh
            image_ids.extend(sorted(fresh))
            records.extend(r for r in rank_records if r["image_id"] in fresh)
        return image_ids, records
