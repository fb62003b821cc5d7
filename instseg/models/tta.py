"""Test-time augmentation for Mask R-CNN, as detectron2's `GeneralizedRCNNWithTTA` does it.

`TestTimeAugmentation(scales, flip)(net, images)` runs the box branch once per augmentation
(the net's test size times each of `scales`, shortest and longest side alike, each with and
without a horizontal flip),
maps every augmentation's detections back to the original image, merges them by class-wise
NMS (the net's `roi_heads.nms_thresh`, at most `roi_heads.detections_per_img`), then runs the
mask head on the merged boxes in every augmentation and averages the mask probabilities.

Args:
    scales: factors of the net's test resize (its last min_size and its max_size), e.g.
        (0.8, 1.0, 1.2).
    flip: also test each scale horizontally flipped.
    net: a torchvision `MaskRCNN` (no keypoint head).
    images: list of float tensors [3, H, W] in [0, 1].
Returns:
    the format of `instseg.models.forward.predict_unpasted`: one dict per image with "boxes"
    float [N, 4] XYXY in the original image's pixels, "scores" [N], "labels" int64 [N]
    (contiguous), "mask_probs" float [N, 1, M, M] (averaged over the augmentations) and
    "image_size" (H, W).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import batched_nms

from instseg.models.forward import image_features, labelled_mask_logits


@dataclass(frozen=True)
class TestTimeAugmentation:
    scales: Sequence[float] = (0.8, 1.0, 1.2)
    flip: bool = True

    @torch.inference_mode()
    def __call__(self, net: MaskRCNN, images: list[torch.Tensor]) -> list[dict]:
        heads = net.roi_heads
        if heads.keypoint_predictor is not None or not heads.has_mask():
            raise ValueError("test-time augmentation expects a Mask R-CNN without keypoints")
        test_min, test_max = net.transform.min_size[-1], net.transform.max_size
        runs = [_box_branch(net, images, (round(test_min * s), round(test_max * s)), flipped)
                for s in self.scales for flipped in (False, True) if flipped <= self.flip]
        results = []
        for index, image in enumerate(images):
            boxes, scores, labels = _merge(heads, [run["detections"][index] for run in runs])
            probs = torch.stack([_mask_probs(heads, run, index, boxes, labels)
                                 for run in runs])
            results.append({"boxes": boxes, "scores": scores, "labels": labels,
                            "mask_probs": probs.mean(dim=0),
                            "image_size": tuple(image.shape[-2:])})
        return results


@contextmanager
def _test_size(net: MaskRCNN, size: tuple[int, int]):
    """The net's transform resizing to (shortest, longest) at evaluation (it uses its last
    min_size)."""
    saved = net.transform.min_size, net.transform.max_size
    net.transform.min_size, net.transform.max_size = (int(size[0]),), int(size[1])
    try:
        yield
    finally:
        net.transform.min_size, net.transform.max_size = saved


def _box_branch(net: MaskRCNN, images: list[torch.Tensor], size: tuple[int, int],
                flipped: bool) -> dict:
    """The augmentation's features and its detections in original-image pixels."""
    inputs = [image.flip(-1) if flipped else image for image in images]
    with _test_size(net, size):
        batch, features = image_features(net, inputs)
    heads = net.roi_heads
    proposals, _ = net.rpn(batch, features)
    pooled = heads.box_roi_pool(features, proposals, batch.image_sizes)
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals,
                                                         batch.image_sizes)
    detections = []
    for b, s, lab, resized, image in zip(boxes, scores, labels, batch.image_sizes, images,
                                         strict=True):
        original = tuple(image.shape[-2:])
        b = resize_boxes(b, resized, original)
        detections.append((_flip_boxes(b, original[1]) if flipped else b, s, lab))
    return {"features": features, "image_sizes": batch.image_sizes, "flipped": flipped,
            "originals": [tuple(image.shape[-2:]) for image in images],
            "detections": detections}


def _merge(heads, detections: list[tuple]) -> tuple[torch.Tensor, ...]:
    boxes = torch.cat([d[0] for d in detections])
    scores = torch.cat([d[1] for d in detections])
    labels = torch.cat([d[2] for d in detections])
    keep = batched_nms(boxes, scores, labels, heads.nms_thresh)[:heads.detections_per_img]
    return boxes[keep], scores[keep], labels[keep]


def _mask_probs(heads, run: dict, index: int, boxes: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """[N, 1, M, M] probabilities of the merged boxes in one augmentation, in the original
    image's orientation."""
    original, resized = run["originals"][index], run["image_sizes"][index]
    local = _flip_boxes(boxes, original[1]) if run["flipped"] else boxes
    local = resize_boxes(local, original, resized)
    features = {name: level[index:index + 1] for name, level in run["features"].items()}
    pooled = heads.mask_roi_pool(features, [local], [resized])
    probs = labelled_mask_logits(heads.mask_predictor, heads.mask_head(pooled),
                                 labels).sigmoid()
    return probs.flip(-1) if run["flipped"] else probs


def _flip_boxes(boxes: torch.Tensor, width: int) -> torch.Tensor:
    flipped = boxes.clone()
    flipped[:, 0], flipped[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    return flipped
