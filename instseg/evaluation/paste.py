"""Paste Mask R-CNN's low-resolution mask probabilities straight into binary RLE.

torchvision's `paste_masks_in_image` builds a full-resolution float mask per detection
([N, 1, H, W] float32: 123 MB for 100 detections on a 640x480 image) which evaluation then
thresholds and encodes. `paste_masks_to_rles` does the same arithmetic (torchvision's own
`expand_masks` / `expand_boxes`, the same bilinear resize of each mask to its box) but
thresholds the box-sized patch and writes it into one reused uint8 canvas, so the binary
masks, and their RLEs, are identical, with a fraction of the memory and time.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks


def paste_masks_to_rles(
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
    threshold: float = 0.5, padding: int = 1,
) -> list[dict]:
    """mask_probs [N, 1, M, M] in [0, 1], boxes XYXY [N, 4] in image pixels, image_size (H, W)
    -> N compressed RLEs ({"size": [H, W], "counts": str}) of
    `paste_masks_in_image(mask_probs, boxes, image_size) > threshold`."""
    height, width = image_size
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    rles = []
    for (top, bottom, left, right), region in _pasted_regions(mask_probs, boxes, image_size,
                                                              threshold, padding):
        canvas[top:bottom, left:right] = region.numpy()
        rle = mask_utils.encode(canvas)
        rles.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
        canvas[top:bottom, left:right] = 0
    return rles


def paste_masks_to_binary(
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
    threshold: float = 0.5, padding: int = 1,
) -> torch.Tensor:
    """The same masks as `paste_masks_to_rles`, as bool [N, H, W]."""
    masks = torch.zeros((len(mask_probs), *image_size), dtype=torch.bool)
    for index, ((top, bottom, left, right), region) in enumerate(
            _pasted_regions(mask_probs, boxes, image_size, threshold, padding)):
        masks[index, top:bottom, left:right] = region
    return masks


def _pasted_regions(mask_probs, boxes, image_size, threshold, padding):
    """Per detection: the (top, bottom, left, right) of its box clipped to the image, and the
    bool mask inside it."""
    height, width = image_size
    if len(mask_probs) == 0:
        return
    masks, scale = expand_masks(mask_probs, padding=padding)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    for mask, (x0, y0, x1, y1) in zip(masks[:, 0], boxes, strict=True):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        patch = F.interpolate(mask[None, None], size=(h, w), mode="bilinear",
                              align_corners=False)[0, 0]
        # Clipped to the image; a box wholly outside it (torchvision's paste fails on one,
        # its boxes are clipped first) gives an empty mask.
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = max(min(x1 + 1, width), left), max(min(y1 + 1, height), top)
        region = patch[top - y0:bottom - y0, left - x0:right - x0] > threshold
        yield (top, bottom, left, right), region
