"""Pretrained weights: torchvision's published files, local files, and the fine-tune rule.

`load_pretrained(net, state)` loads a state dict into a built MaskRCNN: every key must match
in name and shape, except the class-dependent predictor layers, which are left freshly
initialised when their shapes differ (fine-tuning to another number of classes) and are
logged by name. Anything else missing or unexpected is an error that lists the keys.
Files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_weight

from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)

# The layers whose shape depends on the number of classes.
CLASS_DEPENDENT_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def published_state_dict(weights: WeightsEnum | str) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum (or its name, e.g.
    "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"), from the torch hub cache or downloaded."""
    weights = get_weight(weights) if isinstance(weights, str) else weights
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        file_name = os.path.basename(weights.url)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise InstsegError(
            f"cannot download the pretrained weights {weights} ({error}).\n"
            f"  Download {weights.url}\n  and put it at {cache / file_name}\n"
            "  (the torch hub cache; set TORCH_HOME to move it). A local file works too: "
            "model.weights=/path/to/file.pth"
        ) from error


def read_torch_file(path: str | Path, what: str = "weights", mmap: bool = False):
    """`torch.load(path, weights_only=True)` on the CPU, with one clear error per failure
    (`mmap`: tensors are read from the file only where used)."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"{what} file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        raise InstsegError(f"{path}: cannot load {what} ({error})") from error


def state_dict_of(content, path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict inside the loaded `content` of file `path`."""
    if isinstance(content, dict) and "state_dict" in content:  # a Lightning checkpoint
        content = {k.removeprefix("net."): v for k, v in content["state_dict"].items()}
    if isinstance(content, dict) and "model" in content and isinstance(content["model"], dict):
        content = content["model"]  # torchvision reference scripts' checkpoints
    if not isinstance(content, dict) or not all(torch.is_tensor(v) for v in content.values()):
        raise InstsegError(f"{path}: holds no state dict of tensors")
    return content


def load_pretrained(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load `state` into `net` by the fine-tune rule; return the skipped keys."""
    own = net.state_dict()
    skipped = [
        k for k in state
        if k in own and k.startswith(CLASS_DEPENDENT_PREFIXES) and state[k].shape != own[k].shape
    ]
    # BatchNorm's num_batches_tracked is a counter, not a weight: files saved from BatchNorm2d
    # hold it, FrozenBatchNorm2d has none, and BatchNorm2d starts it at 0 either way.
    counters = {k for k in state.keys() | own.keys() if k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state and k not in counters]
    unexpected = [k for k in state if k not in own and k not in counters]
    mismatched = [
        f"{k}: {tuple(state[k].shape)} in {source}, {tuple(own[k].shape)} in the model"
        for k in state if k in own and k not in skipped and state[k].shape != own[k].shape
    ]
    problems = [("missing from the weights", missing), ("not in the model", unexpected),
                ("of another shape", mismatched)]
    if any(keys for _, keys in problems):
        lines = [f"  {what}: {', '.join(keys)}" for what, keys in problems if keys]
        raise InstsegError(f"{source} does not fit the model:\n" + "\n".join(lines))
    net.load_state_dict({k: v for k, v in state.items() if k not in skipped and k in own},
                        strict=False)
    if skipped:
        log.info("loaded %s; re-initialised for the new number of classes: %s",
                 source, ", ".join(skipped))
    else:
        log.info("loaded %s (all %d keys)", source, len(state))
    return skipped
