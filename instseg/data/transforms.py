"""torchvision.transforms.v2 presets for (tv_tensors.Image, target dict) detection samples.

Output images are float32 [3, H, W] in [0, 1]; targets become plain tensors (boxes XYXY
float32, masks uint8, labels int64). Resizing and normalisation stay inside the model
(torchvision's GeneralizedRCNNTransform), so predictions come back in original pixels.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def detection_transforms(hflip_prob: float = 0.0) -> v2.Compose:
    """Random horizontal flip with `hflip_prob` (0 for evaluation), then float scaling."""
    steps = [v2.RandomHorizontalFlip(hflip_prob)] if hflip_prob > 0 else []
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])
