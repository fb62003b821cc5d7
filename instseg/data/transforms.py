"""Training augmentations and evaluation scaling of (tv_tensors.Image, target) samples, with
torchvision.transforms.v2.

`training_transforms(...)` composes, in this order, the ops a recipe asks for:

    scale_jitter  v2.ScaleJitter: the image resized by a random factor in `scale_range` of the
                  largest size that fits `target_size` (large-scale jitter, LSJ)
    crop_size     v2.RandomCrop with padding where the image is smaller: a fixed canvas
    hflip_prob    v2.RandomHorizontalFlip
    photometric   v2.RandomPhotometricDistort (brightness, contrast, saturation, hue, channels)

v2 moves the image, the boxes (`tv_tensors.BoundingBoxes`) and every `tv_tensors.Mask`
(the instances' and, when the target has them, the crowd regions' `crowd_masks`) together.
After a resize or a crop, `TightBoxes` makes every box the extent of its mask again and drops
the instances left with fewer than `min_pixels` pixels, counting them in the target's
"dropped_instances" (the LightningModule logs the run's total as train/dropped_instances).
The flip-only default keeps the annotation's boxes as they are.

Multi-scale training (detectron2's ResizeShortestEdge, shortest side drawn per image) is the
model's own: `model.net.min_size: [640, ..., 800]` makes torchvision's GeneralizedRCNNTransform
draw a size per training image (conf/augment/multiscale.yaml). Copy-paste mixes the images of
a batch: `instseg.data.copy_paste`.

Random draws: every op draws from torch's global generator, which the dataset seeds per
sample from (seed, epoch, index) (`CocoInstances.__getitem__`), so that a sample's
augmentation is a function of those alone (exact resume).

Output: image float32 [3, H, W] in [0, 1]; targets as plain tensors: boxes XYXY float32
[N, 4], masks uint8 [N, H, W], labels int64 [N] (contiguous), and the keys the sample had.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from instseg.structures.masks import mask_extents

# Pixel mean of ImageNet in 0-255 (torchvision's references pad LSJ canvases with it).
PAD_FILL = (124, 116, 104)


def training_transforms(
    hflip_prob: float = 0.5,
    scale_jitter: dict | None = None,
    crop_size: Sequence[int] | None = None,
    photometric: dict | None = None,
    min_pixels: int = 1,
) -> v2.Compose:
    """The training pipeline (see the module docstring).

    Args:
        hflip_prob: probability of a horizontal flip (0: none).
        scale_jitter: v2.ScaleJitter's arguments: target_size (H, W) and scale_range
            (low, high), e.g. {"target_size": [1024, 1024], "scale_range": [0.1, 2.0]}.
        crop_size: (H, W) of the canvas every image is cropped or padded to (PAD_FILL).
        photometric: v2.RandomPhotometricDistort's arguments ({} for its defaults).
        min_pixels: instances with fewer mask pixels after a resize or crop are dropped.
    Returns:
        a callable (image, target) -> (image float32 [3, H, W] in [0, 1], target).
    """
    steps: list = []
    geometric = scale_jitter is not None or crop_size is not None
    if scale_jitter is not None:
        steps.append(v2.ScaleJitter(target_size=tuple(scale_jitter["target_size"]),
                                    scale_range=tuple(scale_jitter.get("scale_range",
                                                                       (0.1, 2.0)))))
    if crop_size is not None:
        steps.append(v2.RandomCrop(tuple(crop_size), pad_if_needed=True,
                                   fill={tv_tensors.Image: PAD_FILL, "others": 0}))
    if hflip_prob > 0:
        steps.append(v2.RandomHorizontalFlip(hflip_prob))
    if photometric is not None:
        steps.append(v2.RandomPhotometricDistort(**dict(photometric)))
    if geometric:
        steps.append(TightBoxes(min_pixels))
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


def evaluation_transforms() -> v2.Compose:
    """Evaluation: float scaling only (the model resizes)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.ToPureTensor()])


class TightBoxes:
    """(image, target) -> the same, every box the pixel extent of its mask (x0, y0, x1 + 1,
    y1 + 1), instances with fewer than `min_pixels` mask pixels dropped and counted in
    target["dropped_instances"] (added to any count already there)."""

    def __init__(self, min_pixels: int = 1) -> None:
        self.min_pixels = max(int(min_pixels), 1)

    def __call__(self, image, target: dict):
        if "masks" not in target:
            return image, target
        masks = target["masks"]
        keep = masks.flatten(1).sum(dim=1) >= self.min_pixels
        target = dict(target)
        target["dropped_instances"] = (int(target.get("dropped_instances", 0))
                                       + int((~keep).sum()))
        kept = masks[keep]
        target["masks"] = tv_tensors.wrap(kept, like=masks)
        target["boxes"] = tv_tensors.BoundingBoxes(mask_extents(kept), format="XYXY",
                                                   canvas_size=tuple(masks.shape[-2:]))
        target["labels"] = target["labels"][keep]
        return image, target
