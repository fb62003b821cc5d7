"""Exported models (ONNX run by ONNX Runtime and by OpenVINO, TorchScript) return the
Predictor's detections: boxes to 1e-2 px, scores to 1e-4, masks to IoU >= 0.99, at sizes
other than the one traced, and with no detections at all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2.functional import resize

from instseg import configs
from instseg.data.categories import CategoryMap
from instseg.data.images import read_rgb
from instseg.export import export, load_exported
from instseg.inference.predictor import Predictor
from instseg.models.build import instantiate_module
from instseg.structures.detections import Detections
from instseg.tasks.export import export_model
from instseg.utils.errors import InstsegError
from tests.conftest import compose_config, shared_data
from tests.parity import assert_same_detections

RUNTIMES = [("onnxruntime", "onnx"), ("openvino", "onnx"), ("torchscript", "torchscript")]
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


@pytest.fixture(scope="module")
def tiny_exports(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The tiny trained model exported, dynamic, as each format: ONNX by the task, and
    TorchScript by the installed instseg-export command, as a user runs it."""
    root = tmp_path_factory.mktemp("exports")
    export_model(compose_config("export", [f"ckpt={tiny_checkpoint}"], root))
    script = Path(sys.executable).parent / "instseg-export"
    done = subprocess.run([str(script), f"ckpt={tiny_checkpoint}", "format=torchscript",
                           f"output={root / 'model.pt'}", f"hydra.run.dir={root / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "exported torchscript (dynamic size" in done.stdout
    return {"onnx": root / "model.onnx", "torchscript": root / "model.pt"}


def _test_images(tiny_shapes: Path) -> list[torch.Tensor]:
    """Three validation images at the trained size, and two at other sizes (the traced
    example is 480x640)."""
    images = [read_rgb(p) for p in sorted((tiny_shapes / "val").glob("*.png"))[:3]]
    return images + [resize(images[0], [120, 80]), resize(images[1], [64, 100])]


@pytest.mark.parametrize(("backend", "export_format"), RUNTIMES)
def test_exported_quickstart_model_returns_the_predictors_detections(
        backend, export_format, tiny_exports, tiny_checkpoint, tiny_shapes):
    reference = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.0, device="cpu")
    exported = Predictor.from_exported(tiny_exports[export_format], backend,
                                       score_threshold=0.0)
    assert exported.names == reference.names
    compared = 0
    for image in _test_images(tiny_shapes):
        compared += assert_same_detections(exported(image), reference(image), box_atol=1e-2,
                                           score_atol=1e-4, threshold=0.05)
    assert compared > 100


@pytest.mark.parametrize(("backend", "export_format"), RUNTIMES)
def test_no_detections_come_back_empty(backend, export_format, tiny_checkpoint,
                                         tiny_shapes, tmp_path):
    """Exported with an in-graph threshold above a black image's best score but below a
    validation image's, so the graph has both cases."""
    reference = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.0, device="cpu")
    black = torch.zeros(3, 96, 96, dtype=torch.uint8)
    image = _test_images(tiny_shapes)[0]
    threshold = reference(black).scores.max().item() + 1e-3
    assert reference(image).scores.max().item() > threshold + 1e-3
    cfg = compose_config("export", [f"ckpt={tiny_checkpoint}", f"format={export_format}",
                                    f"box_score_thresh={threshold}"], tmp_path)
    export_model(cfg)
    exported = Predictor.from_exported(tmp_path / f"model{SUFFIX[export_format]}", backend,
                                       score_threshold=0.0)
    empty = exported(black)
    assert len(empty) == 0 and tuple(empty.masks.shape) == (0, 96, 96)
    assert empty.records() == []
    kept = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=threshold, device="cpu")
    assert assert_same_detections(exported(image), kept(image), box_atol=1e-2,
                                  score_atol=1e-4, threshold=threshold) > 0


