"""What a Mask R-CNN computes per image: `model_cost(net)`, counted by torch.utils.flop_counter.

Convention: GFLOPs are billions of multiply-adds, as torchvision's weights metadata
(`meta["_ops"]`), detectron2's and mmdetection's FLOP counters publish them; torch's counter
counts two FLOPs per multiply-add. Ops without multiply-adds (RoIAlign, NMS, activations)
count nothing in either.

What is counted: one forward pass in eval mode on a square image of the net's test size
(`net.transform.min_size[-1]`, which the transform keeps), so the backbone sees that size
padded to its divisor. The box and mask heads' costs depend on how many proposals survive
and how many objects are detected, which vary with the weights and the image; the count is
made at the model's limits: the box head on `rpn_post_nms_top_n_test` proposals (fewer only
where the image has fewer anchors than the RPN's top-n). The mask head's cost is per
detection: a `ModelCost` holds the cost without detections and the cost of each, and
`gflops(detections)` gives any count (by default the model's limit, `box_detections_per_img`).

torchvision's published figures are of this count on a 224 x 224 input (resized to 800 x 800
by the transform), 1000 proposals: `maskrcnn_resnet50_fpn`'s 134.38 is the cost without
detections, `maskrcnn_resnet50_fpn_v2`'s 333.58 the cost with 100: torchvision counted the two
with different numbers of detections. tests/models/test_cost.py checks both to their two
decimals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import MaskRCNN


@dataclass(frozen=True)
class ModelCost:
    """Multiply-adds of one image at `image_size` (H, W, as the backbone sees it):
    `without_detections` (backbone, RPN, box head on `proposals` RoIs) and `per_detection`
    (the mask head on one RoI); `detections_per_image`: the model's limit."""

    image_size: tuple[int, int]
    proposals: int
    detections_per_image: int
    without_detections: int
    per_detection: int

    def multiply_adds(self, detections: int) -> int:
        return self.without_detections + detections * self.per_detection

    def gflops(self, detections: int | None = None) -> float:
        """Billions of multiply-adds with `detections` objects (default: the model's limit)."""
        count = self.detections_per_image if detections is None else detections
        return self.multiply_adds(count) / 1e9

    def describe(self) -> str:
        """E.g. "187.6 GFLOPs per 800x800 image (134.4 + 100 detections x 0.532)"."""
        height, width = self.image_size
        return (f"{self.gflops():.1f} GFLOPs per {height}x{width} image ({self.gflops(0):.1f} + "
                f"{self.detections_per_image} detections x {self.per_detection / 1e9:.3f})")

    def as_dict(self) -> dict:
        return {**asdict(self), "gflops": round(self.gflops(), 3),
                "gflops_without_detections": round(self.gflops(0), 3),
                "convention": "multiply-adds: torch.utils.flop_counter's FLOPs / 2"}


def model_cost(net: MaskRCNN, image_size: int | None = None) -> ModelCost:
    """Count `net`'s multiply-adds on one seeded random square image of `image_size` pixels
    (default: the net's test size) at the model's limits of proposals and detections.

    The stages are run one by one, on the image's features: the backbone and the RPN head;
    the box head on as many proposals as the RPN keeps at most; the mask head on one box.
    What they compute does not depend on the weights' values (a random model's proposals,
    which may all fall off the image, would), and a full forward at those limits counts the
    same (tests/models/test_cost.py). The net's mode is restored after."""
    size = image_size or net.transform.min_size[-1]
    device = next(net.parameters()).device
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    saved_mode = net.training
    net.eval()
    try:
        with torch.no_grad():
            return _count_stages(net, image)
    finally:
        net.train(saved_mode)


def _count_stages(net: MaskRCNN, image: torch.Tensor) -> ModelCost:
    images, _ = net.transform([image])
    image_sizes = images.image_sizes
    with FlopCounterMode(display=False) as base:
        features = net.backbone(images.tensors)
        objectness, _ = net.rpn.head(list(features.values()))
    proposals = _proposal_limit(net, objectness)
    boxes = _random_boxes(proposals, image_sizes[0], image.device)
    heads = net.roi_heads
    with FlopCounterMode(display=False) as box_branch:
        heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [boxes], image_sizes)))
    with FlopCounterMode(display=False) as mask_branch:
        if heads.has_mask():  # a Faster R-CNN built from these parts has no mask cost
            heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, [boxes[:1]],
                                                                     image_sizes)))
    return ModelCost(
        image_size=tuple(images.tensors.shape[-2:]), proposals=proposals,
        detections_per_image=heads.detections_per_img,
        without_detections=(base.get_total_flops() + box_branch.get_total_flops()) // 2,
        per_detection=mask_branch.get_total_flops() // 2)


def _proposal_limit(net: MaskRCNN, objectness: list[torch.Tensor]) -> int:
    """How many proposals the RPN keeps at most for these feature maps: its pre-NMS top-n of
    each level's anchors, then its post-NMS top-n of them all (with nothing suppressed)."""
    pre, post = net.rpn.pre_nms_top_n(), net.rpn.post_nms_top_n()  # the eval-mode values
    kept = sum(min(pre, level[0].numel()) for level in objectness)  # A x H x W anchors
    return min(post, kept)


def _random_boxes(count: int, image_size: tuple[int, int], device) -> torch.Tensor:
    """`count` seeded XYXY boxes inside an image of `image_size` (H, W), at least 2 px wide."""
    height, width = image_size
    corners = torch.rand(count, 2, 2, generator=torch.Generator().manual_seed(1))
    corners = corners * torch.tensor([width - 2.0, height - 2.0])
    low, high = corners.min(dim=1).values, corners.max(dim=1).values + 2.0
    return torch.cat([low, high], dim=1).to(device)
