"""A torch hub cache planted with stand-ins for torchvision's published weights.

No weights can be downloaded here, and a test must not depend on that either way. So the
tests plant, under a temporary TORCH_HOME, a file with exactly the name torchvision's weights
enum downloads to (`<TORCH_HOME>/hub/checkpoints/<basename of its url>`) and exactly the keys
and shapes of the real file: the model is built by torchvision's own builder as it builds it
for those weights (frozen BatchNorm where the real weights have it, and so on), with seeded
random values. torchvision checks a file's hash only when it downloads it, so the planted file
is loaded as the real one would be, through the real code path.

Detection weights are made to find objects: every proposal scores as the weights' category 1
("person" for COCO) with a mask covering most of its box, so a demo draws overlays and writes
masks as it would with the real weights (the real ones find real objects; these find noise).
"""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_weight, list_models
from torchvision.models import get_model_weights as weights_of

# Logit biases that make random detection weights detect category 1 everywhere.
PERSON_LOGIT = 8.0
MASK_LOGIT = 4.0


class WeightsCache:
    """A TORCH_HOME folder; `plant(name)` writes the stand-in for a torchvision weights enum
    (e.g. "MaskRCNN_ResNet50_FPN_Weights.COCO_V1", "ResNet50_Weights.IMAGENET1K_V1") once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        enum = get_weight(name)
        return self.root / "hub" / "checkpoints" / os.path.basename(enum.url)

    def plant(self, *names: str) -> WeightsCache:
        for name in names:
            path = self.path(name)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(stand_in_state_dict(get_weight(name)), path)
        return self


def stand_in_state_dict(enum: WeightsEnum, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded random weights with the names and shapes of `enum`'s published file."""
    torch.manual_seed(seed)
    model = _built_for(enum)
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None:
        with torch.no_grad():
            roi_heads.box_predictor.cls_score.bias[1] = PERSON_LOGIT
            if roi_heads.has_mask():
                roi_heads.mask_predictor.mask_fcn_logits.bias[1] = MASK_LOGIT
    return model.state_dict()


def _built_for(enum: WeightsEnum) -> nn.Module:
    """torchvision's model for `enum`, built by its builder with `weights=enum`, where the
    load of the downloaded state dict is the only step left out."""
    loaded = object()
    built: list[nn.Module] = []
    real_load = nn.Module.load_state_dict

    def load_state_dict(module, state_dict, *args, **kwargs):
        if state_dict is loaded:  # the builder's load of the weights file: keep the model
            built.append(module)
            return None
        return real_load(module, state_dict, *args, **kwargs)

    with mock.patch.object(WeightsEnum, "get_state_dict", lambda self, *a, **k: loaded), \
            mock.patch.object(nn.Module, "load_state_dict", load_state_dict):
        get_model(_model_name(enum), weights=enum)
    return built[0]


def _model_name(enum: WeightsEnum) -> str:
    return next(name for name in list_models() if weights_of(name) is type(enum))
