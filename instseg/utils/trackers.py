"""What a run gives its experiment trackers beyond Lightning's scalars: the resolved config as
hyperparameters, figures, and the best checkpoint as an artifact, for every logger the run has
(conf/logger: tensorboard, csv, wandb, mlflow, any combination).

- `tracker_extra_missing(target)`: the one-line message for a tracker whose package is not
  installed (`pip install -e ".[wandb]"`), None when it is or the target is not a tracker.
- `log_figures(loggers, figures, step)`: matplotlib figures as TensorBoard images, W&B images
  (`WandbLogger.log_image`) and MLflow artifacts (`<tag>/step_<step>.png`); CSV has none.
- `TrackRun(config)`: a callback that logs `config` (the run's resolved config) as every
  logger's hyperparameters at fit start, and at fit end the best checkpoint as a W&B artifact
  (type "model", alias "best") and an MLflow artifact (`checkpoints/`, tags `best_checkpoint`,
  `best_score`, ...), each with the score; at teardown it finishes the W&B run.
Scalars (`train/loss_mask`, `val/segm_mAP`, `val/segm_AP/<category>`) need nothing here:
`LightningModule.log` sends them to every logger under the same names.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

log = logging.getLogger(__name__)
# Lightning logger class -> (the module it imports, the instseg extra that installs it).
TRACKER_PACKAGES = {"WandbLogger": ("wandb", "wandb"), "MLFlowLogger": ("mlflow", "mlflow")}
TRACKERS_WITH_FIGURES = (TensorBoardLogger, WandbLogger, MLFlowLogger)


def tracker_extra_missing(target: str) -> str | None:
    """For a logger's `_target_`: the message naming the extra to install, if its package is
    missing."""
    module, extra = TRACKER_PACKAGES.get(target.rsplit(".", 1)[-1], (None, None))
    if module is None:
        return None
    try:
        importlib.import_module(module)  # imported, not looked up: a broken install counts too
    except ImportError:
        pass
    else:
        return None
    return (f"{target} needs the {module} package: pip install -e \".[{extra}]\" in an instseg "
            f"checkout (or pip install \"instseg[{extra}]\")")


def log_figures(loggers: list[Logger], figures: dict, step: int) -> None:
    """Log each {tag: matplotlib figure} to every logger that takes images (rank 0 only)."""
    for logger in loggers:
        for tag, figure in figures.items():
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(tag, figure, global_step=step, close=False)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[figure], step=step)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_figure(logger.run_id, figure, f"{tag}/step_{step:06d}.png")


class TrackRun(pl.Callback):
    """See the module docstring. `config`: the run's resolved config (a plain dict)."""

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cost = getattr(pl_module, "cost", None)
        hyperparameters = {**self.config, **({"model_cost": cost.as_dict()} if cost else {})}
        for logger in trainer.loggers:
            logger.log_hyperparams(hyperparameters)  # rank 0 only, in each Lightning logger

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        if not trainer.is_global_zero or checkpoint is None or not checkpoint.best_model_path:
            return
        path = Path(checkpoint.best_model_path)
        score = checkpoint.best_model_score
        metadata = {"monitor": checkpoint.monitor, "step": trainer.global_step,
                    "score": None if score is None else float(score)}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                _wandb_artifact(logger, path, metadata)
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), "checkpoints")
                for key, value in {"checkpoint": path.name, **metadata}.items():
                    logger.experiment.set_tag(logger.run_id, f"best_{key}", str(value))
            else:
                continue
            log.info("best checkpoint %s logged to %s", path.name, type(logger).__name__)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning leaves a W&B run open (its finalize does not finish it): the next run of
        # the same process, a sweep's next job, would log into it.
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                logger.experiment.finish()


def _wandb_artifact(logger: WandbLogger, path: Path, metadata: dict) -> None:
    import wandb

    artifact = wandb.Artifact(f"model-{logger.experiment.id}", type="model", metadata=metadata)
    artifact.add_file(str(path), name=path.name)
    logger.experiment.log_artifact(artifact, aliases=["best"])
