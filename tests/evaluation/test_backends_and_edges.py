"""Both backends agree to 1e-12 on real and adversarial cases; edge cases score as COCO says."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from instseg.data.categories import CategoryMap
from instseg.data.coco import load_coco
from instseg.evaluation.coco import CocoEvaluator, per_category_ap
from instseg.evaluation.cocoeval import _plan, run_cocoeval
from tests.conftest import shared_data
from tests.evaluation import coco_stats


def _perturbed_results(coco, seed: int, drop_images=(), extra_category=None) -> list[dict]:
    """Detections from the ground truth: jittered boxes, eroded/shifted masks, some wrong
    labels, some empty masks, false positives; none at all on `drop_images`."""
    rng = np.random.default_rng(seed)
    category_ids = [c["id"] for c in coco.dataset["categories"]]
    results = []
    for ann in coco.dataset["annotations"]:
        if ann["image_id"] in drop_images:
            continue
        info = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        mask = np.roll(mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
        if rng.random() < 0.1:
            mask[:] = 0  # a detection with an empty mask
        rle = mask_utils.encode(np.asfortranarray(mask))
        x, y, w, h = ann["bbox"]
        label = ann["category_id"] if rng.random() > 0.2 else int(rng.choice(category_ids))
        results.append({
            "image_id": ann["image_id"], "category_id": label, "score": float(rng.random()),
            "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(0.8, 1.2), h],
            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
        })
        if rng.random() < 0.3:  # a false positive elsewhere in the image
            results.append(dict(results[-1], score=float(rng.random()),
                                bbox=[info["width"] / 2, info["height"] / 2, 20.0, 20.0]))
    for image_id in sorted(coco.imgs)[-2:]:
        if extra_category is not None:  # detections of a class that has no ground truth
            results.append({"image_id": image_id, "category_id": extra_category, "score": 0.9,
                            "bbox": [5.0, 5.0, 30.0, 30.0]})
    return results


def _assert_backends_equal(coco, results, iou_type):
    fast = run_cocoeval(coco, results, iou_type, "faster_coco_eval", verbose=False)
    reference = run_cocoeval(coco, results, iou_type, "pycocotools", verbose=False)
    np.testing.assert_allclose(fast.stats[:12], reference.stats[:12], rtol=0, atol=1e-12)
    fast_ap, reference_ap = per_category_ap(fast), per_category_ap(reference)
    np.testing.assert_allclose(list(fast_ap.values()), list(reference_ap.values()),
                               rtol=0, atol=1e-12)
    return reference.stats[:12]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backends_equal_on_coco_sample_with_crowd(iou_type):
    coco = load_coco(shared_data("coco-sample") / "annotations.json")
    assert any(a["iscrowd"] for a in coco.dataset["annotations"])
    results = _perturbed_results(coco, seed=0)
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    stats = _assert_backends_equal(coco, results, iou_type)
    assert 0 < stats[0] < 1


@pytest.fixture(scope="module")
def hard_case(tiny_shapes, tmp_path_factory):
    """Tiny shapes val set plus two images without ground truth and a category without any."""
    data = json.loads((tiny_shapes / "annotations/instances_val.json").read_text())
    last = max(i["id"] for i in data["images"])
    data["images"] += [dict(id=last + k, file_name=f"empty{k}.png", width=96, height=96)
                       for k in (1, 2)]
    data["categories"].append({"id": 9, "name": "hexagon", "supercategory": "shape"})
    path = tmp_path_factory.mktemp("hard") / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco(path)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_backends_equal_on_empty_images_missing_detections_and_classes(hard_case, iou_type):
    results = _perturbed_results(hard_case, seed=1, drop_images={1}, extra_category=9)
    if iou_type == "segm":  # detections of the extra class carry no mask
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results
                   if "segmentation" in r]
    stats = _assert_backends_equal(hard_case, results, iou_type)
    assert 0 < stats[0] < 1


def test_no_ground_truth_category_has_no_ap_and_no_detections_score_zero(hard_case):
    categories = CategoryMap.from_coco_categories(hard_case.dataset["categories"])
    evaluator = CocoEvaluator(hard_case, categories, verbose=False)
    metrics, category_ap, _ = evaluator.score(sorted(hard_case.imgs), [])
    assert metrics["segm_mAP"] == 0.0 and metrics["bbox_mAR100"] == 0.0
    assert np.isnan(category_ap["segm"]["hexagon"])
    assert category_ap["bbox"]["circle"] == 0.0


def test_every_stat_uses_the_same_image_set_as_pycocotools(hard_case):
    """Evaluating a subset of images equals pycocotools restricted to the same ids."""
    results = _perturbed_results(hard_case, seed=2)
    subset = sorted(hard_case.imgs)[:3]
    fast = coco_stats(hard_case, results, "bbox", "faster_coco_eval", subset, verbose=False)
    reference = coco_stats(hard_case, results, "bbox", "pycocotools", subset, verbose=False)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_evaluating_in_slices_of_images_equals_one_evaluation(hard_case, backend, iou_type):
    """Memory-bounded slices of categories and images (~5 detections each) give exactly one
    COCOeval's numbers."""
    from instseg.evaluation.records import records_by_image

    results = [r for r in _perturbed_results(hard_case, seed=3, drop_images={2})
               if "segmentation" in r]
    image_ids = sorted(hard_case.imgs)
    plan = _plan(image_ids, sorted(hard_case.getCatIds()), records_by_image(results), 5)
    assert len(plan) > 1 and len(plan[0][1]) > 1  # categories and images both split
    whole, sliced = (
        run_cocoeval(hard_case, results, iou_type, backend, verbose=False, mask_areas=True,
                     chunk_detections=chunk)
        for chunk in (10**9, 5)
    )
    np.testing.assert_array_equal(sliced.stats, whole.stats)
    np.testing.assert_array_equal(sliced.eval["precision"], whole.eval["precision"])
    np.testing.assert_array_equal(sliced.eval["recall"], whole.eval["recall"])
    assert 0 < whole.stats[0] < 1


def test_results_for_images_outside_the_ground_truth_are_an_error(hard_case):
    results = _perturbed_results(hard_case, seed=0)[:3]
    results.append(dict(results[0], image_id=12345))
    with pytest.raises(ValueError, match="not in the ground truth, e.g. \\[12345\\]"):
        run_cocoeval(hard_case, results, "bbox", verbose=False)
