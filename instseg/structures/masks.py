"""The one home of mask conversions: COCO segmentations (polygons, RLE) and bool masks, and
Mask R-CNN's low-resolution probabilities pasted into image-sized masks.

Formats:
    segmentation  COCO's annotation field: polygons ([[x1, y1, x2, y2, ...], ...] in pixels),
                  uncompressed RLE ({"size": [H, W], "counts": [run, ...]}) or compressed RLE
                  ({"size": [H, W], "counts": str or bytes})
    json RLE      compressed RLE with `counts` a str: what results files and annotation
                  jsons hold; pycocotools reads it as it is
    bool masks    torch.bool [N, H, W] (a mask [H, W] for one)

Pasting: torchvision's `paste_masks_in_image` builds a full-resolution float mask per
detection ([N, 1, H, W] float32: 123 MB for 100 detections on a 640x480 image) to be
thresholded. `paste_masks_to_rles` / `paste_masks_to_binary` do the same arithmetic
(torchvision's own `expand_masks` / `expand_boxes`, the same bilinear resize of each mask to
its box) but threshold the box-sized patch and write it into one reused canvas, so the binary
masks are identical, with a fraction of the memory and time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.ops import masks_to_boxes


def to_rle(segmentation, height: int, width: int) -> dict:
    """One compressed RLE (pycocotools' form) of a segmentation of an image of H x W:
    polygons are merged into one mask, an uncompressed RLE is compressed, a compressed one is
    returned itself."""
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def json_rle(rle: dict) -> dict:
    """A compressed RLE with `counts` as a str (pycocotools makes bytes): json-ready."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def encode_mask(mask: np.ndarray | torch.Tensor) -> dict:
    """bool or uint8 [H, W] -> a json RLE."""
    return encode_masks(mask[None])[0]


def encode_masks(masks: np.ndarray | torch.Tensor) -> list[dict]:
    """bool or uint8 [N, H, W] -> N json RLEs."""
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    if len(masks) == 0:
        return []
    binary = np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0))
    return [json_rle(rle) for rle in mask_utils.encode(binary)]


def decode_mask(rle: dict, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """A compressed RLE of H x W -> [H, W] of `dtype` (1 / True on the mask's pixels)."""
    return torch.from_numpy(mask_utils.decode(rle)).to(dtype)


def decode_masks(rles: Sequence[dict], height: int, width: int) -> torch.Tensor:
    """N compressed RLEs of H x W -> bool [N, H, W]."""
    if not rles:
        return torch.zeros((0, height, width), dtype=torch.bool)
    return torch.from_numpy(mask_utils.decode(list(rles))).permute(2, 0, 1).bool()


def mask_extents(masks: torch.Tensor) -> torch.Tensor:
    """bool or uint8 [N, H, W] -> float32 [N, 4] XYXY boxes of their pixels, each ending after
    its last pixel (x1 + 1, y1 + 1); every mask must have a pixel."""
    if len(masks) == 0:
        return torch.zeros((0, 4))
    boxes = masks_to_boxes(masks.as_subclass(torch.Tensor))  # x1, y1: the last pixel
    boxes[:, 2:] += 1
    return boxes


def mask_box(rle: dict) -> list[float]:
    """[x, y, w, h] of the pixels of a compressed RLE (zeros for an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(rle)]


def mask_area(rle: dict) -> float:
    """The number of pixels of a compressed RLE."""
    return float(mask_utils.area(rle))


def paste_masks_to_rles(
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
    threshold: float = 0.5, padding: int = 1,
) -> list[dict]:
    """mask_probs [N, 1, M, M] in [0, 1], boxes XYXY [N, 4] in image pixels, image_size (H, W)
    -> N json RLEs of
    `paste_masks_in_image(mask_probs, boxes, image_size) > threshold`."""
    height, width = image_size
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    rles = []
    for (top, bottom, left, right), region in _pasted_regions(mask_probs, boxes, image_size,
                                                              threshold, padding):
        canvas[top:bottom, left:right] = region.numpy()
        rles.append(json_rle(mask_utils.encode(canvas)))
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
