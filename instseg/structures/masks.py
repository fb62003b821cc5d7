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
its box) but threshold only the part of each box-sized patch inside the image, so the binary
masks are identical, with a fraction of the memory and time. `paste_masks_to_rles` never
builds an image-sized mask: the runs of every mask are found in its crop (all the crops of an
image in one array, in pycocotools' column-major order), shifted to image pixels, and
pycocotools compresses their counts, giving the bytes its `encode` gives for the full mask.
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
    """mask_probs float [N, 1, M, M] in [0, 1], boxes float XYXY [N, 4] in image pixels,
    image_size (H, W) -> N json RLEs of H x W, byte for byte pycocotools' encoding of
    `paste_masks_in_image(mask_probs, boxes, image_size, padding) > threshold` (compared in
    the probabilities' dtype, as torch compares). Tensors on another device are pasted on the
    CPU."""
    height, width = (int(v) for v in image_size)
    if len(mask_probs) == 0:
        return []
    layout = _PasteLayout(mask_probs, boxes, (height, width), padding)
    # The runs are found in the crops alone; pycocotools then compresses their counts as its
    # encode compresses the counts it takes from a full image-sized mask.
    counts = _counts_from_runs(*_runs_in_image(layout, threshold), len(layout), height * width)
    encoded = mask_utils.frPyObjects(
        [{"size": [height, width], "counts": c} for c in counts], height, width)
    return [{"size": [height, width], "counts": rle["counts"].decode("ascii")}
            for rle in encoded]


def paste_masks_to_binary(
    mask_probs: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int],
    threshold: float = 0.5, padding: int = 1,
) -> torch.Tensor:
    """The same masks as `paste_masks_to_rles`, as bool [N, H, W]."""
    image_size = tuple(int(v) for v in image_size)
    masks = torch.zeros((len(mask_probs), *image_size), dtype=torch.bool)
    if len(mask_probs) == 0:
        return masks
    layout = _PasteLayout(mask_probs, boxes, image_size, padding)
    top, bottom, left, right = (v.tolist() for v in layout.clipped)
    for index, crop in enumerate(layout.crops()):
        masks[index, top[index]:bottom[index], left[index]:right[index]] = torch.from_numpy(
            crop > crop.dtype.type(threshold))
    return masks


class _PasteLayout:
    """Where N masks go in an image of image_size (H, W), with torchvision's arithmetic
    (`expand_masks`, `expand_boxes`, one bilinear resize of each padded mask to its whole
    integer box):

        masks    the padded probabilities [N, 1, M + 2 * padding, M + 2 * padding], on the CPU
        resized  int64 [N] each: the (height, width) each mask is resized to
        clipped  int64 [N] each: top, bottom, left, right of its box clipped to the image (the
                 rows [top, bottom) and columns [left, right) it covers; empty for a box
                 wholly outside the image, on which torchvision's paste fails, its boxes being
                 clipped first)
        offset   int64 [N] each: the row and column of the resized mask at (top, left)
    """

    def __init__(self, mask_probs, boxes, image_size, padding):
        self.image_size = height, width = image_size
        self.masks, scale = expand_masks(mask_probs.cpu(), padding=padding)
        x0, y0, x1, y1 = expand_boxes(boxes.cpu(), scale).to(dtype=torch.int64).numpy().T
        self.resized = np.maximum(y1 - y0 + 1, 1), np.maximum(x1 - x0 + 1, 1)
        left, top = np.maximum(x0, 0), np.maximum(y0, 0)
        right = np.maximum(np.minimum(x1 + 1, width), left)
        bottom = np.maximum(np.minimum(y1 + 1, height), top)
        self.clipped = top, bottom, left, right
        self.offset = top - y0, left - x0

    def __len__(self):
        return len(self.masks)

    def crops(self):
        """Per detection, in order: the resized probabilities inside the image, a numpy view
        [bottom - top, right - left] of the masks' dtype."""
        h, w = (v.tolist() for v in self.resized)
        top, bottom, left, right = (v.tolist() for v in self.clipped)
        row, column = (v.tolist() for v in self.offset)
        for i, mask in enumerate(self.masks):
            patch = F.interpolate(mask[None], size=(h[i], w[i]), mode="bilinear",
                                  align_corners=False)[0, 0].numpy()
            yield patch[row[i]:row[i] + bottom[i] - top[i],
                        column[i]:column[i] + right[i] - left[i]]


