"""Modules built from a checkpoint written by `train`, or from published / local weights.

- `module_from_checkpoint(path, **options)`: the checkpoint's own model (its recorded config,
  checked against an allowlist first), its weights, categories and run record.
- `module_from_pretrained(cfg, **options)`: a composed config's model (cfg.model) with the
  label space of its pretrained cfg.model.weights (coco: torchvision's 91 ids and names).
- `pretrained_weights(weights, coco_weights)`: what `model.weights` names (null, "coco" for
  torchvision's published COCO weights, or a file: instseg checkpoint, state dict, .pth) as
  (state dict, source name, label space or None).
`options` are the module's run options (see instseg.models.build), passed by the task.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from torchvision.models import get_weight

from instseg.checkpoints.fit import MODEL_TARGETS, check_fits, check_targets
from instseg.checkpoints.record import CHECKPOINT_KEY, load_checkpoint, recorded_categories
from instseg.configs import model_config
from instseg.data.categories import CategoryMap
from instseg.models.build import instantiate_module
from instseg.models.weights import (
    load_pretrained,
    published_state_dict,
    read_torch_file,
    state_dict_of,
)
from instseg.utils.errors import InstsegError


def module_from_checkpoint(path: str | Path,
                           **options) -> tuple[pl.LightningModule, CategoryMap, dict]:
    """(module with the checkpoint's weights, its CategoryMap, the run record)."""
    record, state_dict = load_checkpoint(path)
    recorded = record["config"]["model"]  # resolved when recorded
    check_targets(recorded, MODEL_TARGETS, path, "model")  # before anything is instantiated
    module = instantiate_module(recorded, **options)
    check_fits(path, recorded, recorded, state_dict, module.state_dict(),
               hint="(written by another version of instseg's models, or altered)")
    module.load_state_dict(state_dict)
    return module, recorded_categories(record), record


def pretrained_weights(weights: str | None, coco_weights: str | None = None,
                       ) -> tuple[dict | None, str, CategoryMap | None]:
    """(state dict, its name, its label space) of `weights`: None, "coco" (the torchvision
    weights enum named by `coco_weights`) or a file."""
    if not weights:
        return None, "", None
    if weights == "coco":
        if not coco_weights:
            raise InstsegError("this model has no published COCO weights (model.coco_weights)")
        enum = get_weight(coco_weights)
        categories = CategoryMap.from_torchvision(enum.meta["categories"])
        return published_state_dict(enum), str(enum), categories
    content = read_torch_file(weights)
    categories = None
    if isinstance(content, dict) and CHECKPOINT_KEY in content:  # else no recorded categories
        categories = recorded_categories(content[CHECKPOINT_KEY])
    return state_dict_of(content, weights), str(weights), categories


def module_from_pretrained(cfg: DictConfig,
                           **options) -> tuple[pl.LightningModule, CategoryMap]:
    """(module, CategoryMap) of cfg.model, sized for and loaded with cfg.model.weights (coco,
    or an instseg checkpoint: the weights must name their categories)."""
    state, source, categories = pretrained_weights(cfg.model.get("weights"),
                                                   cfg.model.get("coco_weights"))
    if state is None or categories is None:
        raise InstsegError("model.weights must be coco or an instseg checkpoint here "
                           "(its class names come from the weights)")
    module = instantiate_module(model_config(cfg, categories.num_classes), **options)
    load_pretrained(module.net, state, source)
    return module, categories
