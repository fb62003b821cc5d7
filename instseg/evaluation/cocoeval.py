"""COCOeval (pycocotools or faster-coco-eval) in bounded memory, with identical numbers.

One COCOeval over COCO val at 100 detections per image holds 500k result dicts, their
loadRes index and a per-image evaluation for every (category, area range, image): gigabytes.
`run_cocoeval` splits the work along the two axes COCO's arithmetic keeps apart:
  - categories: `accumulate` computes precision/recall of each category from that category's
    evaluations alone, so category slices are accumulated one at a time and their
    precision/recall/scores arrays concatenated along the category axis;
  - images: `evaluate` matches each (image, category) on its own, so a category slice's
    images are loaded and matched in consecutive runs whose per-image evaluations are merged
    into one COCOeval's layout before that slice's accumulate.
Each slice holds about `chunk_detections` detections. The 12 stats, precision and recall are
exactly those of one COCOeval over everything (tested against it, both backends).

LVIS ground truth (`lvis=True`, or by default whenever `instseg.evaluation.lvis.is_lvis` finds
it LVIS-format) is scored with LVIS's federated rules, 300 detections per image and the 13
LVIS stats, equal to the official `lvis` package's (faster-coco-eval backend only; what it
takes beyond faster-coco-eval's LVIS mode is in `instseg.evaluation.lvis`).
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from pycocotools.coco import COCO

from instseg.evaluation import lvis as lvis_rules
from instseg.evaluation.records import records_by_image, records_of
from instseg.structures.detections import Detections
from instseg.utils.errors import InstsegError

BACKENDS = ("faster_coco_eval", "pycocotools")
# Detections loaded and matched at a time (~0.1 GB at COCO-like sizes).
CHUNK_DETECTIONS = 25_000
# Where each backend's COCOeval keeps its per-image evaluations, laid out
# [category][area range][image] (pycocotools' evaluate; faster-coco-eval's C++ the same).
_EVALUATIONS = {"COCOeval": "evalImgs", "COCOeval_faster": "_evalImgs_cpp"}


def run_cocoeval(
    coco_gt: COCO,
    results: Sequence[dict | Detections],
    iou_type: str,
    backend: str = "faster_coco_eval",
    image_ids: Iterable[int] | None = None,
    verbose: bool = True,
    mask_areas: bool = False,
    chunk_detections: int = CHUNK_DETECTIONS,
    lvis: bool | None = None,
):
    """The accumulated and summarised COCOeval of `results` against `coco_gt`.

    `results` are COCO results records and/or `Detections`, treated exactly as
    `COCO.loadRes` treats records (mask_areas: see `records_of`). `image_ids` restricts
    evaluation (default: all gt images). `coco_gt` may already be the backend's COCO class
    (`backend_ground_truth`, with the same `lvis`), to index once. The returned evaluator's
    `eval`, `stats` and `params` cover everything; its `cocoDt` holds the last slice only.

    lvis: score with LVIS's rules (None: when `is_lvis(coco_gt)`); then the evaluator is a
    COCOeval_faster with `lvis_style` True, maxDets [300], and `stats` holds the 13 LVIS stats
    named by `instseg.evaluation.lvis.LVIS_STAT_NAMES` (else the 12 COCO stats). LVIS needs
    the faster_coco_eval backend and a `frequency` on every category (InstsegError otherwise).
    """
    lvis = lvis_rules.is_lvis(coco_gt) if lvis is None else lvis
    gt = backend_ground_truth(coco_gt, backend, lvis)
    image_ids = sorted({int(i) for i in (gt.getImgIds() if image_ids is None else image_ids)})
    by_image = checked_by_image(results, gt.getImgIds())
    # LVIS keeps each image's best 300 over all categories, decided before category slices.
    kept = ({i: lvis_rules.top_detections(by_image[i]) for i in image_ids if i in by_image}
            if lvis else {})
    category_ids = sorted(gt.getCatIds())
    accumulated, evaluator = [], None
    with contextlib.redirect_stdout(io.StringIO()):  # the backends' progress, once per slice
        for categories, image_slices in _plan(image_ids, category_ids, by_image,
                                              chunk_detections):
            evaluator = None  # the previous slice's detections are freed before the next's
            evaluator = _evaluate_slice(gt, by_image, categories, image_slices, iou_type,
                                        backend, mask_areas, kept if lvis else None)
            _merge_image_evaluations(evaluator, image_slices, image_ids)
            evaluator.accumulate()
            accumulated.append(evaluator.eval)
    evaluator.eval = _concatenate_categories(accumulated)
    evaluator.params.catIds = evaluator._paramsEval.catIds = category_ids
    if lvis:  # each slice's groups index its own categories; summarize needs all of them
        evaluator.freq_groups = lvis_rules.frequency_groups(gt.dataset["categories"],
                                                            category_ids)
    with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
        evaluator.summarize()
    if lvis:
        evaluator.stats = lvis_rules.lvis_stats(evaluator)
    return evaluator


def checked_by_image(results: Iterable[dict | Detections],
                     known_image_ids: Iterable[int]) -> dict[int, list]:
    """`records_by_image(results)`; ValueError for results of images not in `known_image_ids`."""
    by_image = records_by_image(results)
    unknown = by_image.keys() - {int(i) for i in known_image_ids}
    if unknown:
        raise ValueError(f"results for {len(unknown)} image ids not in the ground truth, "
                         f"e.g. {sorted(unknown)[:5]}")
    return by_image


def backend_ground_truth(coco_gt: COCO, backend: str, lvis: bool | None = None):
    """`coco_gt` as the backend's COCO class (faster-coco-eval indexes its own copy).

    lvis (None: `is_lvis(coco_gt)`): the ground truth as LVIS scores it
    (`instseg.evaluation.lvis.lvis_dataset`), its categories' frequencies checked; only
    with faster_coco_eval (InstsegError otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"eval backend must be one of {BACKENDS}, got {backend!r}")
    lvis = lvis_rules.is_lvis(coco_gt) if lvis is None else lvis
    if lvis and backend != "faster_coco_eval":
        raise InstsegError(f"LVIS evaluation runs on the faster_coco_eval backend only "
                           f"(eval.backend={backend!r} was asked; pycocotools has no "
                           "federated rules)")
    if backend == "pycocotools":
        return coco_gt
    from faster_coco_eval import COCO as FasterCOCO

    if lvis:
        if getattr(coco_gt, lvis_rules.PREPARED, False):
            return coco_gt
        lvis_rules.check_frequencies(coco_gt.dataset["categories"])
        dataset = lvis_rules.lvis_dataset(coco_gt.dataset)
    elif isinstance(coco_gt, FasterCOCO):
        return coco_gt
    else:
        dataset = coco_gt.dataset
    gt = FasterCOCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    setattr(gt, lvis_rules.PREPARED, lvis)
    return gt