def test_fixed_size_export_takes_its_size_only(tiny_checkpoint, tiny_shapes, tmp_path):
    cfg = compose_config("export", [f"ckpt={tiny_checkpoint}", "dynamic=false",
                                    "size=[96,96]"], tmp_path)
    export_model(cfg)
    model = load_exported(tmp_path / "model.onnx")
    assert model.metadata["dynamic"] is False and model.metadata["input_size"] == [96, 96]
    image = _test_images(tiny_shapes)[0]
    reference = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.0, device="cpu")
    assert_same_detections(Predictor(model, model.categories, score_threshold=0.0)(image),
                           reference(image), box_atol=1e-2, score_atol=1e-4, threshold=0.05)
    with pytest.raises(InstsegError, match="dynamic=false for 96x96 images; this image is "
                                           "120x80"):
        model([resize(image, [120, 80]).float() / 255])


def test_metadata_names_the_label_space(tiny_exports, tiny_checkpoint):
    names = tuple(Predictor.from_checkpoint(tiny_checkpoint).names.values())
    for export_format, path in tiny_exports.items():
        model = load_exported(path)
        assert model.metadata["format"] == export_format
        assert model.categories.names == names


def test_evaluate_scores_the_exported_model_as_its_checkpoint(tiny_exports, tiny_checkpoint,
                                                              tmp_path, capsys):
    from instseg.tasks.evaluate import evaluate

    checkpoint = evaluate(compose_config("evaluate", [f"ckpt={tiny_checkpoint}"],
                                         tmp_path / "ckpt"))
    printed = capsys.readouterr().out.splitlines()[-1]
    for backend, export_format in RUNTIMES:
        out = tmp_path / backend
        metrics = evaluate(compose_config("evaluate", [
            f"exported={tiny_exports[export_format]}", f"backend={backend}", "data=shapes",
            *_recorded_data_overrides(tiny_checkpoint)], out))
        line = capsys.readouterr().out.splitlines()[-1]
        assert line.split(" (")[0] == printed.split(" (")[0], (line, printed)
        for name in ("val/segm_mAP", "val/bbox_mAP"):
            assert metrics[name] == pytest.approx(checkpoint[name], abs=1e-4), name
        assert json.loads((out / "metrics.json").read_text())["backend"] == backend


def _recorded_data_overrides(checkpoint: Path) -> list[str]:
    """data=shapes overrides that rebuild the checkpoint's own recorded data config."""
    from instseg.checkpoints.record import load_checkpoint

    record, _ = load_checkpoint(checkpoint)
    data = record["config"]["data"]
    keys = ("root", "num_train", "num_val", "image_size", "max_objects", "seed")
    return [f"data.{key}={data[key]}" for key in keys] + ["data.num_workers=0"]


def test_a_missing_runtime_names_the_extra(tiny_exports, tiny_checkpoint, monkeypatch,
                                           tmp_path):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    with pytest.raises(InstsegError, match=r'openvino needs the openvino package: pip install '
                                           r'-e "\.\[export\]"'):
        load_exported(tiny_exports["onnx"], "openvino")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(InstsegError, match=r"format=onnx needs the onnx package"):
        export_model(compose_config("export", [f"ckpt={tiny_checkpoint}"], tmp_path))


def test_wrong_files_are_clear_errors(tiny_exports, tmp_path):
    from instseg.tasks.evaluate import evaluate

    with pytest.raises(InstsegError, match=r"model\.pt: not an ONNX file onnxruntime can read"):
        load_exported(tiny_exports["torchscript"], "onnxruntime")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InstsegError, match="junk.onnx"):
        load_exported(junk, "openvino")
    with pytest.raises(InstsegError, match="no exported model there"):
        load_exported(tmp_path / "absent.onnx")
    with pytest.raises(InstsegError, match="leave tta unset"):
        Predictor.from_exported(tiny_exports["onnx"], tta=True)
    with pytest.raises(InstsegError, match="leave device unset"):
        Predictor.from_exported(tiny_exports["onnx"], device="cuda")
    with pytest.raises(InstsegError, match="leave eval.tta unset"):
        evaluate(compose_config("evaluate", [f"exported={tiny_exports['onnx']}", "data=shapes",
                                             "eval.tta=true"], tmp_path))
    with pytest.raises(InstsegError, match="needs ckpt=PATH, or model="):
        export_model(compose_config("export", [], tmp_path))
    with pytest.raises(InstsegError, match="format='tflite'"):
        export_model(compose_config("export", ["format=tflite"], tmp_path))


