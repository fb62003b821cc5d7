"""Mask R-CNN inference that stops before pasting masks at full resolution.

`predict_unpasted(net, images)` runs a torchvision MaskRCNN as `net.eval()(images)` does
(the mask logits computed for each detection's own class only).

Args:
    net: a torchvision `MaskRCNN` (no keypoint head), in eval mode or not (it is run under
        inference_mode, with the net's own transform).
    images: list of float tensors [3, H, W] in [0, 1].
Returns:
    one dict per image: "boxes" float [N, 4] XYXY in the original image's pixels, "scores"
    float [N], "labels" int64 [N] (the model's contiguous labels), "mask_probs" float
    [N, 1, M, M] (the mask head's probabilities, M = 28 for torchvision's head, instead of
    torchvision's pasted "masks" [N, 1, H, W]) and "image_size" (H, W) of the original image.
The evaluator pastes the probabilities straight into RLE (`instseg.structures.masks`), with
identical results to torchvision's pasting.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import resize_boxes


@torch.inference_mode()
def predict_unpasted(net: MaskRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return unpasted_detections(net, images)


def unpasted_detections(net: MaskRCNN,
                        images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """predict_unpasted without inference_mode: what an exporter traces (its graph keeps the
    image sizes as values of the input's shape)."""
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    batch, features = image_features(net, images)
    proposals, _ = net.rpn(batch, features)
    detections = _roi_heads(net.roi_heads, features, proposals, batch.image_sizes)
    for detection, size, original in zip(detections, batch.image_sizes, original_sizes,
                                         strict=True):
        detection["boxes"] = resize_boxes(detection["boxes"], size, original)
        detection["image_size"] = original
    return detections


def image_features(net: MaskRCNN, images: list[torch.Tensor]):
    """(the net's transformed batch, its backbone's feature maps {name: [B, C, h, w]})."""
    batch, _ = net.transform(images)
    pixels = batch.tensors
    if _is_channels_last(net):
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    features = net.backbone(pixels)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    if pixels is not batch.tensors and pixels.device.type != "cpu":
        # torchvision's CUDA RoIAlign makes channels_last maps contiguous on every call: once
        # here (on CPU, SparseRoIAlign wants them channels_last).
        features = OrderedDict((name, level.contiguous()) for name, level in features.items())
    return batch, features


def _roi_heads(heads: RoIHeads, features, proposals, image_sizes) -> list[dict]:
    """torchvision's RoIHeads.forward at inference, except that the mask logits are computed
    for each detection's own class only (`labelled_mask_logits`)."""
    if heads.keypoint_predictor is not None or not heads.has_mask():
        raise ValueError("predict_unpasted expects a Mask R-CNN without keypoints")
    pooled = heads.box_roi_pool(features, proposals, image_sizes)
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, image_sizes)
    pooled = heads.mask_roi_pool(features, boxes, image_sizes)
    mask_logits = labelled_mask_logits(heads.mask_predictor, heads.mask_head(pooled),
                                        torch.cat(labels))
    mask_probs = mask_logits.sigmoid()
    # One image: no split, whose sizes a traced (exported) graph would keep as constants.
    mask_probs = [mask_probs] if len(boxes) == 1 else mask_probs.split([len(b) for b in boxes])
    return [{"boxes": b, "scores": s, "labels": lab, "mask_probs": m}
            for b, s, lab, m in zip(boxes, scores, labels, mask_probs, strict=True)]


def labelled_mask_logits(predictor: nn.Module, features: torch.Tensor,
                          labels: torch.Tensor) -> torch.Tensor:
    """[N, 1, M, M] logits of each RoI's class: torchvision's MaskRCNNPredictor (upsampling,
    ReLU, then a 1x1 convolution to every class) with that last convolution done for the
    one class that is kept (of 91 for COCO), as a batched dot product over the channels."""
    if type(predictor) is not MaskRCNNPredictor:  # a subclass may compute otherwise
        every_class = predictor(features)
        return every_class[torch.arange(len(labels), device=labels.device), labels][:, None]
    upsampled = predictor.relu(predictor.conv5_mask(features))  # [N, C, M, M]
    n, channels, height, width = upsampled.shape
    classifier = predictor.mask_fcn_logits
    weights = classifier.weight[labels].view(n, channels, 1)
    pixels = upsampled.permute(0, 2, 3, 1).reshape(n, height * width, channels)
    logits = torch.bmm(pixels, weights).view(n, 1, height, width)
    return logits + classifier.bias[labels].view(n, 1, 1, 1)


def _is_channels_last(net: MaskRCNN) -> bool:
    weight = next((p for p in net.backbone.parameters() if p.dim() == 4), None)
    return (weight is not None and weight.shape[1] > 1 and weight.shape[-1] > 1
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous())
