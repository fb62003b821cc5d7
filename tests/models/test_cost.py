"""Compute per image (instseg.models.cost) against torchvision's published figures and a count
by hand."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_weight

from instseg.models.cost import model_cost
from tests.models.test_zoo import build

# torchvision's "GFLOPS" metadata: multiply-adds at 800 x 800 with 1000 proposals, the first
# counted without detections, the second with 100 (see instseg/models/cost.py).
PUBLISHED = [("r50_fpn", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", 0),
             ("r50_fpn_v2", "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1", 100)]


# torchvision's mask head (v1 and v2) on a 14 x 14 RoI: four 3x3 convs (256 -> 256), a 2x2
# stride-2 transposed conv to 28 x 28, and 1x1 logits for 91 classes.
MASK_HEAD = 4 * 256 * 256 * 9 * 14 * 14 + 256 * 256 * 4 * 14 * 14 + 256 * 91 * 28 * 28


@pytest.mark.parametrize(("model", "weights", "detections"), PUBLISHED)
def test_matches_torchvision_published_gflops(model, weights, detections, tmp_path):
    cost = model_cost(build(tmp_path, model, 91))  # at the config's own test size, 800
    published = get_weight(weights).meta["_ops"]
    assert cost.image_size == (800, 800) and cost.proposals == 1000
    assert cost.detections_per_image == 100
    assert cost.gflops(detections) == pytest.approx(published, abs=0.005)  # its 2 decimals
    assert cost.per_detection == MASK_HEAD


def test_count_is_half_of_torch_flop_counter_and_leaves_the_net_as_it_was(tmp_path):
    """The count at the model's limits (150 proposals, 50 detections for small_cpu), whatever
    the weights; torch's counter on the same forward counts two FLOPs per multiply-add."""
    net = build(tmp_path, "small_cpu", 5, "model.net.min_size=96", "model.net.max_size=96")
    net.train()
    thresholds = net.rpn.nms_thresh, net.roi_heads.nms_thresh, net.roi_heads.score_thresh
    cost = model_cost(net)
    assert net.training
    assert (net.rpn.nms_thresh, net.roi_heads.nms_thresh, net.roi_heads.score_thresh) == thresholds
    assert (cost.image_size, cost.proposals, cost.detections_per_image) == ((96, 96), 150, 50)
    net.eval()
    net.rpn.nms_thresh = net.roi_heads.nms_thresh = 1.0  # as the count does
    net.roi_heads.score_thresh = 0.0
    image = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        detections = len(net([image])[0]["boxes"])
    assert detections == 50
    assert counter.get_total_flops() == 2 * cost.multiply_adds(detections)
