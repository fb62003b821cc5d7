"""evaluate.py predictions=FILE: COCO results files of either kind (bbox-only, or with
segmentations) scored through the real task, against pycocotools' own numbers; and every
error of that mode, naming the file and the record at fault.

Expected numbers are independent of instseg: EXPECTED_RESULTS.txt (pycocotools' printed
stats) or pycocotools' COCOeval run here on the same files.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instseg.cli import run_cli
from instseg.evaluation.cocoeval import BACKENDS
from instseg.tasks.evaluate import evaluate
from instseg.utils.errors import InstsegError
from tests.conftest import ROOT, compose_config, shared_data

STAT_NAMES = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l",
              "mAR1", "mAR10", "mAR100", "mAR_s", "mAR_m", "mAR_l")
BOX_FIELDS = ("image_id", "category_id", "bbox", "score")


# --- helpers --------------------------------------------------------------------------------

def _expected(root) -> dict[str, list[float]]:
    """EXPECTED_RESULTS.txt: bbox of loadRes(dt_dataset.json); segm of its polygons merged to
    one RLE per detection with the bbox dropped (the mask gives the area, as instseg scores)."""
    lines = (root / "EXPECTED_RESULTS.txt").read_text().splitlines()
    bbox = next(line for line in lines if "iouType=bbox:" in line)
    merged = lines[lines.index(next(line for line in lines if "merged to one RLE" in line)) + 1]
    return {"bbox": ast.literal_eval(bbox.split(":", 1)[1].strip()),
            "segm": ast.literal_eval(merged.strip())}


def _data(root, annotations="gt_dataset.json", images=None) -> list[str]:
    """data=coco_format with the one ground truth as both splits (train_* is required)."""
    images = images or root
    return ["data=coco_format", "data.num_workers=0",
            f"data.train_images={images}", f"data.train_annotations={root / annotations}",
            f"data.val_images={images}", f"data.val_annotations={root / annotations}"]


def _write(tmp_path, records, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def _detections(root) -> list[dict]:
    return json.loads((root / "dt_dataset.json").read_text())


def _boxes_only(records) -> list[dict]:
    return [{k: r[k] for k in BOX_FIELDS} for r in records]


def _pycocotools_stats(gt_file, records, iou_type) -> list[float]:
    """The 12 stats of pycocotools' COCOeval itself on `records` (fresh copies: loadRes adds
    keys to the records it gets)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        evaluator = COCOeval(gt, gt.loadRes([dict(r) for r in records]), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[:12].tolist()


def _stats(metrics: dict, iou_type: str) -> list[float]:
    return [metrics[f"val/{iou_type}_{name}"] for name in STAT_NAMES]


def _score(tmp_path, path, root, *overrides):
    cfg = compose_config("evaluate", [f"predictions={path}", *_data(root), *overrides],
                         tmp_path / "run")
    return evaluate(cfg), json.loads((tmp_path / "run" / "metrics.json").read_text())


def _rles(root) -> dict[int, dict]:
    """Each detection's polygons as one compressed RLE (str counts), by pycocotools."""
    gt = COCO(str(root / "gt_dataset.json"))
    rles = {}
    for index, record in enumerate(_detections(root)):
        image = gt.imgs[record["image_id"]]
        parts = mask_utils.frPyObjects(record["segmentation"], image["height"], image["width"])
        rle = mask_utils.merge(parts)
        rles[index] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return rles


def _uncompressed(rle: dict) -> dict:
    """The same mask as uncompressed RLE: run lengths in column-major order, from 0s."""
    flat = mask_utils.decode(rle).flatten(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    return {"size": rle["size"], "counts": ([0] if flat[0] else []) + runs}


# --- scoring --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_bbox_only_results_score_bbox_and_report_segm_not_applicable(backend, tmp_path, capsys):
    root = shared_data("eval-shapes")
    records = _boxes_only(_detections(root))
    path = _write(tmp_path, records, "boxes.json")
    metrics, report = _score(tmp_path, path, root, f"eval.backend={backend}")

    assert set(metrics) == {f"val/bbox_{name}" for name in STAT_NAMES}
    expected = _expected(root)["bbox"]
    np.testing.assert_allclose(_stats(metrics, "bbox"), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_stats(metrics, "bbox"),
                               _pycocotools_stats(root / "gt_dataset.json", records, "bbox"),
                               rtol=0, atol=1e-12)
    assert report["predictions"] == str(path)
    assert report["tasks"]["scored"] == ["bbox"]
    assert "no record of" in report["tasks"]["not_applicable"]["segm"]
    assert "bbox-only" in report["tasks"]["not_applicable"]["segm"]
    assert set(report["ap_per_category"]) == {"bbox"}
    assert report["metrics"] == metrics
    out = capsys.readouterr().out
    assert "COCO bbox (3 images, 9 detections):" in out
    assert f"COCO segm: not applicable: no record of {path} has a segmentation" in out
    assert "COCO segm (" not in out
    assert out.rstrip().endswith(f"val/bbox_mAP = {expected[0]:.4f}")
    assert not (tmp_path / "run" / "coco_instances_results.json").exists()


@pytest.mark.parametrize("form", ["polygons", "compressed RLE", "uncompressed RLE",
                                  "RLE without bbox"])
def test_results_with_segmentations_score_both_tasks(form, tmp_path, capsys):
    root = shared_data("eval-shapes")
    records, rles = _detections(root), _rles(root)
    if form != "polygons":
        records = [r | {"segmentation": rles[i]} for i, r in enumerate(records)]
    if form == "uncompressed RLE":
        records = [r | {"segmentation": _uncompressed(r["segmentation"])} for r in records]
    if form == "RLE without bbox":
        records = [{k: v for k, v in r.items() if k != "bbox"} for r in records]
    metrics, report = _score(tmp_path, _write(tmp_path, records), root)

    expected = _expected(root)
    np.testing.assert_allclose(_stats(metrics, "segm"), expected["segm"], rtol=0, atol=1e-12)
    if form == "RLE without bbox":  # loadRes boxes each mask and takes its area from it
        merged = [{k: v for k, v in r.items() if k != "bbox"} | {"segmentation": rles[i]}
                  for i, r in enumerate(_detections(root))]
        expected["bbox"] = _pycocotools_stats(root / "gt_dataset.json", merged, "bbox")
    np.testing.assert_allclose(_stats(metrics, "bbox"), expected["bbox"], rtol=0, atol=1e-12)
    assert report["tasks"] == {"scored": ["bbox", "segm"], "not_applicable": {}}
    assert set(report["ap_per_category"]) == {"bbox", "segm"}
    assert capsys.readouterr().out.rstrip().endswith(f"val/segm_mAP = {expected['segm'][0]:.4f}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bbox_only_results_on_real_coco_photos_match_pycocotools(backend, tmp_path):
    """coco-sample's original annotations (a crowd region among them) as ground truth;
    detections: its boxes, every other one shifted, with scores in no particular order."""
    root = shared_data("coco-sample")
    gt = json.loads((root / "annotations.json").read_text())
    records = []
    for index, annotation in enumerate(a for a in gt["annotations"] if not a["iscrowd"]):
        x, y, w, h = annotation["bbox"]
        shift = 0.3 * w if index % 2 else 0.0
        records.append({"image_id": annotation["image_id"],
                        "category_id": annotation["category_id"],
                        "bbox": [x + shift, y, w, h], "score": (index * 37 % 101) / 101})
    cfg = compose_config("evaluate", [f"predictions={_write(tmp_path, records)}",
                                      f"eval.backend={backend}",
                                      *_data(root, "annotations.json", root / "images")],
                         tmp_path / "run")
    metrics = evaluate(cfg)
    np.testing.assert_allclose(_stats(metrics, "bbox"),
                               _pycocotools_stats(root / "annotations.json", records, "bbox"),
                               rtol=0, atol=1e-12)
    assert "val/segm_mAP" not in metrics


def test_an_empty_results_list_scores_both_tasks_as_no_detections(tmp_path):
    root = shared_data("eval-shapes")
    metrics, report = _score(tmp_path, _write(tmp_path, []), root)
    assert report["tasks"]["scored"] == ["bbox", "segm"]
    assert metrics["val/bbox_mAP"] == metrics["val/segm_mAP"] == 0.0  # every category has gt


def test_run_cli_hands_a_sweeper_bbox_ap_for_bbox_only_results(tmp_path):
    """run_cli hands a sweeper val/segm_mAP, and val/bbox_mAP where there is no segm."""
    root = shared_data("eval-shapes")
    path = _write(tmp_path, _boxes_only(_detections(root)))
    cfg = compose_config("evaluate", [f"predictions={path}", *_data(root)], tmp_path / "run")
    value = run_cli(evaluate, cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert value == written["val/bbox_mAP"] and "val/segm_mAP" not in written


def _evaluate_py(tmp_path, *overrides) -> subprocess.CompletedProcess:
    env = os.environ | {"INSTSEG_ROOT": str(tmp_path)}
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *overrides,
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_evaluate_py_scores_a_bbox_only_file_end_to_end(tmp_path):
    root = shared_data("eval-shapes")
    path = _write(tmp_path, _boxes_only(_detections(root)), "boxes.json")
    result = _evaluate_py(tmp_path, f"predictions={path}", *_data(root))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert "COCO bbox (3 images, 9 detections):" in lines
    assert (f"COCO segm: not applicable: no record of {path} has a segmentation "
            "(bbox-only results)") in lines
    assert lines[-1] == f"val/bbox_mAP = {_expected(root)['bbox'][0]:.4f}"
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["tasks"]["scored"] == ["bbox"]


# --- errors ---------------------------------------------------------------------------------

def _edit(index: int, **changes):
    """Records of dt_dataset.json (bbox-only) with record `index` changed (None: removed)."""
    def edited(records):
        record = {k: v for k, v in records[index].items() if k not in changes}
        records[index] = record | {k: v for k, v in changes.items() if v is not None}
        return records
    return edited


def _with_rles(edit=None):
    """Records with compressed RLE segmentations, then `edit`."""
    def edited(records, rles):
        records = [r | {"segmentation": rles[i]} for i, r in enumerate(records)]
        return edit(records) if edit else records
    return edited


RECORD_ERRORS = {
    "not an object": (lambda r: r[:3] + [[1, 2, 3]] + r[4:],
                      r"record 3: expected an object with image_id, .* got a json list"),
    "no score": (_edit(3, score=None), r"record 3: missing score \(a record needs"),
    "no ids": (_edit(3, image_id=None, category_id=None),
               r"record 3: missing image_id, category_id \("),
    "no box or mask": (_edit(3, bbox=None), r"record 3: missing bbox or segmentation"),
    "image id a string": (_edit(3, image_id="1"), r"record 3: image_id must be an integer, "
                                                  r"got '1'"),
    "image id unknown": (_edit(3, image_id=999), r"record 3: image_id 999 is not in the "
                                                 r"ground truth"),
    "category id a float": (_edit(3, category_id=2.0), r"record 3: category_id must be an "
                                                       r"integer, got 2.0"),
    "category id unknown": (_edit(3, category_id=99), r"record 3: category_id 99 is not in "
                                                      r"the ground truth"),
    "score a string": (_edit(3, score="high"), r"record 3: score must be a finite number, "
                                               r"got 'high'"),
    "score NaN": (_edit(3, score=float("nan")), r"record 3: score must be a finite number"),
    "bbox of 3": (_edit(3, bbox=[1, 2, 3]), r"record 3: bbox must be \[x, y, width, height\] "
                                            r"\(4 finite numbers\), got \[1, 2, 3\]"),
    "bbox of strings": (_edit(3, bbox=["1", "2", "3", "4"]), r"record 3: bbox must be"),
    "bbox negative": (_edit(3, bbox=[10, 10, -5, 20]), r"record 3: bbox \[10, 10, -5, 20\] "
                                                      r"has a negative width or height"),
    "mixed segmentation": (lambda r: [x | {"segmentation": [[0, 0, 9, 0, 9, 9]]} if i < 3 else x
                                      for i, x in enumerate(r)],
                           r"record 3 has no segmentation but record 0 has one: give every "
                           r"record a segmentation, or none"),
}
SEGMENTATION_ERRORS = {
    "segmentation a string": (_edit(3, segmentation="mask"),
                              r"record 3: segmentation must be an RLE \{size, counts\} or a "
                              r"list of polygons"),
    "polygon of 2 points": (_edit(3, segmentation=[[0, 0, 5, 5]]),
                            r"record 3: segmentation must be"),
    "RLE of another size": (_edit(3, segmentation={"size": [128, 128], "counts": "PP"}),
                            r"record 3: segmentation size \[128, 128\] is not the image's "
                            r"\[height, width\] = \[256, 256\]"),
    "RLE counts bytes repr": (_edit(3, segmentation={"size": [256, 256], "counts": "b'PP'"}),
                              r"record 3: segmentation counts must be a compressed RLE string"),
    "RLE runs short": (_edit(3, segmentation={"size": [256, 256], "counts": [0, 10]}),
                       r"record 3: segmentation counts .* summing to height x width = 65536"),
    "mixed bbox": (_edit(3, bbox=None),
                   r"record 3 has no bbox but record 0 has one: give every record a bbox, "
                   r"or none"),
}


@pytest.mark.parametrize("case", RECORD_ERRORS)
def test_record_errors_name_the_file_and_record(case, tmp_path):
    root = shared_data("eval-shapes")
    edit, message = RECORD_ERRORS[case]
    path = _write(tmp_path, edit(_boxes_only(_detections(root))), "boxes.json")
    with pytest.raises(InstsegError, match=rf"^{re.escape(str(path))}: {message}"):
        _score(tmp_path, path, root)


@pytest.mark.parametrize("case", SEGMENTATION_ERRORS)
def test_segmentation_errors_name_the_file_and_record(case, tmp_path):
    root = shared_data("eval-shapes")
    edit, message = SEGMENTATION_ERRORS[case]
    records = _with_rles(edit)(_boxes_only(_detections(root)), _rles(root))
    path = _write(tmp_path, records, "masks.json")
    with pytest.raises(InstsegError, match=rf"^{re.escape(str(path))}: {message}"):
        _score(tmp_path, path, root)


@pytest.mark.parametrize("case, content, message", [
    ("not json", "[{'image_id': 1}]", r"{path}: not a json file \(Expecting"),
    ("not utf-8", b"\xff\xfe[]", r"{path}: not a json file"),
    ("not a list", '{"annotations": []}', r"{path}: expected a COCO results list of "
                                          r"detections \(.*\), got a json dict"),
])
def test_file_errors_name_the_file(case, content, message, tmp_path):
    root = shared_data("eval-shapes")
    path = tmp_path / "results.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InstsegError, match="^" + message.format(path=re.escape(str(path)))):
        _score(tmp_path, path, root)


def test_a_missing_file_is_named(tmp_path):
    root = shared_data("eval-shapes")
    missing = re.escape(str(tmp_path / "no.json"))
    with pytest.raises(InstsegError, match=rf"^predictions file not found: {missing}$"):
        _score(tmp_path, tmp_path / "no.json", root)


def test_predictions_without_a_data_config_is_an_error(tmp_path):
    path = _write(tmp_path, [])
    cfg = compose_config("evaluate", [f"predictions={path}"], tmp_path / "run")
    named = re.escape(str(path))
    with pytest.raises(InstsegError, match=rf"^predictions={named} needs data=\.\.\. for the "
                                           r"ground truth"):
        evaluate(cfg)


def test_evaluate_py_reports_a_bad_record_in_one_line(tmp_path):
    root = shared_data("eval-shapes")
    records = _edit(3, category_id=99)(_boxes_only(_detections(root)))
    path = _write(tmp_path, records, "boxes.json")
    result = _evaluate_py(tmp_path, f"predictions={path}", *_data(root))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: record 3: category_id 99 is not in the ground truth")
