"""Why AP is low: the COCO API's analyze() curves and a TIDE-style error attribution.

Two presentations of the same question, both plain JSON-ready data (floats, lists, dicts;
no numpy types) for `metrics.json`; the figures are `instseg.evaluation.plots.analysis_figure`
and `tide_figure`.

`coco_analysis` -- cocoapi's MATLAB `CocoEval.analyze` (the "Analysis" section of COCO's
detection-eval page): seven precision-recall curves at maxDets 100, each from a more permissive
setting than the one before, per category, per supercategory and overall, per area range:
  C75  PR at IoU .75 (its AP is the AP75 stat);
  C50  PR at IoU .50 (its AP is the AP50 stat);
  Loc  PR at IoU .10: localisation errors ignored, duplicate detections still false positives;
  Sim  PR at IoU .10 after supercategory confusions are removed: for category k, every
       ground truth object of the *other* categories of k's supercategory (the json's
       `supercategory`) is added to k's ground truth as an ignore region, so that a k
       detection it absorbs is neither a false nor a true positive (categories without a
       `supercategory` count as one supercategory);
  Oth  the same with the objects of *all* other categories: all class confusions removed;
  BG   all background false positives removed too: 1 wherever Oth's precision is > 0;
  FN   all remaining errors removed: precision 1 everywhere (AP 1).
Ignore regions follow analyze.m exactly (`confusions="ignore"`): the added objects get
`ignore=1` with their own `iscrowd` (0 for almost all), so the overlap is ordinary IoU and
each object absorbs at most one detection, the best-matching unmatched one, as COCOeval
treats ignored non-crowd ground truth; a detection matching an object of its own category
keeps that match. pycocotools and faster-coco-eval both reset a ground truth's `ignore` to its
`iscrowd` when they prepare an evaluation, so the evaluators here set it back on the added
objects after that step. `confusions="crowd"` instead marks the added objects `iscrowd=1`, as
mmdetection's Python port (tools/analysis_tools/coco_error_analysis.py) does: overlap is then
the intersection over the detection's area, and one object absorbs any number of detections.
Averages: per area range, a category counts where it has (non-ignored) ground truth in that
range, as COCOeval's summarize averages; analyze.m instead averages over all categories with
the curves of a category without ground truth set to 0 (and FN to 1), the same on COCO, where
every category has ground truth. An average curve is the mean over those categories at each
recall point; its AP is the mean over (recall, category) of the valid precision entries, the
arithmetic of `COCOeval.summarize`, so C75's and C50's overall APs at area "all" are exactly
the AP75 and AP50 stats. analyze.m's legend rounds the same APs to 3 decimals.
Order: Loc <= Sim <= Oth <= BG <= FN at every recall point by construction (an ignore region
only takes a detection that matched no object of its class). C75 <= C50 <= Loc holds in
practice but greedy matching does not promise it, least in an area range: a detection
outside the range, ignored when unmatched at .5, can match an object at .1 that a better
detection inside the range matched at .5 (analyze.m's "guaranteed to be higher" is loose).

`tide_errors` -- TIDE (Bolya et al., ECCV 2020, "TIDE: A General Toolbox for Identifying Object
Detection Errors"), reproducing the reference implementation, `tidecv` 1.0.1, exactly
(tests compare the two): at foreground IoU .5 and background IoU .1, detections are matched
per image (highest score first, each to the unmatched ground truth of its class with the
highest IoU >= .5); a detection inside a crowd region of its class (crowd IoU > .5) that
matched nothing is ignored; each unmatched detection (ignored ones included, as tidecv
does) gets the first error that applies, in this order:
  Bkg   the image has no (non-crowd) ground truth;
  Loc   right class, .1 <= IoU <= .5 with the best same-class object;
  Cls   IoU >= .5 with an object of another class;
  Dupe  IoU >= .5 with a same-class object already matched by a higher-scoring detection;
  Bkg   IoU <= .1 with every object;
  Both  anything else (wrong class and poor localisation).
  Miss  an unmatched object that no Cls or Loc error points at.
Each dAP is the AP after fixing only that error type minus the AP, floored at 0 (tidecv's
convention for the small negative values that score ties give): Cls fixed relabels the
detection to the object's class and makes it a true positive, Loc fixed makes it a true
positive; both only for the highest-scoring error pointing at an object that nothing
matched (the others, and those pointing at a matched object, are removed); Dupe, Bkg and
Both fixed are removed; Miss fixed removes the object from the ground truth count. The
special dAPs (not floored): FP, every true positive ranked above every false positive;
FN, the ground truth count reduced to the true positives.
tidecv's AP arithmetic is COCO's (greedy matching, monotone precision, 101 recall points)
with four differences that this module reproduces: maxDets 100 counts an image's detections
over all classes, not per class; a class with detections but no ground truth counts in the
mean with AP 0; a crowd region absorbs a detection at crowd IoU > .5, not >= .5; of two
equally good objects a detection takes the first. Without crowd regions and detections of
absent classes (and under 100 detections per image) the AP is COCOeval's AP50.
tidecv reports AP and dAP x 100; here they are in [0, 1], like the COCO stats.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from instseg.evaluation.cocoeval import (
    backend_ground_truth,
    category_counts,
    checked_by_image,
    load_results,
    runs,
)
from instseg.evaluation.records import records_of
from instseg.structures.detections import Detections

CURVES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
AREAS = ("all", "small", "medium", "large")  # COCOeval's default area ranges, in its order
TIDE_MAIN = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")  # tidecv's order
TIDE_SPECIAL = ("FP", "FN")
RECALL = np.linspace(0.0, 1.0, 101)  # COCOeval's recall thresholds
# Detections loaded and matched at a time: categories are analysed in slices of about this
# many detections (every analysis curve of a category needs only that category's detections).
CHUNK_DETECTIONS = 25_000
_CONFUSION = "_analysis_confusion"  # marks the ground truth copies added as ignore regions
_CONFUSIONS = ("ignore", "crowd")


# ------------------------------------------------------------------------------------------
# COCO analyze()


def coco_analysis(
    coco_gt: COCO,
    results: Sequence[dict | Detections],
    iou_type: str,
    backend: str = "faster_coco_eval",
    image_ids: Iterable[int] | None = None,
    mask_areas: bool = False,
    areas: Sequence[str] = AREAS,
    confusions: str = "ignore",
    chunk_detections: int = CHUNK_DETECTIONS,
) -> dict:
    """analyze.m's seven PR curves of `results` against `coco_gt` for one `iou_type`.

    `results`: COCO results records and/or `Detections`, read as `run_cocoeval` reads them
    (mask_areas: see `records_of`); `image_ids` restricts the evaluation (default: all gt
    images); `areas`: the area ranges reported (all four are computed anyway);
    `confusions`: "ignore" (analyze.m) or "crowd" (mmdetection's port), module docstring.
    Returns
        {"iou_type": str, "curves": CURVES, "recall": [101 floats], "areas": [...],
         "overall": {area: entry},
         "per_supercategory": {supercategory: {area: entry}},
         "per_category": {category name: {area: entry}}}
    where entry = {"ap": {curve: float}, "precision": [7][101] floats, rows in CURVES order}
    or None where no category of the group has ground truth in that area range.
    """
    if confusions not in _CONFUSIONS:
        raise ValueError(f"confusions must be one of {_CONFUSIONS}, got {confusions!r}")
    unknown_areas = set(areas) - set(AREAS)
    if unknown_areas:
        raise ValueError(f"areas must be among {AREAS}, got {sorted(unknown_areas)}")
    gt = backend_ground_truth(coco_gt, backend)
    image_ids = sorted({int(i) for i in (gt.getImgIds() if image_ids is None else image_ids)})
    by_image = checked_by_image(results, gt.getImgIds())
    categories = gt.loadCats(sorted(gt.getCatIds()))
    category_ids = [c["id"] for c in categories]
    present = {i: set(category_counts(by_image.get(i, ()))) for i in image_ids}
    confusion_gts = [
        _with_confusions(gt, present, categories, same_supercategory, confusions, backend)
        for same_supercategory in (True, False)  # Sim, Oth
    ]
    # [curve, recall, category, area]; -1 where the category has no ground truth (COCOeval's).
    precision = np.full((len(CURVES), len(RECALL), len(category_ids), len(AREAS)), -1.0)
    totals = Counter()
    for items in by_image.values():
        totals.update(category_counts(items))
    with contextlib.redirect_stdout(io.StringIO()):  # the backends' progress
        positions = list(range(len(category_ids)))
        for indices in runs(positions, lambda k: totals[category_ids[k]], chunk_detections):
            wanted = {category_ids[k] for k in indices}
            records = [r for i in image_ids
                       for r in records_of(by_image.get(i, ()), iou_type, mask_areas, wanted)]
            detections = load_results(gt, records)
            chunk = [category_ids[k] for k in indices]
            base = _evaluate(gt, detections, iou_type, backend, image_ids, chunk, (0.75, 0.5, 0.1))
            precision[0:3, :, indices, :] = base[:, :, :, :, 0]
            for row, confused in zip((3, 4), confusion_gts, strict=True):
                evaluated = _evaluate(confused, detections, iou_type, backend, image_ids, chunk,
                                      (0.1,))
                precision[row][:, indices, :] = evaluated[0, :, :, :, 0]  # a view
    valid = precision[0, 0] > -1  # [category, area]: the category has ground truth there
    precision[5] = np.where(valid, (precision[4] > 0).astype(float), -1.0)  # BG (analyze.m)
    precision[6] = np.where(valid, 1.0, -1.0)  # FN
    area_index = [AREAS.index(a) for a in areas]
    groups: dict[str, list[int]] = {}
    for k, category in enumerate(categories):
        groups.setdefault(str(category.get("supercategory", "")), []).append(k)
    return {
        "iou_type": iou_type,
        "curves": list(CURVES),
        "recall": RECALL.tolist(),
        "areas": list(areas),
        "overall": {AREAS[a]: _entry(precision[:, :, :, a]) for a in area_index},
        "per_supercategory": {
            name: {AREAS[a]: _entry(precision[:, :, members, a]) for a in area_index}
            for name, members in groups.items()
        },
        "per_category": {
            category["name"]: {AREAS[a]: _entry(precision[:, :, [k], a]) for a in area_index}
            for k, category in enumerate(categories)
        },
    }


def _entry(precision: np.ndarray) -> dict | None:
    """{"ap", "precision"} of [curve, recall, category] precision (-1: no ground truth), over
    the categories with ground truth; None without any."""
    valid = precision[0, 0] > -1
    if not valid.any():
        return None
    kept = precision[:, :, valid]
    # summarize's arithmetic: the mean of the valid (recall, category) entries.
    aps = [float(np.mean(kept[c][kept[c] > -1])) for c in range(len(CURVES))]
    return {
        "ap": dict(zip(CURVES, aps, strict=True)),
        "precision": kept.mean(axis=2).tolist(),
    }


def _evaluate(gt, detections, iou_type: str, backend: str, image_ids: list[int],
              category_ids: list[int], iou_thresholds: tuple[float, ...]) -> np.ndarray:
    """Accumulated precision [T, 101, K, 4 areas, 1] at maxDets 100."""
    evaluator = _analysis_evaluator(backend)(gt, detections, iou_type)
    params = evaluator.params
    params.imgIds, params.catIds = list(image_ids), list(category_ids)
    params.iouThrs = np.array(iou_thresholds)
    params.maxDets = [100]
    evaluator.evaluate()
    evaluator.accumulate()
    return np.asarray(evaluator.eval["precision"])


_EVALUATOR_CLASSES: dict[str, type] = {}


def _analysis_evaluator(backend: str) -> type:
    """The backend's COCOeval, keeping the ignore flag of added confusion regions."""
    if backend not in _EVALUATOR_CLASSES:
        if backend == "pycocotools":
            from pycocotools.cocoeval import COCOeval as base
            options = {}
        else:
            from faster_coco_eval import COCOeval_faster as base
            options = {"print_function": print, "separate_eval": True}

        class AnalysisEval(base):
            def __init__(self, gt, dt, iou_type):
                super().__init__(gt, dt, iouType=iou_type, **options)

            def _prepare(self):
                super()._prepare()
                # Both backends have just set every ground truth's ignore to its iscrowd; the
                # evaluation reads the flag from these same dicts afterwards.
                params = self.params
                for ann in self.cocoGt.loadAnns(
                        self.cocoGt.getAnnIds(imgIds=params.imgIds, catIds=params.catIds)):
                    if ann.get(_CONFUSION):
                        ann["ignore"] = 1

        _EVALUATOR_CLASSES[backend] = AnalysisEval
    return _EVALUATOR_CLASSES[backend]


def _with_confusions(gt, present: dict[int, set[int]], categories: list[dict],
                     same_supercategory: bool, confusions: str, backend: str):
    """A ground truth (the backend's COCO class) where, in each image and for each category
    k with detections there, the objects of the other categories (of k's supercategory only,
    if `same_supercategory`) are added as k's ignore regions (copies marked _CONFUSION)."""
    supercategory = {c["id"]: c.get("supercategory") for c in categories}
    by_image: dict[int, list[dict]] = {}
    for ann in gt.dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    next_id = max((ann["id"] for ann in gt.dataset["annotations"]), default=0) + 1
    added = []
    for image_id, detected in present.items():
        for category_id in sorted(detected):
            for ann in by_image.get(image_id, ()):
                other = ann["category_id"]
                if other == category_id or (
                        same_supercategory and supercategory.get(other)
                        != supercategory.get(category_id)):
                    continue
                copy = dict(ann, id=next_id, category_id=category_id)  # shallow: shares geometry
                copy[_CONFUSION] = 1
                if confusions == "crowd":
                    copy["iscrowd"] = 1
                added.append(copy)
                next_id += 1
    dataset = dict(gt.dataset, annotations=list(gt.dataset["annotations"]) + added)
    return _index(dataset, backend)


def _index(dataset: dict, backend: str):
    if backend == "pycocotools":
        coco = COCO()
    else:
        from faster_coco_eval import COCO as FasterCOCO
        coco = FasterCOCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# ------------------------------------------------------------------------------------------
# TIDE


def tide_errors(
    coco_gt: COCO,
    results: Sequence[dict | Detections],
    iou_type: str,
    image_ids: Iterable[int] | None = None,
    pos_threshold: float = 0.5,
    background_threshold: float = 0.1,
    max_dets: int = 100,
) -> dict:
    """TIDE's error attribution of `results` against `coco_gt` for one `iou_type` ("bbox":
    the records' boxes, from the mask where a record has none; "segm": their RLE masks, IoU by
    pycocotools' mask.iou), exactly as tidecv computes it (module docstring), in [0, 1] units.

    `image_ids` restricts the evaluation (default: every gt image, in the json's order).
    Returns
        {"iou_type", "pos_threshold", "background_threshold", "max_dets",
         "ap": float (tidecv's AP at pos_threshold),
         "main": {error: dAP} for TIDE_MAIN, "special": {"FP": dAP, "FN": dAP},
         "counts": {error: int} (errors of each type, those of ignored detections included),
         "per_category": {name: {"ap": float, "main": {error: dAP}, "counts": {error: int}}}}
    per_category covers the classes in the mean (ground truth or counted detections); its
    dAPs are that class's AP after fixing that error type everywhere minus its AP, floored at
    0 like the overall ones (a Cls fix moves a detection into the object's class).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be bbox or segm, got {iou_type!r}")
    run = _TideRun(coco_gt, results, iou_type, image_ids, pos_threshold,
                   background_threshold, max_dets)
    base = run.class_aps(run.points(None))
    ap = _mean(base)
    main, per_class_main = {}, {}
    for name in TIDE_MAIN:
        fixed = run.class_aps(run.points(name))
        main[name] = max(_mean(fixed) - ap, 0.0)
        per_class_main[name] = fixed
    special = {
        "FP": _mean(run.class_aps(run.points(None, perfect_ranking=True))) - ap,
        "FN": _mean(run.class_aps(run.points(None, all_found=True))) - ap,
    }
    names = {c["id"]: c["name"] for c in coco_gt.dataset["categories"]}
    per_category = {}
    for category_id in sorted(base, key=lambda c: (c not in names, c)):
        per_category[names.get(category_id, str(category_id))] = {
            "ap": base[category_id],
            "main": {name: max(per_class_main[name].get(category_id, 0.0)
                               - base[category_id], 0.0) for name in TIDE_MAIN},
            "counts": {name: run.counts[name, category_id] for name in TIDE_MAIN},
        }
    return {
        "iou_type": iou_type,
        "pos_threshold": float(pos_threshold),
        "background_threshold": float(background_threshold),
        "max_dets": int(max_dets),
        "ap": ap,
        "main": main,
        "special": special,
        "counts": {name: sum(n for (t, _), n in run.counts.items() if t == name)
                   for name in TIDE_MAIN},
        "per_category": per_category,
    }


class _TideRun:
    """Matching and errors of every image, in tidecv's data model.

    A data point is (class, score, is_true_positive, push order); an error holds its original
    point (None for an ignored detection and for Miss) and its fixed point (None: removed;
    for Miss, the object leaves the ground truth count).
    """

    def __init__(self, coco_gt, results, iou_type, image_ids, pos, bg, max_dets):
        self.pos, self.bg, self.max_dets = pos, bg, max_dets
        self.gt_count: Counter = Counter()  # non-crowd objects per class
        self.fn_count: Counter = Counter()  # unmatched objects per class
        self.classes: dict[int, None] = {}  # tidecv's classes: ground truth or a counted point
        self.true_positives: list[tuple] = []  # (class, score, push order)
        # [type, class, original point or None, fixed point or None, detection score or None]
        self.errors: list[list] = []
        self.counts: Counter = Counter()  # (type, class) -> errors
        self._pushes = 0
        images = coco_gt.dataset["images"]
        known = {int(image["id"]) for image in images}
        by_image = checked_by_image(results, known)
        if image_ids is not None:
            wanted = {int(i) for i in image_ids}
            images = [image for image in images if int(image["id"]) in wanted]
        anns: dict[int, list[dict]] = {}
        for ann in coco_gt.dataset["annotations"]:
            anns.setdefault(int(ann["image_id"]), []).append(ann)
        for image in images:
            image_id = int(image["id"])
            records = records_of(by_image.get(image_id, ()), iou_type, mask_areas=False)
            self._image(image, anns.get(image_id, []), records, iou_type)

    def _image(self, image: dict, anns: list[dict], records: list[dict], iou_type: str) -> None:
        height, width = image["height"], image["width"]
        objects = [a for a in anns if not a.get("iscrowd", 0)]
        crowds = [a for a in anns if a.get("iscrowd", 0)]
        for ann in objects:
            self._class(ann["category_id"])
            self.gt_count[ann["category_id"]] += 1
        # tidecv: a stable sort by descending score, then the first max_dets.
        records = sorted(records, key=lambda r: -r["score"])[: self.max_dets]
        if not records:
            for ann in objects:
                self.fn_count[ann["category_id"]] += 1
                self._error("Miss", ann["category_id"], None)
            return
        geometry = [_det_geometry(r, iou_type, height, width) for r in records]
        scores = np.array([float(r["score"]) for r in records])
        classes = np.array([int(r["category_id"]) for r in records])
        n_obj = len(objects)
        if n_obj:
            iou = np.asarray(mask_utils.iou(
                geometry, [_gt_geometry(a, iou_type, height, width) for a in objects],
                [0] * n_obj), dtype=float).reshape(len(records), n_obj)
            object_classes = np.array([int(a["category_id"]) for a in objects])
            same_class = classes[:, None] == object_classes[None, :]
            class_iou = iou * same_class
        matched = np.full(len(records), -1)
        used = np.zeros(n_obj, dtype=bool)
        if n_obj:
            buffer = class_iou.copy()
            for d in range(len(records)):
                j = int(np.argmax(buffer[d]))
                if buffer[d, j] >= self.pos:
                    matched[d], used[j] = j, True
                    buffer[:, j] = 0
        ignored = np.zeros(len(records), dtype=bool)
        if crowds:
            crowd_iou = np.asarray(mask_utils.iou(
                geometry, [_gt_geometry(a, iou_type, height, width) for a in crowds],
                [1] * len(crowds)), dtype=float).reshape(len(records), len(crowds))
            crowd_classes = np.array([int(a["category_id"]) for a in crowds])
            inside = (crowd_iou > self.pos) & (classes[:, None] == crowd_classes[None, :])
            ignored = (matched < 0) & inside.any(axis=1)
        usable = np.zeros(n_obj, dtype=bool)
        best: dict[int, tuple[float, int]] = {}  # object -> (best score, error index)
        targeted: list[tuple[int, int, int]] = []  # (error index, object, fixed class)
        for d in range(len(records)):
            cls, score = int(classes[d]), float(scores[d])
            if matched[d] >= 0:
                self._class(cls)
                self.true_positives.append((cls, score, self._push()))
                continue
            original = None
            if not ignored[d]:
                self._class(cls)
                original = (cls, score, False, self._push())
            if not n_obj:
                self._error("Bkg", cls, original, score)
                continue
            j = int(np.argmax(class_iou[d]))
            if self.bg <= class_iou[d, j] <= self.pos:
                kind, fixed_class = "Loc", cls
            else:
                other = iou[d] * ~same_class[d]
                j = int(np.argmax(other))
                if other[j] >= self.pos:
                    kind, fixed_class = "Cls", int(object_classes[j])
                else:
                    duplicate = iou[d] * same_class[d] * used
                    if duplicate[int(np.argmax(duplicate))] >= self.pos:
                        self._error("Dupe", cls, original, score)
                    elif iou[d, int(np.argmax(iou[d]))] <= self.bg:
                        self._error("Bkg", cls, original, score)
                    else:
                        self._error("Both", cls, original, score)
                    continue
            index = self._error(kind, cls, original, score)
            if not used[j]:  # tidecv's BestGTMatch: the highest score (first on ties) is fixed
                usable[j] = True
                if best.get(j, (-1.0, -1))[0] < score:
                    best[j] = (score, index)
                targeted.append((index, j, fixed_class))
        for index, j, fixed_class in targeted:
            if best[j][1] == index:
                self.errors[index][3] = (fixed_class, self.errors[index][4], True)
        for j, ann in enumerate(objects):
            if not used[j]:
                self.fn_count[ann["category_id"]] += 1
                if not usable[j]:
                    self._error("Miss", ann["category_id"], None)

    def _class(self, cls: int) -> None:
        self.classes.setdefault(cls, None)

    def _push(self) -> int:
        self._pushes += 1
        return self._pushes - 1

    def _error(self, kind: str, cls: int, original, score: float | None = None) -> int:
        self.errors.append([kind, cls, original, None, score])
        self.counts[kind, cls] += 1
        return len(self.errors) - 1

    def points(self, fix: str | None, perfect_ranking: bool = False,
               all_found: bool = False) -> tuple[list[tuple], Counter]:
        """(points, ground truth count per class): the original evaluation (fix None and no
        option: tidecv's ap_data, in push order), or tidecv's fix_errors: errors (fixed if of
        type `fix`) first, in error order, then the true positives; perfect_ranking scores
        true positives 1 and false positives 0; all_found drops the unmatched objects."""
        gt_count = Counter({k: self.gt_count[k] for k in self.classes})
        if fix is None and not perfect_ranking and not all_found:
            points = [(c, s, True, o) for c, s, o in self.true_positives]
            points += [e[2] for e in self.errors if e[2] is not None]
            return points, gt_count
        points = []
        for index, (kind, cls, original, fixed, _) in enumerate(self.errors):
            if kind == fix:
                if kind == "Miss":
                    gt_count[cls] -= 1
                    continue
                point = fixed
            else:
                point = original
            if point is not None:
                points.append((point[0], point[1], point[2], index))
        offset = len(self.errors)
        points += [(c, s, True, offset + o) for c, s, o in self.true_positives]
        if perfect_ranking:
            points = [(c, 1.0 if t else 0.0, t, o) for c, s, t, o in points]
        if all_found:
            for k in gt_count:
                gt_count[k] -= self.fn_count[k]
        return points, gt_count

    @staticmethod
    def class_aps(points_and_counts: tuple[list[tuple], Counter]) -> dict[int, float]:
        """tidecv's AP (in [0, 1]) of every class that has points or ground truth."""
        points, gt_count = points_and_counts
        by_class: dict[int, list[tuple]] = {}
        for point in points:
            by_class.setdefault(point[0], []).append(point)
        aps = {}
        for cls in dict.fromkeys([*gt_count, *by_class]):
            members = by_class.get(cls, [])
            if not members and gt_count[cls] == 0:
                continue  # tidecv's is_empty: left out of the mean
            aps[cls] = _tide_ap(members, gt_count[cls])
        return aps


def _tide_ap(points: list[tuple], num_gt: int) -> float:
    """tidecv's APDataObject.get_ap / 100, in its arithmetic (same float operations)."""
    if num_gt == 0:
        return 0.0
    points = sorted(points, key=lambda p: (-p[1], p[3]))  # stable by score in push order
    true = np.array([p[2] for p in points], dtype=bool)
    num_true = np.cumsum(true)
    num_false = np.cumsum(~true)
    precision = (num_true / (num_true + num_false)).tolist()
    recall = num_true / num_gt
    for i in range(len(precision) - 1, 0, -1):  # remove the dips, right to left
        if precision[i] > precision[i - 1]:
            precision[i - 1] = precision[i]
    x_range = np.array([x / 100 for x in range(101)])  # tidecv's grid (not np.linspace's)
    indices = np.searchsorted(recall, x_range, side="left")
    y_range = [precision[i] if i < len(precision) else 0 for i in indices]
    return sum(y_range) / len(y_range)


def _mean(aps: dict[int, float]) -> float:
    return sum(aps.values()) / len(aps) if aps else float("nan")


def _det_geometry(record: dict, iou_type: str, height: int, width: int):
    if iou_type == "bbox":
        if "bbox" in record:
            return [float(v) for v in record["bbox"]]
        return mask_utils.toBbox(_rle(record["segmentation"], height, width)).tolist()
    return _rle(record["segmentation"], height, width)


def _gt_geometry(ann: dict, iou_type: str, height: int, width: int):
    if iou_type == "bbox":
        return [float(v) for v in ann["bbox"]]
    return _rle(ann["segmentation"], height, width)


def _rle(segmentation, height: int, width: int) -> dict:
    """A compressed RLE of polygons, an uncompressed or a compressed RLE (COCO's annToRLE)."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


# ------------------------------------------------------------------------------------------
# The whole report


def error_analysis(
    coco_gt: COCO,
    results: Sequence[dict | Detections],
    iou_types: Sequence[str] = ("bbox", "segm"),
    backend: str = "faster_coco_eval",
    image_ids: Iterable[int] | None = None,
    mask_areas: bool = False,
    areas: Sequence[str] = ("all",),
    tide: bool = True,
) -> dict:
    """{iou_type: {"analyze": coco_analysis(...), "tide": tide_errors(...)}} (JSON-ready;
    "tide" only if `tide`), for metrics.json and `plots.analysis_figure` / `tide_figure`.

    `areas` defaults to "all" alone: the curves are 7 x 101 floats per category and area
    range, about 0.4 MB of json per task and area range on COCO's 80 categories.
    """
    report = {}
    for iou_type in iou_types:
        report[iou_type] = {"analyze": coco_analysis(coco_gt, results, iou_type, backend,
                                                     image_ids, mask_areas, areas)}
        if tide:
            report[iou_type]["tide"] = tide_errors(coco_gt, results, iou_type, image_ids)
    return report


def print_error_analysis(report: dict) -> None:
    """`error_analysis`'s overall numbers as two tables on stdout: the analyze() curves' APs
    (area all) and TIDE's dAPs, a row per task."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=100)
    curves = Table(title="Error analysis: AP of COCO's analyze() curves (area all)")
    tide = Table(title="Error analysis: TIDE dAP (AP50 points gained by fixing each error "
                       "type, x 100 as TIDE prints them)")
    for table in (curves, tide):
        table.add_column("task")
    first = next(iter(report.values()))
    for name in first["analyze"]["curves"]:
        curves.add_column(name, justify="right")
    if "tide" in first:
        for name in (*first["tide"]["main"], *first["tide"]["special"]):
            tide.add_column(name, justify="right")
    for task, parts in report.items():
        overall = parts["analyze"]["overall"]["all"]
        cells = ["-"] * len(parts["analyze"]["curves"]) if overall is None else [
            f"{overall['ap'][name]:.3f}" for name in parts["analyze"]["curves"]]
        curves.add_row(task, *cells)
        if "tide" in parts:
            errors = parts["tide"]["main"] | parts["tide"]["special"]
            tide.add_row(task, *(f"{100 * value:.2f}" for value in errors.values()))
    console.print(curves)
    if "tide" in first:
        console.print(tide)
