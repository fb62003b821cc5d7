"""LVIS evaluation: run_cocoeval's LVIS mode against the official `lvis` package (0.5.3).

The fixture is coco128's real annotations converted to LVIS v1's format (no file names, no
iscrowd, r/c/f frequencies, per-image negative and not-exhaustive category lists); the
detections are perturbed ground truth boxes and masks with ties in score, duplicates, false
positives on negative, unlisted and not-exhaustive categories, empty masks, zero-width boxes,
and images of 350+ detections, so that every federated rule and the 300 cap matter.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from instseg.data.coco import load_coco
from instseg.evaluation import lvis as lvis_rules
from instseg.evaluation.cocoeval import _plan, backend_ground_truth, run_cocoeval
from instseg.evaluation.lvis import LVIS_STAT_NAMES, is_lvis
from instseg.evaluation.records import records_by_image
from instseg.structures.detections import Detections
from instseg.utils.errors import InstsegError
from tests.conftest import shared_data

# LVISEval.summarize's result keys, in LVIS_STAT_NAMES' order.
OFFICIAL_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                 "AR@300", "ARs@300", "ARm@300", "ARl@300")
SMALL_CHUNK = 300  # forces several category slices and several image runs per slice


def _lvis_json(coco: dict, rng: np.random.Generator) -> dict:
    """coco128's instances json in LVIS v1's format."""
    category_ids = [c["id"] for c in coco["categories"]]
    present: dict[int, set[int]] = {}
    counts: dict[int, int] = {}
    for ann in coco["annotations"]:
        present.setdefault(ann["image_id"], set()).add(ann["category_id"])
        counts[ann["category_id"]] = counts.get(ann["category_id"], 0) + 1
    image_count = {c: sum(c in p for p in present.values()) for c in category_ids}
    ranked = sorted(category_ids, key=lambda c: (image_count[c], c))
    frequency = {c: "rcf"[min(2, 3 * rank // len(ranked))] for rank, c in enumerate(ranked)}
    categories = [dict(id=c["id"], name=c["name"], synonyms=[c["name"]],
                       synset=f"{c['name']}.n.01", frequency=frequency[c["id"]],
                       **{"def": f"a {c['name']}"}, image_count=image_count[c["id"]],
                       instance_count=counts.get(c["id"], 0))
                  for c in coco["categories"]]
    images = []
    for image in coco["images"]:
        here = present.get(image["id"], set())
        absent = [c for c in category_ids if c not in here]
        negatives = rng.choice(absent, size=min(12, len(absent)), replace=False).tolist()
        exhaustive = sorted(here)
        not_exhaustive = ([int(rng.choice(exhaustive))]
                          if len(exhaustive) >= 2 and rng.random() < 0.4 else [])
        images.append(dict(
            id=image["id"], width=image["width"], height=image["height"], license=1,
            coco_url=f"http://images.cocodataset.org/train2017/{image['file_name']}",
            flickr_url=f"http://farm1.staticflickr.com/{image['file_name']}",
            date_captured="2013-11-14 11:18:45",
            neg_category_ids=sorted(negatives), not_exhaustive_category_ids=not_exhaustive))
    annotations = [{k: v for k, v in ann.items() if k != "iscrowd"} for ann in coco["annotations"]]
    return dict(info=coco.get("info", {}), licenses=[dict(id=1, name="x", url="")],
                images=images, annotations=annotations, categories=categories)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode()}


def _box_mask(box, height: int, width: int) -> np.ndarray:
    x, y, w, h = (int(round(v)) for v in box)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[max(0, y):max(0, y + h), max(0, x):max(0, x + w)] = 1
    return mask


def _detections(lvis: dict, rng: np.random.Generator) -> list[dict]:
    """COCO results records (bbox and segmentation) of the structure the module docstring
    describes; scores on a 0.01 grid, so that many tie."""
    by_image: dict[int, list[dict]] = {}
    for ann in lvis["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    category_ids = [c["id"] for c in lvis["categories"]]
    records = []
    for index, image in enumerate(lvis["images"]):
        height, width, image_id = image["height"], image["width"], image["id"]
        anns = by_image.get(image_id, [])
        here = {a["category_id"] for a in anns}
        listed = here | set(image["neg_category_ids"])
        unlisted = [c for c in category_ids if c not in listed]

        def add(category_id, box, mask, score, image_id=image_id):
            records.append(dict(image_id=image_id, category_id=int(category_id),
                                bbox=[float(v) for v in box], score=round(float(score), 2),
                                segmentation=_rle(mask)))

        def random_box(width=width, height=height):
            w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
            return [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]

        for ann in anns:
            if rng.random() < 0.12:
                continue  # missed
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], height, width))
            gt_mask = mask_utils.decode(rle)
            x, y, w, h = ann["bbox"]
            for copy_index in range(1 + (rng.random() < 0.25)):  # some duplicates
                jitter = 0.04 + 0.1 * copy_index
                dx, dy = rng.normal(0, jitter * w), rng.normal(0, jitter * h)
                box = [x + dx, y + dy, w * rng.normal(1, jitter), h * rng.normal(1, jitter)]
                shifted = np.roll(gt_mask, (int(round(dy)), int(round(dx))), axis=(0, 1))
                add(ann["category_id"], box, shifted, rng.uniform(0.3, 1) - 0.2 * copy_index)
        for category_id in rng.choice(sorted(image["neg_category_ids"]), size=2):
            box = random_box()  # false positives on negative categories: penalised
            add(category_id, box, _box_mask(box, height, width), rng.uniform(0, 0.7))
        for category_id in rng.choice(unlisted, size=3):
            box = random_box()  # neither present nor negative: ignored by LVIS
            add(category_id, box, _box_mask(box, height, width), rng.uniform(0, 1))
        for category_id in image["not_exhaustive_category_ids"]:
            box = random_box()  # unmatched on a not-exhaustive category: ignored
            add(category_id, box, _box_mask(box, height, width), rng.uniform(0.5, 1))
        if anns and index % 9 == 0:  # an empty mask and a zero-width box: area 0
            box = anns[0]["bbox"]
            add(anns[0]["category_id"], box, np.zeros((height, width), np.uint8), 0.9)
            add(anns[0]["category_id"], [box[0], box[1], 0.0, box[3]],
                _box_mask(box, height, width), 0.8)
        if index % 20 == 0:  # more than 300: the per-image cap decides which count
            pool = sorted(listed) + unlisted[:5]
            for category_id in rng.choice(pool, size=350):
                box = random_box()
                add(category_id, box, _box_mask(box, height, width), rng.uniform(0, 1))
    return records


@pytest.fixture(scope="module")
def lvis_case(tmp_path_factory):
    """(LVIS json path, detection records) built from coco128's annotations."""
    source = shared_data("coco128-seg", "annotations", "instances_train2017.json")
    rng = np.random.default_rng(0)
    lvis = _lvis_json(json.loads(source.read_text()), rng)
    path = tmp_path_factory.mktemp("lvis") / "lvis_v1_val.json"
    path.write_text(json.dumps(lvis))
    return path, _detections(lvis, rng)