def _plan(image_ids: list[int], category_ids: list[int], by_image: dict,
          limit: int) -> list[tuple[list[int], list[list[int]]]]:
    """[(category slice, [image slices])], each slice holding about `limit` detections."""
    per_image = {i: category_counts(by_image.get(i, ())) for i in image_ids}
    totals: Counter = Counter()
    for counts in per_image.values():
        totals.update(counts)
    plan = []
    for categories in runs(category_ids, totals.__getitem__, limit):
        in_slice = {i: sum(per_image[i][c] for c in categories) for i in image_ids}
        plan.append((categories, runs(image_ids, in_slice.__getitem__, limit)))
    return plan


def category_counts(items: Sequence[dict | Detections]) -> Counter:
    """Detections per category id of one image's results."""
    counts: Counter = Counter()
    for item in items:
        if isinstance(item, Detections):
            counts.update(item.category_ids.tolist())
        else:
            counts[item["category_id"]] += 1
    return counts


def runs(items: list, size: Callable, limit: int) -> list[list]:
    """Consecutive runs of `items`, each closed once its sizes reach `limit` (one run, maybe
    empty, when there are no items)."""
    runs, current, total = [], [], 0
    for item in items:
        current.append(item)
        total += size(item)
        if total >= limit:
            runs.append(current)
            current, total = [], 0
    return runs + [current] if current or not runs else runs


