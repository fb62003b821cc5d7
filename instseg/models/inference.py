"""Mask R-CNN inference that stops before pasting masks at full resolution, and the
inference-only optimisations of a net.

`predict_unpasted(net, images)` runs a torchvision MaskRCNN exactly as `net.eval()(images)`
does, except that each detection dict keeps the mask head's probabilities,
"mask_probs" float [N, 1, 28, 28], instead of "masks" [N, 1, H, W], and carries
"image_size" (H, W). Boxes are XYXY in original image pixels, as usual. The evaluator pastes
the probabilities straight into RLE (`instseg.evaluation.paste`), with identical results.

`optimize_for_inference(net, compile=False)` changes a net in place for inference only (the
Predictor, the demo and evaluate.py; never a net that trains on): channels_last weights and
inputs (oneDNN's faster convolutions), RoI pooling split across CPU threads (torchvision's
CPU RoIAlign kernel runs on one thread; each RoI is pooled independently, so the result is
bit-identical), and with `compile`, torch.compile of the convolutional parts (backbone +
FPN, RPN head, mask head) with dynamic shapes and frozen weights (one compilation of about a
minute, then every image size). Detections agree with the plain net's to rounding
(benchmarks/bench_inference.py and tests/models/test_inference.py measure by how much).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import resize_boxes

log = logging.getLogger(__name__)
# Below this many boxes the threads cost more than they save.
MIN_BOXES_TO_SPLIT = 64


@torch.inference_mode()
def predict_unpasted(net: MaskRCNN, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    original_sizes = [tuple(image.shape[-2:]) for image in images]
    batch, _ = net.transform(images)
    pixels = batch.tensors
    if _is_channels_last(net):
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    features = net.backbone(pixels)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    proposals, _ = net.rpn(batch, features)
    if pixels is not batch.tensors:  # channels_last: RoIAlign's CPU kernel wants contiguous
        features = OrderedDict((name, level.contiguous()) for name, level in features.items())
    detections, _ = net.roi_heads(features, proposals, batch.image_sizes)
    for detection, size, original in zip(detections, batch.image_sizes, original_sizes,
                                         strict=True):
        detection["boxes"] = resize_boxes(detection["boxes"], size, original)
        detection["mask_probs"] = detection.pop("masks")
        detection["image_size"] = original
    return detections


def optimize_for_inference(net: MaskRCNN, compile: bool = False) -> MaskRCNN:
    """`net`, changed in place for inference only (see the module docstring)."""
    net.eval()
    device = next(net.parameters()).device
    net.to(memory_format=torch.channels_last)
    heads = net.roi_heads
    if device.type == "cpu" and torch.get_num_threads() > 1:
        if not isinstance(heads.box_roi_pool, ThreadedRoIPool):
            heads.box_roi_pool = ThreadedRoIPool(heads.box_roi_pool)
        if heads.mask_roi_pool is not None and not isinstance(heads.mask_roi_pool,
                                                              ThreadedRoIPool):
            heads.mask_roi_pool = ThreadedRoIPool(heads.mask_roi_pool)
    if compile:
        _compile_convolutions(net)
    return net


def _is_channels_last(net: MaskRCNN) -> bool:
    weight = next((p for p in net.backbone.parameters() if p.dim() == 4), None)
    return (weight is not None and weight.shape[1] > 1 and weight.shape[-1] > 1
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous())


def _compile_convolutions(net: MaskRCNN) -> None:
    # freezing: weights become constants folded into the kernels (BatchNorm into the
    # convolutions, prepacked layouts); right for a net that only predicts from now on.
    options = {"freezing": True} if next(net.parameters()).device.type == "cpu" else {}
    parts = [net.backbone, net.rpn.head, net.roi_heads.mask_head, net.roi_heads.mask_predictor]
    for part in parts:
        if part is not None:
            part.compile(dynamic=True, options=options)
    log.info("torch.compile: backbone, RPN head and mask head (compiled at the first image)")


class ThreadedRoIPool(nn.Module):
    """A torchvision MultiScaleRoIAlign whose boxes are pooled in chunks on parallel threads
    (torch ops release the GIL); outputs in the original order, bit-identical."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        threads = torch.get_num_threads()
        on_cpu = all(level.device.type == "cpu" for level in features.values())
        if not on_cpu or sum(len(b) for b in boxes) < MIN_BOXES_TO_SPLIT or threads < 2:
            return self.pool(features, boxes, image_shapes)
        # RoIAlign's CPU kernel makes channels_last maps contiguous on every call: once here,
        # not once per thread (a no-op where predict_unpasted did it already).
        features = {name: level.contiguous() for name, level in features.items()}
        # Whole images go to one chunk (the pool maps boxes to their image by list index);
        # one image's boxes are split into `threads` chunks.
        if len(boxes) == 1:
            jobs = [([chunk], image_shapes) for chunk in boxes[0].chunk(threads)]
            outputs = _executor(threads).map(lambda job: self._pool_one(features, *job), jobs)
            return torch.cat(list(outputs))
        return self.pool(features, boxes, image_shapes)

    def _pool_one(self, features, boxes, image_shapes) -> torch.Tensor:
        with torch.inference_mode():
            return self.pool(features, boxes, image_shapes)


@cache
def _executor(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="roi-pool")
