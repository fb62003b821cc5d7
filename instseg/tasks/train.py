"""train(cfg): fit the model of cfg.model on the data of cfg.data, as a straight line.

The task derives what the run needs and records it: the model's number of outputs from the
dataset's (or the pretrained weights') categories, and with `scale_lr_from_batch` the linear
scaling of lr and step counts to the actual total batch. `cfg` itself is not changed; the
run's config with those values is saved as config_resolved.yaml and in every checkpoint's
run record (instseg.checkpoints.record), so `evaluate.py ckpt=` rebuilds the same model and
data from the checkpoint alone.

Resuming (`ckpt_path`) a checkpoint of another architecture fails with the differing keys and
weights listed (instseg.checkpoints.fit); checkpoints are read with weights_only=True.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from instseg.checkpoints.fit import check_fits, config_differences
from instseg.checkpoints.io import resume_path
from instseg.checkpoints.record import RecordRun, load_checkpoint
from instseg.models.cost import model_cost
from instseg.models.schedules import linear_scaling
from instseg.tasks.common import (
    build_module,
    evaluation_callback,
    instantiate_group,
    instantiate_loggers,
    run_options,
)
from instseg.utils.environment import write_environment
from instseg.utils.logs import quiet_lightning_tips
from instseg.utils.sweeps import ddp_children_run_this_job
from instseg.utils.trackers import TrackRun

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model on the data of `cfg`; return the final logged metrics."""
    quiet_lightning_tips()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # generates or checks the files before any model is built
    scaling = scaling_for(cfg)
    run = _with_scaling(cfg, scaling)  # the run's own config: cfg stays as given
    module, model = build_module(run, datamodule, **run_options(run))
    with open_dict(run):
        run.model = model
        run.num_classes = datamodule.categories.num_classes
    evaluation = evaluation_callback(run)
    config = OmegaConf.to_container(run, resolve=True)
    record = RecordRun(config, datamodule.categories, evaluation)
    callbacks = [*instantiate_group(run.get("callbacks")), evaluation, record, TrackRun(config)]
    trainer = instantiate(run.trainer, callbacks=callbacks,
                          logger=instantiate_loggers(run.get("logger")) or False)
    output_dir = Path(run.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_path(run.get("ckpt_path"), trainer)
    if ckpt_path is not None:
        _check_resume(ckpt_path, config, module)
    if trainer.is_global_zero:
        OmegaConf.save(run, output_dir / "config_resolved.yaml", resolve=True)
        module.cost = model_cost(module.net)  # the model summary prints it
        write_environment(output_dir / "environment.json", trainer.world_size,
                          model=_model_record(module))
    with ddp_children_run_this_job():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    _log_best(trainer)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def scaling_for(cfg: DictConfig) -> dict | None:
    """With cfg.scale_lr_from_batch = R: the linear scaling rule for the actual total batch
    T = world size x data.batch_size x accumulate_grad_batches (lr x T/R, step counts x R/T),
    as {"reference_batch", "total_batch", "world_size", "factor", "lr", "max_steps",
    "warmup_steps", "milestones"}; None without it."""
    reference = cfg.get("scale_lr_from_batch")
    if not reference:
        return None
    probe = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    total = probe.world_size * cfg.data.batch_size * probe.accumulate_grad_batches
    scheduler = cfg.model.get("scheduler") or {}
    scaled = linear_scaling(
        reference, total, lr=cfg.model.optimizer.lr, max_steps=cfg.trainer.max_steps,
        warmup_steps=scheduler.get("warmup_steps", 0),
        milestones=list(scheduler.get("milestones", [])),
    )
    log.info("linear scaling: %d processes x %d images x %d accumulated = %d images per step "
             "(recipe: %d): lr %s, max_steps %s, warmup %s steps, milestones %s",
             probe.world_size, cfg.data.batch_size, probe.accumulate_grad_batches, total,
             reference, scaled["lr"], scaled["max_steps"], scaled["warmup_steps"],
             scaled["milestones"])
    return {"reference_batch": reference, "total_batch": total,
            "world_size": probe.world_size, **scaled}


def _with_scaling(cfg: DictConfig, scaling: dict | None) -> DictConfig:
    """A copy of cfg with the scaled lr, step counts and schedule, and `scaling` recorded."""
    run = copy.deepcopy(cfg)
    if scaling is None:
        return run
    with open_dict(run):
        run.model.optimizer.lr = scaling["lr"]
        run.trainer.max_steps = scaling["max_steps"]
        if run.model.get("scheduler"):
            run.model.scheduler.warmup_steps = scaling["warmup_steps"]
            if "milestones" in run.model.scheduler:
                run.model.scheduler.milestones = scaling["milestones"]
        run.scaling = scaling
    return run


def _check_resume(path: str, config: dict, module: pl.LightningModule) -> None:
    """InstsegError unless checkpoint `path` was written by this run's architecture
    (model.net and the weights); run options, optimizer and schedule may differ."""
    recorded, state = load_checkpoint(path, mmap=True)  # tensors stay on disk
    compared = check_fits(
        path, recorded["config"]["model"], config["model"], state, module.state_dict(),
        hint="Resume with the overrides of the run that wrote it (its "
             ".hydra/overrides.yaml); to fine-tune from it instead: model.weights=PATH.")
    log.info("resuming %s: same architecture (%d keys under model.net and %d weights compared)",
             path, compared, len(state))
    for part in ("optimizer", "scheduler"):
        changed = config_differences(recorded["config"]["model"], config["model"], part)
        if changed:  # Lightning restores the checkpoint's optimizer and scheduler states
            log.warning("model.%s differs from the checkpoint's (%s): the resumed run continues "
                        "with the checkpoint's %s state, so these values do not take effect; "
                        "to train with them, start from its weights: model.weights=%s",
                        part, "; ".join(changed), part, path)


def _model_record(module: pl.LightningModule) -> dict:
    """What environment.json records of the model: parameters and compute per image."""
    parameters = sum(p.numel() for p in module.net.parameters())
    trainable = sum(p.numel() for p in module.net.parameters() if p.requires_grad)
    return {"parameters": parameters, "trainable_parameters": trainable,
            "cost": module.cost.as_dict()}


def _log_best(trainer: pl.Trainer) -> None:
    checkpoint = trainer.checkpoint_callback
    if trainer.is_global_zero and checkpoint is not None and checkpoint.best_model_path:
        score = checkpoint.best_model_score  # None after ddp_spawn (not sent back)
        log.info("best %s = %s: %s", checkpoint.monitor,
                 "?" if score is None else f"{float(score):.4f}", checkpoint.best_model_path)
