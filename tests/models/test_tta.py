"""Test-time augmentation (instseg.models.tta): one augmentation is the plain prediction, the
flip pair is symmetric, and evaluate.py and the Predictor run it."""

from __future__ import annotations

import json

import torch

from instseg.checkpoints.build import module_from_checkpoint
from instseg.data.images import read_rgb
from instseg.inference.predictor import Predictor
from instseg.models import tta as tta_module
from instseg.models.forward import predict_unpasted
from instseg.tasks.evaluate import evaluate
from tests.conftest import compose_config


def _net_and_images(tiny_checkpoint, tiny_shapes):
    module, _, _ = module_from_checkpoint(tiny_checkpoint)
    net = module.net.eval()
    net.roi_heads.score_thresh = 0.01  # enough detections of a barely trained model
    paths = sorted((tiny_shapes / "val").glob("*.png"))[:3]
    return net, [read_rgb(p).float() / 255 for p in paths]


def test_one_scale_without_flip_is_the_plain_prediction(tiny_checkpoint, tiny_shapes):
    net, images = _net_and_images(tiny_checkpoint, tiny_shapes)
    plain = predict_unpasted(net, images)
    augmented = tta_module.TestTimeAugmentation(scales=(1.0,), flip=False)(net, images)
    for ours, theirs in zip(augmented, plain, strict=True):
        assert len(theirs["boxes"]) > 0
        for key in ("boxes", "scores", "labels", "mask_probs"):
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-5)
        assert ours["image_size"] == theirs["image_size"]


def test_the_flip_pair_gives_mirrored_detections_of_a_mirrored_image(tiny_checkpoint,
                                                                      tiny_shapes):
    """{image, flipped image} is the same pair of inputs for an image and its mirror, so
    their merged detections are mirror images of each other."""
    net, images = _net_and_images(tiny_checkpoint, tiny_shapes)
    tta = tta_module.TestTimeAugmentation(scales=(0.8, 1.0), flip=True)
    (original,), (mirrored,) = tta(net, images[:1]), tta(net, [images[0].flip(-1)])
    width = images[0].shape[-1]
    order = torch.argsort(mirrored["scores"], descending=True, stable=True)
    assert len(original["boxes"]) == len(mirrored["boxes"]) > 0
    expected = original["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1, 1, -1, 1]) + \
        torch.tensor([width, 0, width, 0])
    torch.testing.assert_close(mirrored["boxes"][order], expected, rtol=0, atol=1e-3)
    torch.testing.assert_close(mirrored["mask_probs"][order], original["mask_probs"].flip(-1),
                               rtol=0, atol=1e-5)
    assert torch.equal(mirrored["labels"][order], original["labels"])


def test_evaluate_and_predictor_run_tta(tiny_checkpoint, tiny_shapes, tmp_path):
    metrics = evaluate(compose_config("evaluate", [f"ckpt={tiny_checkpoint}", "eval.tta=true"],
                                      tmp_path))
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["test_time_augmentation"] == {"scales": [0.8, 1.0, 1.2], "flip": True}
    assert 0 <= metrics["val/segm_mAP"] <= 1
    predictor = Predictor.from_checkpoint(tiny_checkpoint, score_threshold=0.05, tta=True)
    detections = predictor(sorted((tiny_shapes / "val").glob("*.png"))[0])
    assert detections.masks.dtype == torch.bool and len(detections.records()) == len(detections)
