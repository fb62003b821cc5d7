"""train(cfg) and evaluate(cfg): instantiate from the config and run; the only code seeing cfg.

Checkpoints written by `train` carry, under the key "instseg", the resolved config, the
dataset's categories and the validation metrics logged when they were saved, so that
`evaluate` rebuilds the same model and data from the checkpoint alone.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from instseg.data.categories import CategoryMap
from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)
CHECKPOINT_KEY = "instseg"
MONITOR = "val/segm_mAP"


class RecordRun(pl.Callback):
    """Adds the resolved config, categories and current val metrics to every checkpoint."""

    def __init__(self, config: dict, categories: CategoryMap) -> None:
        self.config = config
        self.categories = categories

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config,
            "categories": {"ids": list(self.categories.category_ids),
                           "names": list(self.categories.names)},
            # The evaluator's float64 numbers, not the logger's float32 copies.
            "metrics": {f"val/{k}": v for k, v in getattr(pl_module, "last_metrics", {}).items()},
        }


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model on the data of `cfg`; return the final logged metrics."""
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # generates or checks the files before any model is built
    categories = datamodule.categories
    with open_dict(cfg):
        cfg.num_classes = categories.num_classes
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)
    log.info("data: %d categories %s", len(categories.names), ", ".join(categories.names))

    module = instantiate(cfg.model)
    config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [*_instantiate_group(cfg.get("callbacks")), RecordRun(config, categories)]
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=_instantiate_group(cfg.get("logger")) or False
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    if trainer.is_global_zero and checkpoint is not None and checkpoint.best_model_path:
        log.info("best %s = %.4f: %s", checkpoint.monitor, float(checkpoint.best_model_score),
                 checkpoint.best_model_path)
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """COCO-evaluate checkpoint `cfg.ckpt` on its recorded validation data (or `cfg.data`)."""
    record, state_dict = load_checkpoint(cfg.ckpt)
    recorded = OmegaConf.create(record["config"])
    with open_dict(cfg):
        cfg.num_classes = recorded.num_classes
        cfg.model = recorded.model
        cfg.model.eval_backend = cfg.eval.backend
        if cfg.get("data") is None:
            cfg.data = recorded.data
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    expected = CategoryMap(tuple(record["categories"]["ids"]), tuple(record["categories"]["names"]))
    if datamodule.categories != expected:
        raise InstsegError(
            f"{cfg.ckpt} was trained on categories {list(expected.names)}, but the evaluation "
            f"data has {list(datamodule.categories.names)}"
        )
    module = instantiate(cfg.model)
    module.load_state_dict(state_dict)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[pl.callbacks.RichProgressBar()])
    trainer.validate(module, datamodule=datamodule)

    metrics = {f"val/{k}": v for k, v in module.last_metrics.items()}
    report = {"checkpoint": str(cfg.ckpt), "metrics": metrics,
              "logged_in_training": record.get("metrics", {})}
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    logged = record.get("metrics", {}).get(MONITOR)
    print(f"{MONITOR} = {metrics[MONITOR]:.4f}"
          + (f" (training logged {logged:.4f} for this checkpoint)" if logged is not None else ""))
    print(f"metrics written to {output_dir / 'metrics.json'}")
    return metrics


def load_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """The run record and model state dict of a checkpoint written by `train`."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InstsegError(f"{path}: cannot load checkpoint ({error})") from error
    if CHECKPOINT_KEY not in checkpoint:
        raise InstsegError(f"{path}: not a checkpoint written by instseg's train (no run record)")
    return checkpoint[CHECKPOINT_KEY], checkpoint["state_dict"]


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group such as callbacks or logger."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def run_cli(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | None:
    """Entry-script wrapper: user errors end in one message and exit status 1."""
    try:
        metrics = task(cfg)
    except InstsegError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    return metrics.get(MONITOR)  # what a Hydra sweeper optimises
