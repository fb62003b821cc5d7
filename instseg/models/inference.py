"""Mask R-CNN inference that stops before pasting masks at full resolution.

`predict_unpasted(net, images)` runs a torchvision MaskRCNN exactly as `net.eval()(images)`
does, except that each detection dict keeps the mask head's probabilities,
"mask_probs" float [N, 1, 28, 28], instead of "masks" [N, 1, H, W], and carries
"image_size" (H, W). Boxes are XYXY in original image pixels, as usual. The evaluator pastes
the probabilities straight into RLE (`instseg.evaluation.paste`), with identical results.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import resize_boxes


@torch.inference_mode()
def predict_unpasted(net: MaskRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    batch, _ = net.transform(images)
    features = net.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = net.rpn(batch, features)
    detections, _ = net.roi_heads(features, proposals, batch.image_sizes)
    for detection, size, original in zip(detections, batch.image_sizes, original_sizes,
                                         strict=True):
        detection["boxes"] = resize_boxes(detection["boxes"], size, original)
        detection["mask_probs"] = detection.pop("masks")
        detection["image_size"] = original
    return detections
