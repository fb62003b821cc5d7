import ast
import json

import numpy as np
import pytest
import torch

from instseg.data.coco import CocoInstances, load_coco
from instseg.evaluation.coco import CocoEvaluator
from instseg.evaluation.cocoeval import BACKENDS
from tests.conftest import shared_data
from tests.evaluation import coco_stats


def _expected_results(path) -> dict[str, list[float]]:
    lines = path.read_text().splitlines()
    segm = next(line for line in lines if "iouType=segm:" in line and "gt_dataset" in line)
    bbox = next(line for line in lines if "iouType=bbox:" in line)
    return {"segm": ast.literal_eval(segm.split(":", 1)[1].strip()),
            "bbox": ast.literal_eval(bbox.split(":", 1)[1].strip())}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_reproduces_pycocotools_expected_results(backend, iou_type):
    root = shared_data("eval-shapes")
    expected = _expected_results(root / "EXPECTED_RESULTS.txt")[iou_type]
    results = json.loads((root / "dt_dataset.json").read_text())
    stats = coco_stats(load_coco(root / "gt_dataset.json"), results, iou_type, backend)
    np.testing.assert_allclose(stats, expected, rtol=0, atol=1e-12)


def _targets_as_outputs(target: dict) -> dict:
    masks = target["masks"]
    return {"boxes": target["boxes"], "labels": target["labels"],
            "scores": torch.ones(len(masks)), "masks": masks[:, None].float()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_as_predictions_scores_one_on_coco128(backend):
    root = shared_data("coco128-seg")
    dataset = CocoInstances(root / "images/train2017",
                            root / "annotations/instances_train2017.json", train=True)
    evaluator = CocoEvaluator(dataset.coco, dataset.categories, backend=backend, verbose=False)
    for index in range(len(dataset)):
        _, target = dataset[index]
        evaluator.process([target["image_id"]], [_targets_as_outputs(target)])
    metrics = evaluator.evaluate()
    assert metrics["segm_mAP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["bbox_mAP"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["segm_mAR100"] == pytest.approx(1.0, abs=1e-9)


def test_evaluator_restricts_to_processed_images_and_handles_no_detections(tiny_shapes):
    coco = load_coco(tiny_shapes / "annotations/instances_val.json")
    dataset = CocoInstances(tiny_shapes / "val", tiny_shapes / "annotations/instances_val.json",
                            train=True)
    from instseg.data.categories import CategoryMap

    categories = CategoryMap.from_coco_categories(coco.dataset["categories"])
    evaluator = CocoEvaluator(coco, categories, verbose=False)
    _, target = dataset[0]
    evaluator.process([target["image_id"]], [_targets_as_outputs(target)])
    assert evaluator.evaluate()["segm_mAP"] == pytest.approx(1.0)  # other images not counted
    evaluator.reset()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "scores": torch.zeros(0), "masks": torch.zeros(0, 1, 96, 96)}
    evaluator.process([1, 2], [empty, empty])
    metrics = evaluator.evaluate()
    assert metrics["segm_mAP"] == 0.0 and metrics["bbox_mAR100"] == 0.0


def test_backends_agree_on_imperfect_predictions(tiny_shapes):
    """Noisy, shifted detections with wrong labels: both backends give the same 12 stats."""
    coco = load_coco(tiny_shapes / "annotations/instances_val.json")
    generator = torch.Generator().manual_seed(0)
    results = []
    for ann in coco.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        shift = torch.randn(2, generator=generator) * 3
        results.append({
            "image_id": ann["image_id"], "score": float(torch.rand(1, generator=generator)),
            "category_id": int(torch.randint(1, 5, (1,), generator=generator)),
            "bbox": [x + float(shift[0]), y + float(shift[1]), w, h],
        })
    for iou_type in ["bbox"]:
        reference = coco_stats(coco, results, iou_type, "pycocotools", verbose=False)
        fast = coco_stats(coco, results, iou_type, "faster_coco_eval", verbose=False)
        np.testing.assert_allclose(fast, reference, rtol=0, atol=1e-12)
        assert 0 < reference[0] < 1