def _official(path, records: list[dict], iou_type: str, monkeypatch) -> list[float]:
    from lvis import LVIS, LVISEval, LVISResults

    # lvis 0.5.3's accumulate casts with np.float, which numpy 2 removed; it meant float.
    monkeypatch.setattr(np, "float", float, raising=False)
    gt = LVIS(str(path))
    evaluator = LVISEval(gt, LVISResults(gt, copy.deepcopy(records), max_dets=300), iou_type)
    evaluator.run()
    return [float(evaluator.results[key]) for key in OFFICIAL_KEYS]


def _as_detections(records: list[dict]) -> list[Detections]:
    """Box-only Detections per image (the evaluator's compact form)."""
    by_image = records_by_image(records)
    result = []
    for image_id, items in by_image.items():
        xywh = torch.tensor([r["bbox"] for r in items], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        result.append(Detections(boxes, torch.tensor([r["score"] for r in items]),
                                 torch.tensor([r["category_id"] for r in items]), image_id))
    return result


def test_fixture_exercises_every_rule(lvis_case):
    path, records = lvis_case
    lvis = json.loads(path.read_text())
    assert {c["frequency"] for c in lvis["categories"]} == {"r", "c", "f"}
    assert all("file_name" not in i for i in lvis["images"])
    assert all("iscrowd" not in a for a in lvis["annotations"])
    per_image = records_by_image(records)
    assert max(len(v) for v in per_image.values()) > 300
    assert sum(len(i["not_exhaustive_category_ids"]) for i in lvis["images"]) > 10
    # several category slices, some with several image runs
    coco = load_coco(path)
    plan = _plan(sorted(coco.getImgIds()), sorted(coco.getCatIds()), per_image, SMALL_CHUNK)
    assert len(plan) > 3 and max(len(images) for _, images in plan) > 1


@pytest.mark.parametrize(("iou_type", "mask_areas"),
                         [("bbox", True), ("segm", True), ("segm", False)])
def test_every_lvis_stat_equals_the_official_lvis_package(lvis_case, iou_type, mask_areas,
                                                          monkeypatch):
    """mask_areas: a segm detection's area (small/medium/large) from its mask (the
    evaluator's choice), or from its box (both as COCO.loadRes and LVISResults take it)."""
    path, records = lvis_case
    coco = load_coco(path)  # the loader's checked ground truth, as training evaluates it
    assert is_lvis(coco)
    if iou_type == "bbox":
        results = _as_detections(records)
        reference = [r for d in results for r in d.records()]
    else:
        results = records
        reference = [{k: v for k, v in r.items() if k != "bbox" or not mask_areas}
                     for r in records]
    expected = _official(path, reference, iou_type, monkeypatch)

    sliced = run_cocoeval(coco, results, iou_type, verbose=False, mask_areas=mask_areas,
                          chunk_detections=SMALL_CHUNK)
    whole = run_cocoeval(coco, results, iou_type, verbose=False, mask_areas=mask_areas,
                         chunk_detections=10**9)
    assert len(sliced.stats) == len(LVIS_STAT_NAMES) == 13
    np.testing.assert_allclose(sliced.stats, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sliced.stats, whole.stats)  # slicing changes no bit
    np.testing.assert_array_equal(sliced.eval["precision"], whole.eval["precision"])
    assert min(expected) > -1 and max(expected) < 1  # no degenerate stat

    # faster-coco-eval's LVIS mode alone, over the same records, is not the official result:
    # the per-image 300 cap and the zero-area detections make the difference
    from faster_coco_eval import COCO, COCOeval_faster

    gt = backend_ground_truth(coco, "faster_coco_eval", lvis=True)
    plain = COCOeval_faster(gt, COCO.loadRes(gt, copy.deepcopy(reference)), iouType=iou_type,
                            lvis_style=True, print_function=lambda *a: None)
    plain.params.maxDets = [300]
    plain.evaluate()
    plain.accumulate()
    plain.summarize()
    assert np.abs(lvis_rules.lvis_stats(plain) - expected).max() > 1e-4


def test_is_lvis_and_what_lvis_mode_refuses(lvis_case):
    path, _ = lvis_case
    coco = load_coco(path)
    assert not is_lvis(load_coco(shared_data("coco128-seg", "annotations",
                                             "instances_train2017.json")))
    with pytest.raises(InstsegError, match="faster_coco_eval backend only"):
        run_cocoeval(coco, [], "bbox", backend="pycocotools", verbose=False)
    without = copy.deepcopy(coco.dataset)
    without["categories"][3].pop("frequency")
    with pytest.raises(InstsegError, match=r"'frequency'.*1 categories have none"):
        backend_ground_truth(_coco_of(without), "faster_coco_eval")


def _coco_of(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def test_lvis_ground_truth_leaves_zero_area_out_and_has_no_crowd_regions():
    dataset = dict(images=[dict(id=1, width=10, height=10)], categories=[],
                   annotations=[dict(id=1, area=4.0), dict(id=2, area=0.0),
                                dict(id=3, area=9.0, iscrowd=1)])
    prepared = lvis_rules.lvis_dataset(dataset)
    assert [(a["id"], a.get("iscrowd"))
            for a in prepared["annotations"]] == [(1, None), (3, 0)]
    assert dataset["annotations"][2]["iscrowd"] == 1  # the input is not changed
    clean = dict(dataset, annotations=dataset["annotations"][:1])
    assert lvis_rules.lvis_dataset(clean) is clean


def test_top_detections_keeps_the_best_in_a_stable_order():
    first = Detections(torch.zeros((3, 4)), torch.tensor([0.5, 0.9, 0.5]),
                       torch.tensor([1, 2, 3]), 7)
    second = {"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}
    keep = lvis_rules.top_detections([first, second], limit=3)
    # 0.9 first, then the 0.5 ties in the results' order: the record (last) is dropped
    assert [m.tolist() for m in keep] == [[True, True, True], [False]]
    assert lvis_rules.top_detections([first, second], limit=4) is None


def test_evaluate_scores_an_lvis_results_file_with_the_official_numbers(lvis_case, tmp_path,
                                                                        monkeypatch):
    """The user's path: `evaluate.py predictions=FILE` with an LVIS json as data prints and
    records the 13 LVIS stats per task under instseg's names (val/segm_mAP_r, ...), equal to
    the official package's (masks' areas from the masks, as the evaluator scores them); the
    error analysis, which follows COCO's rules, is refused."""
    from instseg.tasks.evaluate import evaluate
    from instseg.utils.errors import InstsegError
    from tests.conftest import compose_config

    path, records = lvis_case
    results = tmp_path / "results.json"
    results.write_text(json.dumps(records))
    images = shared_data("coco128-seg", "images")  # holds train2017/, as coco_url names it
    data = ["data=coco_format", f"data.train_images={images}", f"data.train_annotations={path}",
            f"data.val_images={images}", f"data.val_annotations={path}"]
    metrics = evaluate(compose_config("evaluate", [f"predictions={results}", *data],
                                      tmp_path / "run"))
    assert [k for k in metrics if k.startswith("val/segm_")] == [
        f"val/segm_{name}" for name in LVIS_STAT_NAMES]
    official = _official(path, [{k: v for k, v in r.items() if k != "bbox"} for r in records],
                         "segm", monkeypatch)
    np.testing.assert_allclose([metrics[f"val/segm_{n}"] for n in LVIS_STAT_NAMES], official,
                               rtol=0, atol=1e-12)
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["metrics"] == metrics
    with pytest.raises(InstsegError, match="LVIS"):
        evaluate(compose_config("evaluate", [f"predictions={results}", *data,
                                             "eval.analyze=true"], tmp_path / "again"))