def _evaluate_slice(gt, by_image, categories, image_slices, iou_type, backend, mask_areas,
                    lvis_kept: dict | None = None):
    """The last image run's evaluator, holding the per-image evaluations of every run.
    lvis_kept: LVIS rules, with each image's `top_detections` (absent or None: all)."""
    wanted = set(categories)
    evaluations = []
    for images in image_slices:
        records = []
        for image_id in images:
            items = by_image.get(image_id, ())
            keep = lvis_kept.get(image_id) if lvis_kept is not None else None
            if keep is None:
                image_records = records_of(items, iou_type, mask_areas, wanted)
            else:
                image_records = []
                for item, mask in zip(items, keep, strict=True):
                    positions = lvis_rules.kept_positions(item, wanted)
                    item_records = records_of([item], iou_type, mask_areas, wanted)
                    image_records += [r for r, p in zip(item_records, positions, strict=True)
                                      if mask[p]]
            if lvis_kept is not None and image_records:
                known = lvis_rules.known_categories(gt, image_id)
                image_records = [r for r in image_records if r["category_id"] in known]
            records += image_records
        dt = load_results(gt, records)
        if lvis_kept is not None:
            lvis_rules.drop_zero_area(dt)
        evaluator = _evaluator(gt, dt, iou_type, backend, lvis_kept is not None)
        evaluator.params.imgIds, evaluator.params.catIds = images, categories
        evaluator.evaluate()
        name = _EVALUATIONS[type(evaluator).__name__]
        evaluations.append(getattr(evaluator, name))
        setattr(evaluator, name, [])
    evaluator.slice_evaluations = evaluations
    return evaluator


def _evaluator(gt, dt, iou_type: str, backend: str, lvis: bool = False):
    if backend == "pycocotools":
        from pycocotools.cocoeval import COCOeval

        return COCOeval(gt, dt, iouType=iou_type)
    from faster_coco_eval import COCOeval_faster

    # separate_eval keeps the per-image evaluations apart from accumulate, to merge runs.
    evaluator = COCOeval_faster(gt, dt, iouType=iou_type, print_function=print,
                                separate_eval=True, lvis_style=lvis)
    if lvis:
        # the (image, category) cap; the per-image 300 is applied before (top_detections)
        evaluator.params.maxDets = [lvis_rules.LVIS_MAX_DETECTIONS]
    return evaluator


def load_results(gt, records: list[dict]):
    """`gt.loadRes(records)` for either backend's COCO, also for no records."""
    if records:
        with contextlib.redirect_stdout(io.StringIO()):
            return gt.loadRes(records)  # fresh records: loadRes adds keys to each
    # loadRes cannot take an empty list; no detections is a valid (zero) result.
    empty = type(gt)()
    empty.dataset = {k: gt.dataset[k] for k in ("images", "categories")} | {"annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def _merge_image_evaluations(evaluator, image_slices: list[list[int]],
                             image_ids: list[int]) -> None:
    """Give `evaluator` its slice's evaluations of every image run, in one COCOeval's layout
    (runs split the image axis of each [category][area range] block), over `image_ids`."""
    params = evaluator._paramsEval
    blocks = len(params.catIds) * len(params.areaRng)
    sizes = [len(images) for images in image_slices]
    merged = [
        evaluation
        for block in range(blocks)
        for part, size in zip(evaluator.slice_evaluations, sizes, strict=True)
        for evaluation in part[block * size:(block + 1) * size]
    ]
    del evaluator.slice_evaluations
    setattr(evaluator, _EVALUATIONS[type(evaluator).__name__], merged)
    params.imgIds = evaluator.params.imgIds = list(image_ids)


def _concatenate_categories(accumulated: list[dict]) -> dict:
    """One `eval` from category slices' (precision/scores [T, R, K, A, M], recall [T, K, A, M])."""
    merged = dict(accumulated[-1])
    for key, axis in (("precision", 2), ("scores", 2), ("recall", 1)):
        merged[key] = np.concatenate([part[key] for part in accumulated], axis=axis)
    merged["counts"] = list(merged["precision"].shape)
    return merged
