"""The optimised inference path (instseg.models.inference.optimize_for_inference, what the
Predictor, the demo and evaluate.py use) gives the plain torchvision net's detections:
same count and labels, boxes and scores within 1e-3, binary masks with IoU >= 0.99.
Not timed: benchmarks/bench_inference.py measures the speed."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from instseg.demo.predictor import Predictor
from instseg.models.inference import ThreadedRoIPool
from instseg.pipeline import module_from_checkpoint
from tests.conftest import shared_data


def _mask_iou(plain: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    inter = (plain & ours).flatten(1).sum(1).double()
    union = (plain | ours).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


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
    assert predictor.net.roi_heads.box_roi_pool.__class__ is ThreadedRoIPool
    ours = predictor.predict(images)
    assert sum(len(o) for o in ours) > 0
    for expected, got in zip(plain, ours, strict=True):
        assert len(expected["scores"]) == len(got)
        assert categories.to_category_ids(expected["labels"]) == got.category_ids.tolist()
        torch.testing.assert_close(got.boxes, expected["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(got.scores, expected["scores"], atol=1e-3, rtol=0)
        assert _mask_iou(expected["masks"][:, 0] > 0.5, got.masks).min() >= 0.99


def test_threaded_roi_pooling_is_bit_identical():
    torch.manual_seed(0)
    features = {str(i): torch.rand(1, 8, 64 // 2**i, 64 // 2**i) for i in range(4)}
    boxes = [torch.rand(300, 2) * 40]
    boxes = [torch.cat([boxes[0], boxes[0] + torch.rand(300, 2) * 24 + 1], dim=1)]
    pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    expected = pool(features, boxes, [(64, 64)])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # with one thread the boxes would not be split
    try:
        with torch.inference_mode():
            got = ThreadedRoIPool(pool)(features, boxes, [(64, 64)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(got, expected)


def test_half_precision_inference_is_refused_on_a_cpu_with_a_clear_message(tiny_checkpoint):
    from instseg.utils.errors import InstsegError

    module, categories, _ = module_from_checkpoint(tiny_checkpoint)
    with pytest.raises(InstsegError, match="needs a CUDA device"):
        Predictor(module.net, categories, device="cpu", precision="16-mixed")
    with pytest.raises(InstsegError, match="expected one of"):
        Predictor(module.net, categories, device="cpu", precision="fp8")
