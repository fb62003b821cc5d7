"""The optimised inference path (instseg.inference.optimize.optimize_for_inference, what the
Predictor, the demo and evaluate.py use) gives the plain torchvision net's detections:
same count and labels, boxes and scores within 1e-3, binary masks with IoU >= 0.99.
Not timed: benchmarks/bench_inference.py measures the speed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.ops.misc import FrozenBatchNorm2d

from instseg.checkpoints.build import module_from_checkpoint
from instseg.inference.optimize import fold_batch_norms
from instseg.inference.predictor import Predictor
from instseg.inference.roi_pooling import SparseRoIAlign
from instseg.inference.winograd import WinogradConv2d
from tests.conftest import shared_data
from tests.parity import mask_ious


@pytest.mark.parametrize("size", [96, 320])
def test_optimised_predictor_matches_the_plain_torchvision_net(tiny_checkpoint, size):
    module, categories, _ = module_from_checkpoint(tiny_checkpoint)
    net = module.net.eval()
    net.transform.min_size, net.transform.max_size = (size,), size
    photos = sorted(shared_data("coco-sample", "images").glob("*.jpg"))[:2]
    from instseg.data.images import read_rgb

    images = [read_rgb(path).float() / 255 for path in photos]
    with torch.no_grad():
        plain = copy.deepcopy(net)(images)
    predictor = Predictor(copy.deepcopy(net), categories, score_threshold=0.0, device="cpu")
    optimised = predictor.net
    assert isinstance(optimised.roi_heads.box_roi_pool, SparseRoIAlign)
    assert any(isinstance(m, WinogradConv2d) for m in optimised.backbone.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimised.modules())
    ours = predictor.predict(images)
    assert sum(len(o) for o in ours) > 0
    for expected, got in zip(plain, ours, strict=True):
        assert len(expected["scores"]) == len(got)
        assert categories.to_category_ids(expected["labels"]) == got.category_ids.tolist()
        torch.testing.assert_close(got.boxes, expected["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, expected["scores"], atol=1e-3, rtol=0)
        assert mask_ious(expected["masks"][:, 0] > 0.5, got.masks).min() >= 0.99


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, FrozenBatchNorm2d])
def test_batch_norms_fold_into_the_convolutions_before_them(norm):
    torch.manual_seed(0)
    body = _with_random_norms(resnet18(norm_layer=norm).eval())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = body(x)
        assert fold_batch_norms(body) == 20  # stem, 8 blocks x 2, 3 downsamples
        assert not any(isinstance(m, norm) for m in body.modules())
        torch.testing.assert_close(body(x), expected, atol=1e-4, rtol=1e-4)


def test_a_training_batch_norm_is_left_alone():
    block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    assert fold_batch_norms(block.train()) == 0
    assert isinstance(block[1], nn.BatchNorm2d)


def test_half_precision_inference_is_refused_on_a_cpu_with_a_clear_message(tiny_checkpoint):
    from instseg.utils.errors import InstsegError

    module, categories, _ = module_from_checkpoint(tiny_checkpoint)
    with pytest.raises(InstsegError, match="needs a CUDA device"):
        Predictor(module.net, categories, device="cpu", precision="16-mixed")
    with pytest.raises(InstsegError, match="expected one of"):
        Predictor(module.net, categories, device="cpu", precision="fp8")


@pytest.mark.parametrize("model", ["mobilenet_v3_fpn", "r50_fpn", "r50_fpn_v2", "small_cpu"])
def test_every_optimised_part_of_the_zoo_models_computes_what_it_replaces(model, tmp_path):
    """Random weights give near-tied detections, so the parts are compared, not detections:
    backbone + FPN (folded norms, Winograd), RPN head, mask head (Winograd), RoI pooling."""
    from instseg.inference.optimize import optimize_for_inference
    from instseg.models.forward import predict_unpasted
    from tests.models.test_zoo import build

    torch.manual_seed(0)
    plain = _with_random_norms(build(tmp_path, model, 5).eval())
    net = optimize_for_inference(copy.deepcopy(plain))
    pixels = torch.rand(1, 3, 128, 160)
    heads, plain_heads = net.roi_heads, plain.roi_heads
    with torch.no_grad():
        expected, got = plain.backbone(pixels), net.backbone(
            pixels.contiguous(memory_format=torch.channels_last))
        for name in expected:
            _assert_relatively_close(got[name], expected[name])
        for ours, theirs in zip(net.rpn.head(list(got.values())),
                                plain.rpn.head(list(expected.values())), strict=True):
            for level_ours, level_theirs in zip(ours, theirs, strict=True):
                _assert_relatively_close(level_ours, level_theirs)
        boxes = [torch.tensor([[4.0, 6, 60, 90], [30, 20, 150, 120], [0, 0, 160, 128]])]
        pooled = plain_heads.mask_roi_pool(expected, boxes, [(128, 160)])
        _assert_relatively_close(heads.mask_roi_pool(got, boxes, [(128, 160)]), pooled)
        _assert_relatively_close(heads.mask_head(pooled), plain_heads.mask_head(pooled))
    (detections,) = predict_unpasted(net, [torch.rand(3, 100, 120)])
    assert detections["mask_probs"].shape[1:] == (1, 28, 28)
    assert detections["image_size"] == (100, 120)


def _with_random_norms(module: nn.Module) -> nn.Module:
    """BatchNorm statistics unlike the defaults (which make a norm nearly the identity), so
    that a wrong fold shows."""
    with torch.no_grad():
        for norm in module.modules():
            if isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    return module


def _assert_relatively_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().item() or 1.0
    torch.testing.assert_close(got, expected, atol=1e-4 * scale, rtol=0)
