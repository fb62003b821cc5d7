"""Backbone-with-FPN builders for torchvision's MaskRCNN, configurable from YAML.

Each returns a `BackboneWithFPN`: images [B, 3, H, W] -> OrderedDict of FPN levels ("0", "1",
..., "pool") with `out_channels` channels, as `MaskRCNN(backbone=...)` expects. The body is a
torchvision classification model (`torchvision.models.get_model(arch)`), so parameter names
equal those of torchvision's detection builders and their checkpoints load strictly.

`norm` picks the body's normalisation: "frozen_bn" (torchvision's choice with pretrained
weights), "bn" (its choice from scratch), "gn" (GroupNorm, 32 groups) or "syncbn" (SyncBatchNorm;
trains under DDP on GPUs only). `weights` names ImageNet weights of the body ("IMAGENET1K_V1",
"DEFAULT"), fetched through torchvision's weights API.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import get_model, get_model_weights
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from instseg.models.weights import load_pretrained, published_state_dict

# ResNet stages counted from the top, the order in which torchvision unfreezes them.
RESNET_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


def group_norm(num_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm called like BatchNorm2d (channels first), as `norm_layer` arguments are."""
    return nn.GroupNorm(num_groups, num_channels)


NORM_LAYERS = {
    "frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d, "gn": group_norm,
    "syncbn": nn.SyncBatchNorm,
}


def resnet_fpn(
    arch: str = "resnet50",
    weights: str | None = None,
    norm: str = "bn",
    trainable_layers: int = 5,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    out_channels: int = 256,
    fpn_norm: str | None = None,
) -> BackboneWithFPN:
    """FPN over a ResNet/ResNeXt body; stages below the top `trainable_layers` are frozen."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in 0..5, got {trainable_layers}")
    body = _body(arch, weights, norm)
    trainable = list(RESNET_STAGES[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    _freeze(body, lambda name: not any(name.startswith(stage) for stage in trainable))
    stem_channels = body.inplanes // 8  # layer1 of a ResNet outputs inplanes / 8 channels
    return BackboneWithFPN(
        body,
        return_layers={f"layer{k}": str(i) for i, k in enumerate(returned_layers)},
        in_channels_list=[stem_channels * 2 ** (k - 1) for k in returned_layers],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=NORM_LAYERS[fpn_norm] if fpn_norm else None,
    )


def mobilenet_fpn(
    arch: str = "mobilenet_v3_large",
    weights: str | None = None,
    norm: str = "bn",
    trainable_layers: int = 6,
    out_channels: int = 256,
) -> BackboneWithFPN:
    """FPN over the last two stages of a MobileNetV3, as torchvision's detection models use it."""
    features = _body(arch, weights, norm).features
    # Stage boundaries: the first conv, every downsampling block, the last conv.
    stages = [0] + [i for i, block in enumerate(features) if getattr(block, "_is_cn", False)]
    stages.append(len(features) - 1)
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(f"trainable_layers must be in 0..{len(stages)}, got {trainable_layers}")
    first_trainable = len(features) if trainable_layers == 0 else stages[-trainable_layers]
    _freeze(features, lambda name: int(name.split(".")[0]) < first_trainable)
    returned = stages[-2:]
    return BackboneWithFPN(
        features,
        return_layers={str(index): str(i) for i, index in enumerate(returned)},
        in_channels_list=[features[index].out_channels for index in returned],
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


def _body(arch: str, weights: str | None, norm: str) -> nn.Module:
    if norm not in NORM_LAYERS:
        raise ValueError(f"norm must be one of {sorted(NORM_LAYERS)}, got {norm!r}")
    body = get_model(arch, weights=None, norm_layer=NORM_LAYERS[norm])
    if weights:
        enum = get_model_weights(arch)[weights]
        load_pretrained(body, published_state_dict(enum), source=str(enum))
    return body


def _freeze(module: nn.Module, frozen) -> None:
    for name, parameter in module.named_parameters():
        if frozen(name):
            parameter.requires_grad_(False)
