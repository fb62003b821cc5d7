"""Mask R-CNN inference that stops before pasting masks at full resolution, and the
inference-only optimisations of a net.

`predict_unpasted(net, images)` runs a torchvision MaskRCNN as `net.eval()(images)` does
(the mask logits computed for each detection's own class only), except that each detection
dict keeps the mask head's probabilities,
"mask_probs" float [N, 1, 28, 28], instead of "masks" [N, 1, H, W], and carries
"image_size" (H, W). Boxes are XYXY in original image pixels, as usual. The evaluator pastes
the probabilities straight into RLE (`instseg.evaluation.paste`), with identical results.

`optimize_for_inference(net, compile=False)` changes a net in place for inference only (the
Predictor, the demo and evaluate.py; never a net that trains on):
- everywhere: channels_last weights and inputs (oneDNN's faster convolutions);
- on CPU: BatchNorm (and torchvision's FrozenBatchNorm2d) folded into the convolution before
  it; 3x3 convolutions of 128+ channels computed by Winograd's F(4x4, 3x3)
  (`instseg.models.winograd`: backbone, FPN, RPN head, mask head); RoI pooling as one
  sparse-matrix product per level (`instseg.models.roi_pooling`; torchvision's CPU
  RoIAlign kernel runs on one thread); glibc told to reuse freed memory rather than
  page-fault every large activation afresh (`instseg.utils.memory`, process-wide);
- with `compile`, torch.compile of the convolutional parts (backbone + FPN, RPN head, mask
  head) with dynamic shapes and frozen weights (one compilation, then every image size),
  in place of Winograd's convolutions.
Detections agree with the plain net's to rounding (benchmarks/bench_inference.py and
tests/models/test_inference.py measure by how much).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from instseg.models.roi_pooling import SparseRoIAlign
from instseg.models.winograd import WinogradConv2d, is_winograd_compatible
from instseg.utils.memory import reuse_freed_memory

log = logging.getLogger(__name__)
# Narrower 3x3 convolutions are faster direct (oneDNN) than by Winograd on CPU:
# `benchmarks/bench_inference.py --convolutions` times both per shape.
MIN_WINOGRAD_CHANNELS = 128


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
    if pixels is not batch.tensors and pixels.device.type != "cpu":
        # torchvision's CUDA RoIAlign makes channels_last maps contiguous on every call: once
        # here (on CPU, SparseRoIAlign wants them channels_last).
        features = OrderedDict((name, level.contiguous()) for name, level in features.items())
    detections = _roi_heads(net.roi_heads, features, proposals, batch.image_sizes)
    for detection, size, original in zip(detections, batch.image_sizes, original_sizes,
                                         strict=True):
        detection["boxes"] = resize_boxes(detection["boxes"], size, original)
        detection["image_size"] = original
    return detections


def _roi_heads(heads: RoIHeads, features, proposals, image_sizes) -> list[dict]:
    """torchvision's RoIHeads.forward at inference, except that the mask logits are computed
    for each detection's own class only (`_labelled_mask_logits`)."""
    if heads.keypoint_predictor is not None or not heads.has_mask():
        raise ValueError("predict_unpasted expects a Mask R-CNN without keypoints")
    pooled = heads.box_roi_pool(features, proposals, image_sizes)
    logits, deltas = heads.box_predictor(heads.box_head(pooled))
    boxes, scores, labels = heads.postprocess_detections(logits, deltas, proposals, image_sizes)
    pooled = heads.mask_roi_pool(features, boxes, image_sizes)
    mask_logits = _labelled_mask_logits(heads.mask_predictor, heads.mask_head(pooled),
                                        torch.cat(labels))
    mask_probs = mask_logits.sigmoid().split([len(b) for b in boxes])
    return [{"boxes": b, "scores": s, "labels": lab, "mask_probs": m}
            for b, s, lab, m in zip(boxes, scores, labels, mask_probs, strict=True)]