def _confident_r50(categories: CategoryMap):
    """R50-FPN with seeded random weights at 320-512 px, scaled where random weights are
    unlike a trained model's. Their mask probabilities sit near 0.5 everywhere, where any
    rounding flips pixels: the mask classifier is scaled up so that masks are as decided as
    a trained model's. Their box regressors move boxes by hundreds of pixels, which turns
    rounding into 0.05 px, a row of a thin mask: the RPN's and the box head's are scaled
    down to a trained model's few pixels."""
    torch.manual_seed(0)
    cfg = configs.compose("demo", ["model=r50_fpn", "model.weights=null"])
    net = instantiate_module(configs.model_config(cfg, categories.num_classes)).net.eval()
    net.transform.min_size, net.transform.max_size = (320,), 512
    with torch.no_grad():
        net.roi_heads.mask_predictor.mask_fcn_logits.weight.mul_(20)
        net.roi_heads.box_predictor.bbox_pred.weight.mul_(0.1)
        net.rpn.head.bbox_pred.weight.mul_(0.1)
    return net


@pytest.mark.slow
def test_exported_r50_fpn_returns_the_predictors_detections(tmp_path):
    categories = CategoryMap(tuple(range(1, 91)), tuple(f"class {i}" for i in range(1, 91)))
    paths = {fmt: export(_confident_r50(categories), categories,
                         tmp_path / f"r50{SUFFIX[fmt]}", fmt) for fmt in SUFFIX}
    reference = Predictor(_confident_r50(categories), categories, score_threshold=0.0,
                          device="cpu")
    photos = sorted(shared_data("demo-images").glob("*.jpg"))[:2]  # 600x900 and 600x906
    images = [read_rgb(photo) for photo in photos]
    images.append(resize(images[0], [450, 300]))  # portrait (traced: 480x640 landscape)
    expected = [reference(image) for image in images]
    for backend, export_format in RUNTIMES:
        exported = Predictor.from_exported(paths[export_format], backend, score_threshold=0.0)
        # Random weights give many boxes overlapping near NMS's IoU of 0.5, where rounding
        # may flip a suppression, which can free one more box: two detections per image
        # may differ (a trained model's may not: the quickstart tests above allow none).
        compared = sum(assert_same_detections(exported(image), wanted, box_atol=0.1,
                                              score_atol=1e-3, threshold=0.05, cap=100,
                                              max_unmatched=2)
                       for image, wanted in zip(images, expected, strict=True))
        assert compared > 200, backend


@pytest.mark.parametrize(("backend", "export_format"), [("openvino", "onnx")])
def test_demo_writes_the_checkpoints_overlays_and_records_from_an_exported_file(
        backend, export_format, tiny_exports, tiny_checkpoint, tiny_shapes, tmp_path):
    from instseg.tasks.demo import demo

    photos = sorted((tiny_shapes / "val").glob("*.png"))[:2]
    inputs = f"input=[{','.join(str(p) for p in photos)}]"
    runs = {}
    for name, source in (("ckpt", f"ckpt={tiny_checkpoint}"),
                         ("exported", f"exported={tiny_exports[export_format]}")):
        out = tmp_path / name
        demo(compose_config("demo", [inputs, source, f"backend={backend}",
                                     "score_threshold=0.1", f"output_dir={out}"], out))
        runs[name] = out
    for photo in photos:
        height, width = read_rgb(photo).shape[1:]
        ours, theirs = (Detections.from_records(
            json.loads((runs[n] / f"{photo.stem}.json").read_text()), height, width)
            for n in ("exported", "ckpt"))
        assert assert_same_detections(ours, theirs, box_atol=1e-2, score_atol=1e-4,
                                      threshold=0.1) > 0
        overlays = [read_rgb(runs[n] / f"{photo.stem}.png") for n in ("exported", "ckpt")]
        differing = (overlays[0] != overlays[1]).any(0).float().mean().item()
        assert differing < 0.01  # the masks agree to IoU >= 0.99, the rest is drawn alike
