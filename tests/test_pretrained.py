"""The paths that start from torchvision's published weights, run end to end on planted files.

The weight files are stand-ins with torchvision's exact file names, keys and shapes under a
temporary TORCH_HOME (tests/weights_cache.py); every download fails (tests/conftest.py). So
these run the user's code path: the COCODemo-style demo without ckpt=, Predictor.from_pretrained,
evaluate.py with model.weights=coco, fine-tuning from COCO, and ImageNet backbones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision.io import decode_image
from torchvision.models import get_weight

from instseg.configs import model_config
from instseg.data.images import read_rgb
from instseg.inference.predictor import Predictor
from instseg.models.build import instantiate_module
from instseg.tasks.evaluate import evaluate
from instseg.tasks.train import train
from tests.conftest import ROOT, compose_config, shared_data, tiny_train_overrides
from tests.models.test_weights import PREDICTOR_KEYS
from tests.weights_cache import WeightsCache

COCO_WEIGHTS = {"r50_fpn": "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
                "r50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"}
# Every backbone arch of conf/model/ (test_every_model_config_is_covered keeps this whole).
IMAGENET_BACKBONES = {"small_cpu": "ResNet18_Weights.IMAGENET1K_V1",
                      "r50_fpn": "ResNet50_Weights.IMAGENET1K_V1",
                      "r50_fpn_v2": "ResNet50_Weights.IMAGENET1K_V1",
                      "r101_fpn": "ResNet101_Weights.IMAGENET1K_V1",
                      "x101_32x8d_fpn": "ResNeXt101_32X8D_Weights.IMAGENET1K_V1",
                      "mobilenet_v3_fpn": "MobileNet_V3_Large_Weights.IMAGENET1K_V1"}


@pytest.fixture
def torch_home(weights_cache: WeightsCache, monkeypatch) -> WeightsCache:
    monkeypatch.setenv("TORCH_HOME", str(weights_cache.root))
    return weights_cache


@pytest.mark.slow
def test_pretrained_demo_writes_an_overlay_for_every_photo(torch_home, tmp_path):
    """`instseg-demo input=<folder>` without ckpt=: the COCODemo scenario, as a user runs it."""
    torch_home.plant(COCO_WEIGHTS["r50_fpn"])
    photos = sorted(shared_data("demo-images").glob("*.jpg"))[:2]  # 800 px, ~4 s each
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    script = os.path.join(os.path.dirname(sys.executable), "instseg-demo")
    result = subprocess.run(
        [script, f"input={folder}", f"output_dir={tmp_path}/out", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert "loaded MaskRCNN_ResNet50_FPN_Weights.COCO_V1 (all 307 keys)" in output
    names = get_weight(COCO_WEIGHTS["r50_fpn"]).meta["categories"]  # index = COCO id
    assert "demo: 2 inputs" in result.stdout
    for photo in photos:
        height, width = read_rgb(photo).shape[1:]
        overlay = decode_image(str(tmp_path / "out" / f"{photo.stem}.png"))
        assert tuple(overlay.shape) == (3, height, width)
        records = json.loads((tmp_path / "out" / f"{photo.stem}.json").read_text())
        assert records, photo.name  # the planted weights find 'person' everywhere
        for record in records:
            assert mask_utils.decode(record["segmentation"]).shape == (height, width)
            assert record["score"] >= 0.7  # COCODemo's threshold, the demo's default
    summary = json.loads((tmp_path / "out" / "demo_summary.json").read_text())
    assert summary["categories"] == [{"id": i, "name": n} for i, n in enumerate(names) if i]
    assert len(summary["inputs"]) == len(photos) and not summary["failed"]


@pytest.mark.parametrize("model", sorted(COCO_WEIGHTS))
def test_from_pretrained_holds_the_file_and_predicts_as_torchvision_runs_it(model, torch_home):
    """Predictor.from_pretrained(model): the net holds every tensor of torchvision's file;
    unoptimised, it detects what torchvision's own forward pass of that net detects, with COCO
    ids and the metadata's names, masks at image size.

    (Not compared with torchvision's builder: its FrozenBatchNorm2d rounds differently from
    the BatchNorm2d of conf/model, and random weights amplify that into other NMS ties.)"""
    enum = get_weight(COCO_WEIGHTS[model])
    torch_home.plant(COCO_WEIGHTS[model])
    # 480 px instead of 800 (the model's resize, an option of the Predictor): half the time.
    predictor = Predictor.from_pretrained(model, optimize=False, score_threshold=0.7,
                                          min_size=480, max_size=800)
    published = torch.load(torch_home.path(COCO_WEIGHTS[model]), weights_only=True)
    state = predictor.net.state_dict()
    assert all(torch.equal(state[k], published[k]) for k in published)

    for top_n in (predictor.net.rpn._pre_nms_top_n, predictor.net.rpn._post_nms_top_n):
        top_n["testing"] = 200  # 1000 proposals in the file's config; both paths share it
    image = read_rgb(sorted(shared_data("demo-images").glob("*.jpg"))[0])
    ours = predictor(image)
    with torch.no_grad():
        expected = predictor.net([image.float() / 255])[0]  # torchvision's MaskRCNN.forward
    keep = expected["scores"] >= 0.7
    assert len(ours) == int(keep.sum()) > 0
    # Same detections to rounding (the two runs order some floating-point sums differently).
    torch.testing.assert_close(ours.boxes, expected["boxes"][keep], atol=0.01, rtol=1e-4)
    torch.testing.assert_close(ours.scores, expected["scores"][keep], atol=1e-4, rtol=1e-4)
    assert ours.category_ids.tolist() == expected["labels"][keep].tolist()  # COCO ids
    assert ours.class_names == [enum.meta["categories"][i] for i in ours.category_ids]
    assert tuple(ours.masks.shape[1:]) == tuple(image.shape[1:])
    torch_masks = expected["masks"][keep, 0] > 0.5
    assert (ours.masks != torch_masks).float().mean() < 1e-3  # pasting rounds differently


@pytest.mark.slow
def test_evaluate_with_coco_weights_writes_coco_category_ids(torch_home, tmp_path, caplog):
    """`python evaluate.py model=r50_fpn model.weights=coco data=coco_format` on real COCO
    photos: the results json carries COCO category ids, scored against the json's; the
    detections of torchvision's 'N/A' outputs are counted and left out of it."""
    torch_home.plant(COCO_WEIGHTS["r50_fpn"])
    root = shared_data("coco-sample")
    images, annotations = root / "images", root / "annotations.json"
    cfg = compose_config("evaluate", [
        "model=r50_fpn", "model.weights=coco", "data=coco_format", "data.num_workers=0",
        f"data.train_images={images}", f"data.val_images={images}",
        f"data.train_annotations={annotations}", f"data.val_annotations={annotations}",
        "model.net.min_size=480", "model.net.max_size=800",  # 800 px: twice the time
        "trainer.accelerator=cpu"], tmp_path)
    with caplog.at_level("WARNING", logger="instseg.evaluation.coco"):
        metrics = evaluate(cfg)
    assert 0 <= metrics["val/segm_mAP"] <= 1 and 0 <= metrics["val/bbox_mAP"] <= 1
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    ground_truth = json.loads(annotations.read_text())
    assert {r["image_id"] for r in results} <= {i["id"] for i in ground_truth["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in ground_truth["categories"]}
    assert 1 in {r["category_id"] for r in results}  # person: COCO id 1, torchvision's label 1
    # The planted weights' random logits put some detections on 'N/A' outputs (COCO id 71 ...).
    assert "detections of labels that are no category of the ground truth" in caplog.text


def test_fine_tuning_from_coco_weights_logs_the_reinitialised_predictor(torch_home, tiny_shapes,
                                                                       tmp_path, caplog):
    """model=r50_fpn model.weights=coco on the 4 shape classes: every weight but the
    class-dependent predictor layers comes from the file, and the log names those layers."""
    torch_home.plant(COCO_WEIGHTS["r50_fpn"])
    overrides = [o for o in tiny_train_overrides(tiny_shapes) if not o.startswith("model.")]
    cfg = compose_config("train", [
        *overrides, "model=r50_fpn", "model.weights=coco", "model.net.min_size=96",
        "model.net.max_size=96", "trainer.max_steps=1", "trainer.limit_val_batches=0",
        "logger=none", "callbacks=none"], tmp_path)
    with caplog.at_level(logging.INFO, logger="instseg.models.weights"):
        train(cfg)
    logged = next(r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage())
    assert logged.startswith("loaded MaskRCNN_ResNet50_FPN_Weights.COCO_V1; re-initialised")
    assert {k.strip() for k in logged.split(":", 1)[1].split(",")} == PREDICTOR_KEYS


def test_every_model_config_is_covered():
    configs = {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")}
    assert set(IMAGENET_BACKBONES) == configs


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
@pytest.mark.parametrize("model", sorted(IMAGENET_BACKBONES))
def test_imagenet_backbone_weights_load_into_every_model(model, norm, torch_home, tmp_path):
    """model.net.backbone.weights=IMAGENET1K_V1 (with frozen or trainable BatchNorm): the
    body holds the published file's tensors."""
    name = IMAGENET_BACKBONES[model]
    torch_home.plant(name)
    cfg = compose_config("train", [f"model={model}", "model.net.backbone.weights=IMAGENET1K_V1",
                                   f"model.net.backbone.norm={norm}"], tmp_path)
    body = instantiate_module(model_config(cfg, num_classes=5)).net.backbone.body
    published = torch.load(torch_home.path(name), weights_only=True)
    state = body.state_dict()
    loaded = [k for k in state if not k.endswith("num_batches_tracked")]
    # MobileNet's body is the classifier's `features`; a ResNet's is the classifier itself.
    prefix = "features." if model.startswith("mobilenet") else ""
    assert loaded and all(torch.equal(state[k], published[prefix + k]) for k in loaded)
