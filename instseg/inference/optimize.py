"""Inference-only optimisations of a torchvision Mask R-CNN.

`optimize_for_inference(net, compile=False, reuse_memory=False)` changes a net in place for
inference only (the Predictor, the demo and evaluate.py; never a net that trains on):
- everywhere: channels_last weights and inputs (oneDNN's faster convolutions);
- on CPU: BatchNorm (and torchvision's FrozenBatchNorm2d) folded into the convolution before
  it; 3x3 convolutions of 128+ channels computed by Winograd's F(4x4, 3x3)
  (`instseg.inference.winograd`: backbone, FPN, RPN head, mask head); RoI pooling as one
  sparse-matrix product per level (`instseg.inference.roi_pooling`; torchvision's CPU
  RoIAlign kernel runs on one thread);
- with `reuse_memory` (a process-wide setting, made only when asked: the command-line tasks
  ask), glibc told to reuse freed memory rather than page-fault every large activation
  afresh (`instseg.utils.memory`);
- with `compile`, torch.compile of the convolutional parts (backbone + FPN, RPN head, mask
  head) with dynamic shapes and frozen weights (one compilation, then every image size),
  in place of Winograd's convolutions.
Detections agree with the plain net's to rounding (benchmarks/bench_inference.py and
tests/inference/test_optimize.py measure by how much).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.detection import MaskRCNN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from instseg.inference.roi_pooling import SparseRoIAlign
from instseg.inference.winograd import WinogradConv2d, is_winograd_compatible
from instseg.utils.memory import reuse_freed_memory

log = logging.getLogger(__name__)
# Narrower 3x3 convolutions are faster direct (oneDNN) than by Winograd on CPU:
# `benchmarks/bench_inference.py --convolutions` times both per shape.
MIN_WINOGRAD_CHANNELS = 128


def optimize_for_inference(net: MaskRCNN, compile: bool = False,
                           reuse_memory: bool = False) -> MaskRCNN:
    """`net`, changed in place for inference only (see the module docstring); call it on the
    device the net will run on. `reuse_memory=True` also sets glibc's allocator for the
    whole process (instseg.utils.memory)."""
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


def _compile_convolutions(net: MaskRCNN) -> None:
    # freezing: weights become constants of the kernels (prepacked layouts, ReLUs fused);
    # right for a net that only predicts from now on.
    options = {"freezing": True} if next(net.parameters()).device.type == "cpu" else {}
    for part in (net.backbone, net.rpn.head, net.roi_heads.mask_head):
        part.compile(dynamic=True, options=options)
    log.info("torch.compile: backbone, RPN head and mask head (compiled at the first image)")
