"""COCO bbox and segm evaluation, exactly as pycocotools computes it.

Contract (detectron2's evaluator shape):
    evaluator = CocoEvaluator(coco_gt, categories)
    evaluator.process(image_ids, outputs)   # per batch; outputs are torchvision detection dicts:
                                            # boxes XYXY float [N, 4], labels int64 contiguous,
                                            # scores [N], masks float [N, 1, H, W] in image
                                            # pixels, or mask_probs [N, 1, M, M] + image_size
                                            # (instseg.models.forward.predict_unpasted)
    metrics = evaluator.evaluate()          # {"segm_mAP": ..., "bbox_mAP50": ..., ...}

Masks are thresholded at 0.5 and RLE-encoded as they arrive, and each image's detections
are kept compactly (`instseg.structures.Detections`, masks as RLE); scoring builds COCO
records a slice of images at a time, so memory stays bounded on large sets. Under
torch.distributed the detections are gathered, images seen twice (a distributed sampler pads
the last batch) are counted once, rank 0 computes and every rank receives the
same numbers, with pycocotools or faster-coco-eval (same numbers, faster;
`instseg.evaluation.cocoeval.run_cocoeval` is the scoring step).

Waiting ranks do not stall DDP: the gather and the wait for rank 0's numbers (and its error
analysis, when asked) run on a gloo process group made for the evaluation (CPU tensors, its
own `timeout`, two hours by default), not on the training group. An NCCL group's watchdog
aborts a rank whose collective waits past its timeout (often minutes), and scoring COCO val
on rank 0 takes minutes; on the gloo group the other ranks wait on the CPU, and the NCCL
group sees no collective until they return.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import numpy as np
import torch.distributed as dist
from pycocotools.coco import COCO

from instseg.data.categories import CategoryMap
from instseg.evaluation.analysis import error_analysis
from instseg.evaluation.cocoeval import backend_ground_truth, run_cocoeval
from instseg.evaluation.lvis import LVIS_STAT_NAMES, is_lvis
from instseg.evaluation.records import write_results
from instseg.structures.detections import Detections

log = logging.getLogger(__name__)
IOU_TYPES = ("bbox", "segm")
STAT_NAMES = (
    "mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l",
    "mAR1", "mAR10", "mAR100", "mAR_s", "mAR_m", "mAR_l",
)
# How long ranks wait for rank 0's scoring (LVIS val on 2 cores takes tens of minutes).
SCORING_TIMEOUT = timedelta(hours=2)


@contextmanager
def evaluation_group(timeout: timedelta = SCORING_TIMEOUT) -> Iterator:
    """A gloo process group of every rank, with `timeout`, for the evaluation's collectives
    (None outside torch.distributed); every rank must enter it, as any collective."""
    if not dist.is_initialized():
        yield None
        return
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        yield group
    finally:
        dist.destroy_process_group(group)


def per_category_ap(evaluator) -> dict[int, float]:
    """AP@[.5:.95] (all areas, the most detections: 100, or LVIS's 300) per category id of an
    accumulated COCOeval; NaN for a category without ground truth."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, category]
    result = {}
    for index, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, index]
        values = values[values > -1]
        result[int(category_id)] = float(values.mean()) if values.size else float("nan")
    return result


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


