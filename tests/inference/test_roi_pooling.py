"""SparseRoIAlign pools what torchvision's MultiScaleRoIAlign pools, to summation order."""

from __future__ import annotations

import torch
from torchvision.ops import MultiScaleRoIAlign

from instseg.inference.roi_pooling import SparseRoIAlign


def _features(batch: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {str(i): torch.rand(batch, 8, 64 // 2**i, 80 // 2**i).contiguous(
        memory_format=torch.channels_last) for i in range(4)}


def _boxes(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([300.0, 240.0])
    size = torch.rand(count, 2, generator=generator) * 200 + 0.1
    return torch.cat([corner, corner + size], dim=1)


def _both(features, boxes, image_shapes, **pool_args):
    pool = MultiScaleRoIAlign(list(features), **pool_args)
    expected = pool(features, boxes, image_shapes)
    with torch.inference_mode():
        got = SparseRoIAlign(MultiScaleRoIAlign(list(features), **pool_args))(
            features, boxes, image_shapes)
    return got, expected


def test_every_level_and_image_matches_torchvision():
    features = _features(batch=2)
    boxes = [_boxes(300, 1), _boxes(120, 2)]  # tiny to larger than the image: every level
    got, expected = _both(features, boxes, [(256, 320), (256, 320)], output_size=7,
                          sampling_ratio=2)
    assert got.shape == expected.shape == (420, 8, 7, 7)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_borders_and_boxes_outside_the_map():
    features = _features()
    boxes = [torch.tensor([[-50.0, -50, 10, 10], [0, 0, 320, 256], [310, 250, 330, 270],
                           [400, 300, 500, 400], [5, 5, 5, 5], [-20, 100, -1, 120]])]
    got, expected = _both(features, boxes, [(256, 320)], output_size=(14, 14),
                          sampling_ratio=3)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_no_boxes_and_adaptive_sampling_fall_back_or_return_empty():
    features = _features()
    got, expected = _both(features, [torch.zeros(0, 4)], [(256, 320)], output_size=7,
                          sampling_ratio=2)
    assert got.shape == expected.shape == (0, 8, 7, 7)
    got, expected = _both(features, [_boxes(20, 3)], [(256, 320)], output_size=7,
                          sampling_ratio=0)  # points per bin depend on the box: torchvision's
    assert torch.equal(got, expected)


def test_autocast_goes_to_torchvision():
    features = _features()
    boxes = [_boxes(30, 4)]
    pool = MultiScaleRoIAlign(list(features), output_size=7, sampling_ratio=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = pool(features, boxes, [(256, 320)])
        got = SparseRoIAlign(pool)(features, boxes, [(256, 320)])
    assert torch.equal(got, expected)