def _labelled_mask_logits(predictor: nn.Module, features: torch.Tensor,
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


def optimize_for_inference(net: MaskRCNN, compile: bool = False,
                           reuse_memory: bool = True) -> MaskRCNN:
    """`net`, changed in place for inference only (see the module docstring); call it on the
    device the net will run on. `reuse_memory=False` leaves the C allocator alone."""
    net.eval()
    if next(net.parameters()).device.type == "cpu":
        if reuse_memory:
            reuse_freed_memory()
        fold_batch_norms(net)
        # Inductor fails on WinogradConv2d's blocks (torch 2.14); compiled, the direct
        # convolutions are fused with their ReLUs instead.
        for part in () if compile else (net.backbone, net.rpn.head, net.roi_heads.mask_head):
            use_winograd(part)
        heads = net.roi_heads
        for name in ("box_roi_pool", "mask_roi_pool"):
            if isinstance(getattr(heads, name), MultiScaleRoIAlign):
                setattr(heads, name, SparseRoIAlign(getattr(heads, name)))
    net.to(memory_format=torch.channels_last)
    if compile:
        _compile_convolutions(net)
    return net


def fold_batch_norms(module: nn.Module) -> int:
    """Folds each eval-mode BatchNorm2d / FrozenBatchNorm2d into the eval-mode convolution that
    feeds it, replacing the norm by nn.Identity; returns how many. A pair is recognised where
    the dataflow is certain: consecutive children of an nn.Sequential (torchvision's
    Conv2dNormActivation, ResNet's downsample) and torchvision's ResNet naming, `convK`
    followed by `bnK` in the same block (the stem, Bottleneck, BasicBlock)."""
    folded = 0
    for parent in list(module.modules()):
        for conv_name, norm_name in _conv_norm_pairs(parent):
            conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(parent, norm_name, nn.Identity())
            folded += 1
    return folded


def _conv_norm_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    children = dict(parent.named_children())
    if isinstance(parent, nn.Sequential):
        names = list(children)
        candidates = list(zip(names, names[1:], strict=False))
    else:
        candidates = [(name, "bn" + name[4:]) for name in children if name.startswith("conv")]
    return [(c, n) for c, n in candidates
            if type(children.get(c)) is nn.Conv2d and not children[c].training
            and _is_inference_norm(children.get(n))
            and children[c].out_channels == len(children[n].running_mean)]


def _is_inference_norm(module: nn.Module | None) -> bool:
    return (type(module) in (nn.BatchNorm2d, FrozenBatchNorm2d) and not module.training
            and module.running_mean is not None)


def use_winograd(module: nn.Module) -> int:
    """Replaces the 3x3/stride 1 convolutions of `module` with MIN_WINOGRAD_CHANNELS or more
    input and output channels by WinogradConv2d; returns how many."""
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if (is_winograd_compatible(child)
                    and min(child.in_channels, child.out_channels) >= MIN_WINOGRAD_CHANNELS):
                setattr(parent, name, WinogradConv2d.from_conv(child))
                replaced += 1
    return replaced


def _is_channels_last(net: MaskRCNN) -> bool:
    weight = next((p for p in net.backbone.parameters() if p.dim() == 4), None)
    return (weight is not None and weight.shape[1] > 1 and weight.shape[-1] > 1
            and weight.is_contiguous(memory_format=torch.channels_last)
            and not weight.is_contiguous())


def _compile_convolutions(net: MaskRCNN) -> None:
    # freezing: weights become constants of the kernels (prepacked layouts, ReLUs fused);
    # right for a net that only predicts from now on.
    options = {"freezing": True} if next(net.parameters()).device.type == "cpu" else {}
    for part in (net.backbone, net.rpn.head, net.roi_heads.mask_head):
        part.compile(dynamic=True, options=options)
    log.info("torch.compile: backbone, RPN head and mask head (compiled at the first image)")
