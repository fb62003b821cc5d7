"""What every task shares: the run options it passes to the objects, the model built for a
datamodule, the groups of a config instantiated, and the metric a sweep optimises."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from instseg.checkpoints.build import pretrained_weights
from instseg.configs import model_config
from instseg.evaluation.callback import CocoEvaluation
from instseg.models.build import instantiate_module
from instseg.models.weights import load_pretrained
from instseg.utils.errors import InstsegError
from instseg.utils.trackers import tracker_extra_missing

log = logging.getLogger(__name__)
MONITOR = "val/segm_mAP"


def run_options(cfg: DictConfig) -> dict:
    """The LightningModule's run options from the task's config (cfg.runtime): how the run
    treats the model, not what the model is."""
    return dict(cfg.get("runtime") or {})


def evaluation_callback(cfg: DictConfig) -> CocoEvaluation:
    """The validation callback of cfg.eval (backend, how long ranks wait for scoring, error
    analysis)."""
    minutes = cfg.eval.get("scoring_timeout_min", 120)
    return CocoEvaluation(backend=cfg.eval.backend, timeout=timedelta(minutes=minutes),
                          analyze=bool(cfg.eval.get("analyze", False)))


def build_module(cfg: DictConfig, datamodule, **options) -> tuple[pl.LightningModule, dict]:
    """(module, its resolved model config) of cfg.model for the datamodule's categories,
    starting from cfg.model.weights; `options`: the module's run options.

    Pretrained weights keep their own label space (e.g. torchvision's 91 COCO outputs) when it
    includes every dataset category (the datamodule then labels with it); otherwise the model
    gets the dataset's categories and the class-dependent predictor layers start fresh.
    """
    state, source, pretrained = pretrained_weights(cfg.model.get("weights"),
                                                   cfg.model.get("coco_weights"))
    if pretrained is not None and pretrained.covers(datamodule.dataset_categories):
        datamodule.use_label_space(pretrained)
    categories = datamodule.categories
    log.info("model label space: %d categories (%s)", len(categories.names),
             ", ".join(categories.names[:10]) + (", ..." if len(categories.names) > 10 else ""))
    model = model_config(cfg, categories.num_classes)
    module = instantiate_module(model, **options)
    if state is not None:
        load_pretrained(module.net, state, source)
    return module, model


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group such as callbacks or logger."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def instantiate_loggers(group: DictConfig | None) -> list:
    """The loggers of cfg.logger; a tracker whose package is missing is one InstsegError
    naming the extra that installs it."""
    for name, entry in (group or {}).items():
        missing = tracker_extra_missing(entry.get("_target_", "")) if entry else None
        if missing:
            raise InstsegError(f"logger.{name}: {missing}")
    return instantiate_group(group)
