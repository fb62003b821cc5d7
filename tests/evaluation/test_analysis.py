"""Error analysis: analyze.m's curves and TIDE's errors on cases whose answer is known by
construction, the curves' end points against pycocotools' stats, TIDE against tidecv."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instseg.data.coco import load_coco
from instseg.evaluation.analysis import (
    CURVES,
    TIDE_MAIN,
    coco_analysis,
    error_analysis,
    tide_errors,
)
from instseg.evaluation.plots import analysis_figure, analysis_legend, tide_figure
from instseg.structures.detections import Detections
from tests.conftest import shared_data

BACKENDS = ("faster_coco_eval", "pycocotools")
TASKS = ("bbox", "segm")
SIZE = 100  # synthetic images are SIZE x SIZE
# cat and dog share a supercategory; car is another's.
CATEGORIES = [{"id": 1, "name": "cat", "supercategory": "animal"},
              {"id": 2, "name": "dog", "supercategory": "animal"},
              {"id": 3, "name": "car", "supercategory": "vehicle"}]
CAT, DOG, CAR = 1, 2, 3
BOX = [10, 10, 40, 40]
SHIFTED = [30, 10, 40, 40]  # IoU 1/3 with BOX: between .1 and .5


def _rle(box, size=SIZE) -> dict:
    """The json RLE of a pixel-aligned box: mask IoU equals box IoU."""
    x, y, w, h = box
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[y:y + h, x:x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def _coco(images: int, objects) -> COCO:
    """Ground truth of `images` SIZE x SIZE images (ids 1..); objects: (image, category,
    box) with box-shaped RLE masks."""
    annotations = [{"id": k + 1, "image_id": i, "category_id": c, "bbox": list(b),
                    "area": float(b[2] * b[3]), "iscrowd": 0, "segmentation": _rle(b)}
                   for k, (i, c, b) in enumerate(objects)]
    coco = COCO()
    coco.dataset = {"images": [{"id": i, "width": SIZE, "height": SIZE}
                               for i in range(1, images + 1)],
                    "categories": copy.deepcopy(CATEGORIES), "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(image_id, category_id, box, score, mask_box=None) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": list(box),
            "score": score, "segmentation": _rle(mask_box or box)}


def _aps(coco, results, iou_type, backend, group="overall", **options) -> list[float]:
    """The seven APs, to be compared with pytest.approx (pycocotools' precision is
    tp / (tp + fp + eps), 1 - 1e-16 for 1)."""
    analysis = coco_analysis(coco, copy.deepcopy(results), iou_type, backend, **options)
    entry = analysis["overall" if group == "overall" else "per_category"]
    entry = entry["all"] if group == "overall" else entry[group]["all"]
    return [entry["ap"][c] for c in CURVES]


def _check_aps(coco, results, iou_type, backend, expected, group="overall", **options):
    assert _aps(coco, results, iou_type, backend, group, **options) == pytest.approx(
        expected, abs=1e-12)


def _tide(coco, results, iou_type) -> dict:
    return tide_errors(coco, copy.deepcopy(results), iou_type)


def _only(tide: dict, kind: str, count: int = 1) -> None:
    """The run has `count` errors, all of `kind`."""
    assert tide["counts"] == {k: count if k == kind else 0 for k in TIDE_MAIN}


both_ways = pytest.mark.parametrize("iou_type,backend",
                                    [(t, b) for t in TASKS for b in BACKENDS])


# ----------------------------------------------------------------------------- known answers


@both_ways
def test_a_shifted_detection_is_a_localisation_error(iou_type, backend):
    coco = _coco(1, [(1, CAT, BOX)])
    results = [_det(1, CAT, SHIFTED, 0.9)]
    _check_aps(coco, results, iou_type, backend, [0, 0, 1, 1, 1, 1, 1])
    tide = _tide(coco, results, iou_type)
    _only(tide, "Loc")  # the object it points at is not a Miss
    assert tide["ap"] == 0 and tide["main"] == {k: float(k == "Loc") for k in TIDE_MAIN}


@both_ways
def test_class_confusions_count_in_sim_within_a_supercategory_and_in_oth_across(iou_type,
                                                                               backend):
    coco = _coco(4, [(1, CAT, BOX), (2, DOG, BOX), (3, CAT, BOX), (4, CAR, BOX)])
    results = [_det(1, DOG, BOX, 0.9),  # a dog on a cat: a sibling class (Sim)
               _det(2, DOG, BOX, 0.8),
               _det(3, CAR, BOX, 0.9),  # a car on a cat: another supercategory (Oth)
               _det(4, CAR, BOX, 0.8)]
    _check_aps(coco, results, iou_type, backend, [.5, .5, .5, 1, 1, 1, 1], "dog")
    _check_aps(coco, results, iou_type, backend, [.5, .5, .5, .5, 1, 1, 1], "car")
    _check_aps(coco, results, iou_type, backend, [0, 0, 0, 0, 0, 0, 1], "cat")
    overall = _aps(coco, results, iou_type, backend)
    np.testing.assert_allclose(overall, [1 / 3] * 3 + [.5, 2 / 3, 2 / 3, 1], rtol=0,
                               atol=1e-15)
    tide = _tide(coco, results, iou_type)
    _only(tide, "Cls", 2)
    # Fixed, both move to cat as true positives: every class then has AP 1.
    assert tide["ap"] == pytest.approx(1 / 3, abs=1e-12)
    assert tide["main"]["Cls"] == pytest.approx(2 / 3, abs=1e-12)
    assert tide["per_category"]["cat"]["main"]["Cls"] == 1


@both_ways
def test_a_second_copy_is_a_duplicate(iou_type, backend):
    coco = _coco(1, [(1, CAT, [10, 10, 30, 30]), (1, CAT, [50, 50, 30, 30])])
    results = [_det(1, CAT, [10, 10, 30, 30], 0.9), _det(1, CAT, [10, 10, 30, 30], 0.8),
               _det(1, CAT, [50, 50, 30, 30], 0.7)]
    # TP, FP (the duplicate), TP: precision 1 up to recall .5, then 2/3; no IoU threshold
    # or confusion region removes a duplicate, only BG does.
    ap = (51 + 50 * 2 / 3) / 101
    _check_aps(coco, results, iou_type, backend, [ap] * 5 + [1, 1])
    tide = _tide(coco, results, iou_type)
    _only(tide, "Dupe")
    assert tide["ap"] == pytest.approx(ap, abs=1e-12)
    assert tide["main"]["Dupe"] == pytest.approx(1 - ap, abs=1e-12)


@both_ways
def test_detections_on_empty_ground_are_background_errors(iou_type, backend):
    coco = _coco(2, [(2, CAT, BOX)])
    results = [_det(1, CAT, BOX, 0.95),  # an image without ground truth
               _det(2, CAT, BOX, 0.9),
               _det(2, CAT, [70, 70, 20, 20], 0.85)]  # IoU 0 with every object
    _check_aps(coco, results, iou_type, backend, [.5] * 5 + [1, 1])
    tide = _tide(coco, results, iou_type)
    _only(tide, "Bkg", 2)
    assert tide["ap"] == .5 and tide["main"]["Bkg"] == .5


@both_ways
def test_an_undetected_object_is_a_miss(iou_type, backend):
    coco = _coco(1, [(1, CAT, [10, 10, 30, 30]), (1, CAT, [50, 50, 30, 30])])
    results = [_det(1, CAT, [10, 10, 30, 30], 0.9)]
    # Recall stops at .5: BG is 1 only up to there; FN fills the rest.
    _check_aps(coco, results, iou_type, backend, [51 / 101] * 6 + [1])
    tide = _tide(coco, results, iou_type)
    _only(tide, "Miss")
    assert tide["main"]["Miss"] == pytest.approx(1 - 51 / 101, abs=1e-12)
    assert tide["special"]["FN"] == pytest.approx(1 - 51 / 101, abs=1e-12)
    assert tide["special"]["FP"] == 0


@both_ways
def test_wrong_class_and_poor_localisation_is_both(iou_type, backend):
    coco = _coco(2, [(1, DOG, BOX), (2, CAT, BOX)])
    results = [_det(1, CAT, SHIFTED, 0.9), _det(2, CAT, BOX, 0.8)]
    # At IoU .1 the dog (cat's sibling) absorbs the cat detection: Sim removes it.
    _check_aps(coco, results, iou_type, backend, [.5, .5, .5, 1, 1, 1, 1], "cat")
    tide = _tide(coco, results, iou_type)
    # The dog it lies on stays undetected: a Miss (only Cls and Loc errors cover an object).
    assert tide["counts"] == {k: int(k in ("Both", "Miss")) for k in TIDE_MAIN}
    assert tide["main"]["Both"] == .25  # cat's AP .5 -> 1, dog's stays 0


@both_ways
def test_confusion_regions_absorb_one_detection_each_as_in_analyze_m(iou_type, backend):
    coco = _coco(2, [(1, DOG, BOX), (2, CAT, BOX)])
    results = [_det(1, CAT, BOX, 0.9), _det(1, CAT, [12, 12, 40, 40], 0.8),
               _det(2, CAT, BOX, 0.7)]
    # analyze.m: the dog is an ignored non-crowd object, so only the first cat detection
    # on it is ignored: ignored, FP, TP. As iscrowd (mmdetection's port) it takes both.
    _check_aps(coco, results, iou_type, backend, [1 / 3] * 3 + [.5, .5, 1, 1], "cat")
    _check_aps(coco, results, iou_type, backend, [1 / 3] * 3 + [1, 1, 1, 1], "cat",
               confusions="crowd")


@pytest.mark.parametrize("backend", BACKENDS)
def test_segm_scores_masks_and_bbox_boxes(backend):
    coco = _coco(1, [(1, CAT, BOX)])
    results = [_det(1, CAT, BOX, 0.9, mask_box=[10, 10, 20, 20])]  # a quarter of the mask
    _check_aps(coco, results, "bbox", backend, [1] * 7)
    _check_aps(coco, results, "segm", backend, [0, 0, 1, 1, 1, 1, 1])
    assert _tide(coco, results, "bbox")["counts"] == dict.fromkeys(TIDE_MAIN, 0)
    _only(_tide(coco, results, "segm"), "Loc")


def test_categories_without_ground_truth_are_left_out_and_inputs_checked():
    coco = _coco(1, [(1, CAT, BOX)])
    analysis = coco_analysis(coco, [_det(1, CAT, BOX, 0.9)], "bbox", areas=("all", "small"))
    assert analysis["per_category"]["dog"] == {"all": None, "small": None}
    assert analysis["overall"]["small"] is None  # a 40 x 40 object is medium
    assert analysis["overall"]["all"]["ap"] == dict.fromkeys(CURVES, 1.0)
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_analysis(coco, [_det(7, CAT, BOX, 0.9)], "bbox")
    with pytest.raises(ValueError, match="not in the ground truth"):
        tide_errors(coco, [_det(7, CAT, BOX, 0.9)], "bbox")
    with pytest.raises(ValueError, match="confusions"):
        coco_analysis(coco, [], "bbox", confusions="maybe")


# ------------------------------------------------------------------------ real COCO objects


def _perturbed(coco: COCO, seed: int, tidecv_conventions: bool) -> list[dict]:
    """Detections of the ground truth: kept, shifted (localisation errors), relabelled
    (class errors), doubled (duplicates), dropped (misses), plus background boxes. With
    `tidecv_conventions`, also ties in score, labels of classes absent from the ground truth
    and an image with 120 detections; without, AP at .5 is COCO's and tidecv's alike."""
    rng = np.random.default_rng(seed)
    present = sorted({a["category_id"] for a in coco.dataset["annotations"]})
    labels = [c["id"] for c in coco.dataset["categories"]] if tidecv_conventions else present
    results = []

    def add(ann, category_id, shift=(0, 0), score=None):
        mask = np.roll(coco.annToMask(ann), shift, axis=(0, 1))
        rle = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = ann["bbox"]
        score = float(rng.random()) if score is None else score
        results.append({"image_id": ann["image_id"], "category_id": int(category_id),
                        "bbox": [x + shift[1], y + shift[0], w, h],
                        "score": round(score, 2) if tidecv_conventions else score,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})

    for ann in coco.dataset["annotations"]:
        draw = rng.random()
        if draw < 0.15:
            continue  # missed
        if draw < 0.3:
            add(ann, ann["category_id"], (int(ann["bbox"][3] * .3), int(ann["bbox"][2] * .4)))
        elif draw < 0.45:
            add(ann, rng.choice(labels))
        elif draw < 0.55:
            add(ann, ann["category_id"])
            add(ann, ann["category_id"], (1, 1))
        else:
            add(ann, ann["category_id"])
    for image in coco.dataset["images"][::3]:
        count = 120 if tidecv_conventions and image is coco.dataset["images"][0] else 1
        for _ in range(count):
            x, y = rng.integers(0, 40, 2)
            box = [int(x), int(y), 12, 12]
            mask = np.zeros((image["height"], image["width"]), dtype=np.uint8)
            mask[box[1]:box[1] + 12, box[0]:box[0] + 12] = 1
            rle = mask_utils.encode(np.asfortranarray(mask))
            results.append({"image_id": image["id"], "category_id": int(rng.choice(labels)),
                            "bbox": box, "score": float(rng.random()) * 0.5,
                            "segmentation": {"size": rle["size"],
                                             "counts": rle["counts"].decode()}})
    return results


@pytest.fixture(scope="module")
def coco128():
    return load_coco(shared_data("coco128-seg", "annotations", "instances_train2017.json"))


@pytest.fixture(scope="module")
def crowded(coco128):
    """(json of coco128 with every 20th object made a crowd region (polygons kept, as COCO
    allows), its COCO, perturbed detections with tidecv's conventions)."""
    dataset = copy.deepcopy(coco128.dataset)
    for ann in dataset["annotations"][::20]:
        ann["iscrowd"] = 1
    text = json.dumps(dataset)  # before pycocotools turns the polygons into RLEs in place
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return text, coco, _perturbed(coco, 1, tidecv_conventions=True)


@pytest.fixture(scope="module")
def plain_results(coco128):
    return _perturbed(coco128, 3, tidecv_conventions=False)


def _pycocotools(coco: COCO, results: list[dict], iou_type: str) -> COCOeval:
    """The reference: pycocotools' own COCOeval, default parameters."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("iou_type", TASKS)
def test_curve_end_points_are_the_coco_stats_and_the_curves_are_ordered(crowded, iou_type):
    _, coco, results = crowded
    reference = _pycocotools(coco, results, iou_type)
    analyses = {b: coco_analysis(coco, copy.deepcopy(results), iou_type, b) for b in BACKENDS}
    overall = analyses["pycocotools"]["overall"]["all"]["ap"]
    assert overall["C75"] == reference.stats[2]  # same arithmetic, to the bit
    assert overall["C50"] == reference.stats[1]
    assert overall["FN"] == 1
    assert 0.2 < overall["C75"] < overall["Loc"] < overall["Oth"] < overall["BG"] < 1
    # Per area range too: C50 is pycocotools' AP at .5 over the categories with objects.
    for a, area in enumerate(("all", "small", "medium", "large")):
        precision = reference.eval["precision"][0, :, :, a, -1]
        assert analyses["pycocotools"]["overall"][area]["ap"]["C50"] == pytest.approx(
            np.mean(precision[precision > -1]), abs=1e-12)
    faster = analyses["faster_coco_eval"]
    assert faster["overall"]["all"]["ap"]["C75"] == pytest.approx(reference.stats[2], abs=1e-12)
    for (area, entry), (_, other) in zip(_entries(faster), _entries(analyses["pycocotools"]),
                                         strict=True):
        assert (entry is None) == (other is None)
        if entry is None:
            continue
        np.testing.assert_allclose(entry["precision"], other["precision"], rtol=0, atol=1e-12)
        curves = np.asarray(entry["precision"])
        # Loc <= Sim <= Oth <= BG <= FN by construction; C75 <= C50 <= Loc too over all
        # areas here, though greedy matching does not promise it (in an area range, a
        # detection outside it that matches only at .1 can take an object from one inside).
        first = 0 if area == "all" else 2
        assert (np.diff(curves[first:], axis=0) >= 0).all()
        assert (np.diff(curves, axis=1) <= 0).all()  # precision falls with recall
        assert entry["ap"]["FN"] == 1


def _entries(analysis: dict) -> list[tuple[str, dict | None]]:
    """(area, entry) of every group of an analysis, in a fixed order."""
    groups = [analysis["overall"], *analysis["per_supercategory"].values(),
              *analysis["per_category"].values()]
    return [item for group in groups for item in group.items()]


@pytest.mark.parametrize("iou_type", TASKS)
def test_tide_matches_tidecv(crowded, tmp_path, iou_type):
    from tidecv import TIDE, datasets

    text, coco, results = crowded
    (tmp_path / "gt.json").write_text(text)
    (tmp_path / "results.json").write_text(json.dumps(results))
    tide = TIDE()
    with contextlib.redirect_stdout(io.StringIO()):
        run = tide.evaluate(datasets.COCO(str(tmp_path / "gt.json")),
                            datasets.COCOResult(str(tmp_path / "results.json")),
                            mode=TIDE.BOX if iou_type == "bbox" else TIDE.MASK)
        errors = tide.get_all_errors()
    name = next(iter(errors["main"]))
    ours = tide_errors(coco, copy.deepcopy(results), iou_type)
    # tidecv's units are AP x 100; its arithmetic is reproduced, so only rounding differs.
    assert ours["ap"] * 100 == pytest.approx(run.ap, abs=1e-9)
    main = {k: 100 * v for k, v in ours["main"].items()}
    assert main == pytest.approx(errors["main"][name], abs=1e-9)
    special = errors["special"][name]
    assert 100 * ours["special"]["FP"] == pytest.approx(special["FalsePos"], abs=1e-9)
    assert 100 * ours["special"]["FN"] == pytest.approx(special["FalseNeg"], abs=1e-9)
    assert ours["counts"] == {e.short_name: n for e, n in run.count_errors().items()}
    assert min(ours["counts"].values()) > 0 and ours["main"]["Cls"] > 0.05  # all kinds met


@pytest.mark.parametrize("iou_type", TASKS)
def test_tide_ap_is_coco_ap50_without_tidecvs_conventions(coco128, plain_results, iou_type):
    reference = _pycocotools(coco128, plain_results, iou_type)
    tide = tide_errors(coco128, copy.deepcopy(plain_results), iou_type)
    assert tide["ap"] == pytest.approx(reference.stats[1], abs=1e-12)


def test_report_is_plain_json_and_draws(coco128, plain_results):
    image_ids = [image["id"] for image in coco128.dataset["images"][:24]]
    results = [r for r in plain_results if r["image_id"] in image_ids]
    report = error_analysis(coco128, copy.deepcopy(results), TASKS, image_ids=image_ids,
                            areas=("all",))
    assert json.loads(json.dumps(report)) == report
    _assert_plain(report)
    # Detections give the records' numbers (boxes as float32, as Detections keep them).
    image_id = results[0]["image_id"]
    image = coco128.imgs[image_id]
    mine = [r for r in results if r["image_id"] == image_id]
    others = [r for r in results if r["image_id"] != image_id]
    detections = Detections.from_records(mine, image["height"], image["width"])
    again = error_analysis(coco128, [*copy.deepcopy(others), detections], TASKS,
                           image_ids=image_ids, areas=("all",))
    for task in TASKS:
        assert again[task]["tide"]["counts"] == report[task]["tide"]["counts"]
        np.testing.assert_allclose(again[task]["analyze"]["overall"]["all"]["precision"],
                                   report[task]["analyze"]["overall"]["all"]["precision"],
                                   atol=1e-6)
    figure = analysis_figure(report)
    assert len(figure.axes) == 2
    legend = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    aps = report["segm"]["analyze"]["overall"]["all"]["ap"]
    assert legend == [analysis_legend(c, aps[c]) for c in CURVES]
    assert legend[-1] == "[1.00] FN" and legend[0] == f"[.{round(aps['C75'] * 1000):03d}] C75"
    assert len(analysis_figure(report, category="person").axes) == 2
    assert len(analysis_figure(report, supercategory="animal").axes) == 2
    assert len(tide_figure(report).axes) == 2


def _assert_plain(value) -> None:
    """Only dicts with str keys, lists, str, bool, int, float and None (no numpy types)."""
    if isinstance(value, dict):
        assert all(type(k) is str for k in value)
        for item in value.values():
            _assert_plain(item)
    elif isinstance(value, list):
        for item in value:
            _assert_plain(item)
    else:
        assert value is None or type(value) in (str, bool, int, float), type(value)