def _runs_in_image(layout, threshold):
    """The runs of pixels above `threshold` of the pasted masks, in the column-major order of
    the H x W image (pycocotools' order): starts int64 [R] (indices into its H * W pixels),
    lengths int64 [R] and the detection of each int64 [R], by detection and then by start.
    A run never spans two columns of a crop: `_counts_from_runs` joins the ones that touch."""
    top, bottom, left, right = layout.clipped
    rows, columns = bottom - top, right - left
    # Every crop's columns laid end to end, each followed by one False, behind one leading
    # False: each run of Trues is bounded by a change on either side and lies in one column,
    # and all the runs of all the detections come from one pass over one array.
    sizes = columns * (rows + 1)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.zeros(offsets[-1] + 1, dtype=bool)
    shapes = np.stack([columns, rows + 1], axis=1).tolist()
    starts_in_flat = (offsets[:-1] + 1).tolist()
    # Each crop is thresholded as soon as it is resized, while it is in the cache.
    for crop, shape, start in zip(layout.crops(), shapes, starts_in_flat, strict=True):
        if crop.size:
            stacked = flat[start:start + shape[0] * shape[1]].reshape(shape)
            np.greater(crop.T, crop.dtype.type(threshold), out=stacked[:, :-1])
    changes = np.flatnonzero(flat[1:] != flat[:-1])  # flat[changes + 1] begins or ends a run
    begin, end = changes[0::2], changes[1::2]  # a run is flat[begin + 1:end + 1]
    detection = np.searchsorted(offsets, begin, side="right") - 1
    column, row = np.divmod(begin - offsets[detection], rows[detection] + 1)
    starts = (left[detection] + column) * layout.image_size[0] + top[detection] + row
    return starts, end - begin, detection


def _counts_from_runs(starts, lengths, detection, count, area):
    """Per detection 0..count-1, the uncompressed RLE counts of its mask (uint32 [K]: 0s,
    1s, 0s, ... summing to `area`, the first possibly 0, as pycocotools' encode counts them)
    from its runs of 1s (`_runs_in_image`)."""
    ends = starts + lengths
    # A run that begins where the previous one of its detection ends (a column down to the
    # image's bottom row, then the next from its top row) is the same run.
    joined = np.zeros(len(starts), dtype=bool)
    joined[1:] = (starts[1:] == ends[:-1]) & (detection[1:] == detection[:-1])
    last = np.ones(len(starts), dtype=bool)
    last[:-1] = ~joined[1:]
    starts, ends, detection = starts[~joined], ends[last], detection[~joined]
    # Per detection the points 0, start, end, start, end, ..., area; their successive
    # differences are its counts.
    bounds = np.searchsorted(detection, np.arange(count + 1))
    heads = 2 * (bounds[:-1] + np.arange(count))
    tails = 2 * (bounds[1:] + np.arange(count)) + 1
    points = np.empty(2 * (len(starts) + count), dtype=np.int64)
    slots = 2 * (np.arange(len(starts)) + detection) + 1
    points[slots], points[slots + 1] = starts, ends
    points[heads], points[tails] = 0, area
    steps = np.diff(points).astype(np.uint32)
    # A mask ending on the image's last pixel ends on its run of 1s, not on an empty run.
    tails -= (steps[tails - 1] == 0) & (tails - heads > 1)
    return [steps[head:tail] for head, tail in zip(heads.tolist(), tails.tolist(), strict=True)]