class CocoEvaluator:
    """Accumulates detections over batches and scores them against `coco_gt`."""

    def __init__(
        self,
        coco_gt: COCO,
        categories: CategoryMap,
        backend: str = "faster_coco_eval",
        iou_types: Sequence[str] = IOU_TYPES,
        verbose: bool = True,
        timeout: timedelta = SCORING_TIMEOUT,
    ) -> None:
        """timeout: how long other ranks wait for rank 0's scoring (module docstring)."""
        self.coco_gt = coco_gt
        self.timeout = timeout
        self.categories = categories
        self.backend = backend
        self.iou_types = tuple(iou_types)
        self.verbose = verbose
        self.lvis = is_lvis(coco_gt)  # LVIS's federated rules and stats (cocoeval.run_cocoeval)
        self._backend_gt = backend_ground_truth(coco_gt, backend)  # indexed once, not per task
        self.reset()

    def reset(self) -> None:
        self.image_ids: list[int] = []
        self.detections: list[Detections] = []
        # Filled by evaluate() (on every rank): all ranks' detections, per-category AP, PR curves.
        self.results: list[Detections] = []
        self.scored_image_ids: list[int] = []
        self.analysis: dict | None = None  # rank 0's, after evaluate(analyze=True)
        self.category_ap: dict[str, dict[str, float]] = {}
        self.pr_curves: dict[str, np.ndarray] = {}

    def process(self, image_ids: Sequence[int], outputs: Sequence[dict]) -> None:
        for image_id, output in zip(image_ids, outputs, strict=True):
            self.image_ids.append(int(image_id))
            category_ids = self.categories.to_category_ids(output["labels"].cpu())
            self.detections.append(Detections.from_output(output, category_ids, image_id))

    def evaluate(self, analyze: bool = False) -> dict[str, float]:
        """Flat metrics `{iou_type}_{stat}` over every image processed on any rank.

        analyze: rank 0 also runs the error analysis (`analysis.error_analysis`, into
        `self.analysis`) while the other ranks still wait on the evaluation's group."""
        with evaluation_group(self.timeout) as group:
            image_ids, self.results = self._gather(group)
            self.scored_image_ids = image_ids
            computed = None
            if group is None or dist.get_rank() == 0:
                computed = self.score(image_ids, self.results)
                if analyze:
                    # Mask areas as the scoring takes them, so that C75/C50 are AP75/AP50.
                    self.analysis = error_analysis(self.coco_gt, self.results, self.iou_types,
                                                   self.backend, image_ids, mask_areas=True)
            if group is not None:
                box = [computed]
                dist.broadcast_object_list(box, src=0, group=group)
                computed = box[0]
        metrics, self.category_ap, self.pr_curves = computed
        return metrics

    def score(self, image_ids: Sequence[int], results: Sequence[dict | Detections]):
        """(flat metrics, {iou_type: {category name: AP}}, {iou_type: PR curve [IoU, 101]})
        of `results` (COCO records and/or Detections) on `image_ids`: the 12 COCO stats per
        task, or on LVIS ground truth (instseg.evaluation.lvis) the 13 LVIS stats."""
        metrics: dict[str, float] = {}
        category_ap: dict[str, dict[str, float]] = {}
        pr_curves: dict[str, np.ndarray] = {}
        for iou_type in self.iou_types:
            if self.verbose:
                count = sum(len(r) if isinstance(r, Detections) else 1 for r in results)
                print(f"{'LVIS' if self.lvis else 'COCO'} {iou_type} ({len(image_ids)} images, "
                      f"{count} detections):")
            # Mask AP takes each detection's area from its mask, as detectron2 does.
            evaluator = run_cocoeval(self._backend_gt, results, iou_type, self.backend,
                                     image_ids, self.verbose, mask_areas=True)
            stat_names = (LVIS_STAT_NAMES if getattr(evaluator, "lvis_style", False)
                          else STAT_NAMES)
            stats = evaluator.stats[:len(stat_names)]  # faster-coco-eval may add more
            for name, value in zip(stat_names, stats, strict=True):
                metrics[f"{iou_type}_{name}"] = float(value)
            names = {c["id"]: c["name"] for c in self.coco_gt.dataset["categories"]}
            category_ap[iou_type] = {
                names[c]: ap for c, ap in per_category_ap(evaluator).items()
            }
            pr_curves[iou_type] = _mean_precision_curves(evaluator)
        if self.verbose:
            print_category_table(category_ap)
        return metrics, category_ap, pr_curves

    def write_results(self, path) -> int:
        """Every rank's detections (after evaluate) as a COCO results json; returns the count.

        Only detections of the ground truth's categories are written (the file must score
        against it): torchvision's COCO weights also have outputs for the ids COCO left
        unused ("N/A"), which no evaluation counts; those are left out, counted and logged."""
        categories = set(self.coco_gt.getCatIds())
        written = write_results(path, self.results, categories)
        left_out = sum(len(d) for d in self.results) - written
        if left_out:
            log.warning("%s: %d detections of labels that are no category of the ground truth "
                        "(e.g. torchvision's 'N/A' outputs) left out; they score nothing",
                        path, left_out)
        return written

    def _gather(self, group) -> tuple[list[int], list[Detections]]:
        if group is None:
            return self.image_ids, self.detections
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.image_ids, self.detections), group=group)
        seen: set[int] = set()
        image_ids, detections = [], []
        for rank_ids, rank_detections in parts:
            fresh = set(rank_ids) - seen  # padding repeats an image another rank already has
            seen |= fresh
            image_ids.extend(sorted(fresh))
            detections.extend(d for d in rank_detections if d.image_id in fresh)
        return image_ids, detections
