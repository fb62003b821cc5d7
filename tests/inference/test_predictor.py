"""Predictor: the detections evaluate.py writes, from any image type."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype

from instseg.data.images import read_rgb
from instseg.inference.predictor import Predictor
from instseg.tasks.evaluate import evaluate
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.0, device="cpu")


def test_predictor_returns_the_detections_evaluate_writes(predictor, tiny_checkpoint,
                                                         tiny_shapes, tmp_path):
    evaluate(compose_config("evaluate", [f"ckpt={tiny_checkpoint}"], tmp_path))
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    annotations = json.loads((tiny_shapes / "annotations/instances_val.json").read_text())
    for info in annotations["images"][:3]:
        instances = predictor(tiny_shapes / "val" / info["file_name"])
        expected = [r for r in written if r["image_id"] == info["id"]]
        assert len(instances.records()) == len(expected) > 0
        for ours, theirs in zip(instances.records(), expected, strict=True):
            assert ours["category_id"] == theirs["category_id"]
            assert ours["segmentation"] == theirs["segmentation"]
            np.testing.assert_allclose(ours["bbox"], theirs["bbox"], rtol=0, atol=1e-3)
            assert ours["score"] == pytest.approx(theirs["score"], abs=1e-5)


def test_same_instances_from_path_pil_array_and_tensors(predictor, tiny_shapes):
    path = sorted((tiny_shapes / "val").glob("*.png"))[0]
    pixels = read_rgb(path)
    scaled = to_dtype(pixels, torch.float32, scale=True)  # as the datasets scale
    inputs = [path, str(path), Image.open(path), pixels.permute(1, 2, 0).numpy(), pixels,
              scaled]
    results = [predictor(image) for image in inputs]
    for result in results[1:]:
        assert result.records() == results[0].records()
    first = results[0]
    assert first.masks.dtype == torch.bool and tuple(first.masks.shape[1:]) == (96, 96)
    assert len(first.class_names) == len(first) == len(first.boxes)


def test_threshold_and_render(tiny_checkpoint, tiny_shapes):
    path = sorted((tiny_shapes / "val").glob("*.png"))[0]
    everything = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.0)(path)
    confident = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.5)
    instances = confident(path)
    assert len(instances) == int((everything.scores >= 0.5).sum())
    overlay = confident.render(path, everything)
    assert overlay.dtype == torch.uint8 and tuple(overlay.shape) == (3, 96, 96)
    assert not torch.equal(overlay, read_rgb(path))  # something was drawn


def test_bad_images_are_clear_errors(predictor, tmp_path):
    from instseg.utils.errors import InstsegError

    with pytest.raises(InstsegError, match="no such image file"):
        predictor(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="HxWx3"):
        predictor(np.zeros((4, 4), dtype=np.uint8))
