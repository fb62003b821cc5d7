"""train(cfg), evaluate(cfg) and demo(cfg): instantiate from the config and run; the only code
seeing cfg.

Checkpoints written by `train` carry, under the key "instseg", the resolved config, the
dataset's categories and the validation metrics logged when they were saved, so that
`evaluate` rebuilds the same model and data from the checkpoint alone.

Checkpoints are read with weights_only=True. Resuming (`ckpt_path`) or evaluating (`ckpt`) a
checkpoint written by another model config fails with the differing keys and weights listed;
a config recorded in a checkpoint instantiates allowlisted callables only
(instseg/checkpoints.py).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torchvision.models import get_weight

from instseg import configs
from instseg.checkpoints import (
    DATA_TARGETS,
    MODEL_TARGETS,
    check_fits,
    check_targets,
    config_differences,
    resume_path,
)
from instseg.data.categories import CategoryMap
from instseg.demo.inputs import collect_inputs
from instseg.demo.predictor import Predictor
from instseg.evaluation.coco import CocoEvaluator
from instseg.evaluation.results import check_results, load_results
from instseg.models.inference import optimize_for_inference
from instseg.models.schedules import linear_scaling
from instseg.models.weights import (
    load_pretrained,
    published_state_dict,
    read_torch_file,
    state_dict_of,
)
from instseg.utils import resolvers  # noqa: F401  (registers ${cwd:} for conf/paths)
from instseg.utils.environment import restore_rng_states, rng_states, write_environment
from instseg.utils.errors import InstsegError, exit_on_user_error
from instseg.utils.logs import quiet_lightning_tips
from instseg.utils.sweeps import ddp_children_run_this_job

log = logging.getLogger(__name__)
CONFIG_DIR = configs.CONFIG_DIR  # the package instseg.conf (instseg/configs.py)
CHECKPOINT_KEY = "instseg"
RNG_KEY = "instseg_rng_states"
MONITOR = "val/segm_mAP"
# Keys of the model config read here rather than passed to the LightningModule.
PRETRAINED_KEYS = ("weights", "coco_weights")
# Run options that checkpoints written by earlier versions recorded inside the model config;
# they are now the task's (cfg.runtime, cfg.eval) and passed in, so recorded values are dropped.
FORMER_MODEL_KEYS = ("eval_backend", "nonfinite_loss", "reuse_memory", "fused_optimizer")


class RecordRun(pl.Callback):
    """Adds the resolved config, categories and current val metrics to every checkpoint
    (`config` and `categories` are set once the pipeline knows them)."""

    def __init__(self) -> None:
        self.config: dict = {}
        self.categories: CategoryMap | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "config": self.config,
            "categories": {"ids": list(self.categories.category_ids),
                           "names": list(self.categories.names)},
            # The evaluator's float64 numbers, not the logger's float32 copies.
            "metrics": {f"val/{k}": v for k, v in getattr(pl_module, "last_metrics", {}).items()},
        }
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # The model's random draws (RPN and RoI sampling) continue where they stopped, so a
        # resumed run repeats an uninterrupted one (the data has its own seeded draws).
        if RNG_KEY in checkpoint:
            restore_rng_states(checkpoint[RNG_KEY])


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model on the data of `cfg`; return the final logged metrics."""
    quiet_lightning_tips()
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # generates or checks the files before any model is built
    record = RecordRun()
    callbacks = [*_instantiate_group(cfg.get("callbacks")), record]
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=_instantiate_group(cfg.get("logger")) or False
    )
    _scale_to_total_batch(cfg, trainer)
    module = build_module(cfg, datamodule, **run_options(cfg))
    record.config = OmegaConf.to_container(cfg, resolve=True)
    record.categories = datamodule.categories
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_path(cfg.get("ckpt_path"), trainer)
    if ckpt_path is not None:
        _check_resume(ckpt_path, record.config, module)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, output_dir / "config_resolved.yaml", resolve=True)
        write_environment(output_dir / "environment.json", trainer.world_size)
    with ddp_children_run_this_job():
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = trainer.checkpoint_callback
    if trainer.is_global_zero and checkpoint is not None and checkpoint.best_model_path:
        score = checkpoint.best_model_score  # None after ddp_spawn (not sent back)
        log.info("best %s = %s: %s", checkpoint.monitor,
                 "?" if score is None else f"{float(score):.4f}", checkpoint.best_model_path)
    return metrics


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


def run_options(cfg: DictConfig) -> dict:
    """The LightningModule's run options from the task's config (cfg.runtime, cfg.eval):
    how the run treats the model, not what the model is."""
    options = dict(cfg.get("runtime") or {})
    if cfg.get("eval") is not None:
        options["eval_backend"] = cfg.eval.backend
    return options


def _scale_to_total_batch(cfg: DictConfig, trainer: pl.Trainer) -> None:
    """With cfg.scale_lr_from_batch = R: lr x T/R and step counts x R/T for the actual total
    batch T = world size x data.batch_size x accumulate_grad_batches (the linear scaling
    rule), written back into cfg (so the run's config and checkpoints hold what was used)."""
    reference = cfg.get("scale_lr_from_batch")
    if not reference:
        return
    total = trainer.world_size * cfg.data.batch_size * trainer.accumulate_grad_batches
    scheduler = cfg.model.get("scheduler") or {}
    scaled = linear_scaling(
        reference, total, lr=cfg.model.optimizer.lr, max_steps=cfg.trainer.max_steps,
        warmup_steps=scheduler.get("warmup_steps", 0),
        milestones=list(scheduler.get("milestones", [])),
    )
    with open_dict(cfg):
        cfg.model.optimizer.lr = scaled["lr"]
        cfg.trainer.max_steps = scaled["max_steps"]
        if scheduler:
            cfg.model.scheduler.warmup_steps = scaled["warmup_steps"]
            if "milestones" in scheduler:
                cfg.model.scheduler.milestones = scaled["milestones"]
        cfg.scaling = {"reference_batch": reference, "total_batch": total,
                       "world_size": trainer.world_size, **scaled}
    trainer.fit_loop.epoch_loop.max_steps = scaled["max_steps"]
    log.info("linear scaling: %d processes x %d images x %d accumulated = %d images per step "
             "(recipe: %d): lr %s, max_steps %s, warmup %s steps, milestones %s",
             trainer.world_size, cfg.data.batch_size, trainer.accumulate_grad_batches, total,
             reference, scaled["lr"], scaled["max_steps"], scaled["warmup_steps"],
             scaled["milestones"])


def build_module(cfg: DictConfig, datamodule, **options) -> pl.LightningModule:
    """Instantiate cfg.model for the datamodule's categories, starting from cfg.model.weights
    (`options`: the module's run options, see run_options).

    Pretrained weights keep their own label space (e.g. torchvision's 91 COCO outputs) when it
    includes every dataset category; otherwise the model gets the dataset's categories and
    the class-dependent predictor layers start fresh.
    """
    state, source, pretrained_categories = _pretrained(cfg.model)
    if pretrained_categories is not None and pretrained_categories.covers(
        datamodule.dataset_categories
    ):
        datamodule.use_label_space(pretrained_categories)
    categories = datamodule.categories
    log.info("model label space: %d categories (%s)", len(categories.names),
             ", ".join(categories.names[:10]) + (", ..." if len(categories.names) > 10 else ""))
    with open_dict(cfg):
        cfg.num_classes = categories.num_classes
    module = instantiate_module(cfg, **options)
    if state is not None:
        load_pretrained(module.net, state, source)
    return module


def instantiate_module(cfg: DictConfig, **options) -> pl.LightningModule:
    """cfg.model without the keys that only the pipeline reads (resolved against the root),
    with the run `options` passed in (see run_options)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    dropped = PRETRAINED_KEYS + FORMER_MODEL_KEYS
    try:
        return instantiate({k: v for k, v in model.items() if k not in dropped}, **options)
    except InstantiationException as error:  # a user error in the config: its message alone
        if isinstance(error.__cause__, InstsegError):
            raise error.__cause__ from None
        raise


def _pretrained(model_cfg: DictConfig) -> tuple[dict | None, str, CategoryMap | None]:
    """(state dict, its name, its label space) of model.weights: null, "coco" or a file."""
    spec = model_cfg.get("weights")
    if not spec:
        return None, "", None
    if spec == "coco":
        if not model_cfg.get("coco_weights"):
            raise InstsegError("this model has no published COCO weights (model.coco_weights)")
        enum = get_weight(model_cfg.coco_weights)
        categories = CategoryMap.from_torchvision(enum.meta["categories"])
        return published_state_dict(enum), str(enum), categories
    content = read_torch_file(spec)
    categories = None
    if isinstance(content, dict) and CHECKPOINT_KEY in content:  # else no recorded categories
        recorded = content[CHECKPOINT_KEY]["categories"]
        categories = CategoryMap(tuple(recorded["ids"]), tuple(recorded["names"]))
    return state_dict_of(content, spec), str(spec), categories


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """COCO-evaluate checkpoint `cfg.ckpt` on its recorded validation data (or `cfg.data`),
    or, without a checkpoint, `cfg.model` (with `model.weights`) on `cfg.data`."""
    quiet_lightning_tips()
    if cfg.get("predictions"):
        return _score_predictions(cfg)
    record: dict = {}
    if cfg.get("ckpt"):
        datamodule, module, record = _from_checkpoint(cfg)
    elif cfg.get("model") is not None and cfg.get("data") is not None:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        module = build_module(cfg, datamodule, **run_options(cfg))
    else:
        raise InstsegError("evaluate needs ckpt=PATH, or model=... (with model.weights=...) "
                           "and data=...")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[pl.callbacks.RichProgressBar()])
    # Inference only from here, optimised for the device it will run on (the CPU-only
    # optimisations must not follow the net onto a GPU).
    module.to(trainer.strategy.root_device)
    optimize_for_inference(module.net, compile=cfg.eval.get("compile", False),
                           reuse_memory=cfg.runtime.reuse_memory)
    trainer.validate(module, datamodule=datamodule)

    metrics = {f"val/{k}": v for k, v in module.last_metrics.items()}
    logged = record.get("metrics", {})
    if trainer.is_global_zero:
        _write_report(cfg, module.evaluator, metrics,
                      {"checkpoint": cfg.get("ckpt"), "weights": cfg.model.get("weights"),
                       "logged_in_training": logged})
        note = f" (training logged {logged[MONITOR]:.4f} for this checkpoint)" if logged else ""
        print(f"{MONITOR} = {metrics[MONITOR]:.4f}{note}")
    return metrics


def _score_predictions(cfg: DictConfig) -> dict[str, float]:
    """Score a COCO results file against the data config's validation ground truth, on the
    tasks its records hold (bbox-only results: bbox; segm is reported not applicable)."""
    path = Path(cfg.predictions)
    if cfg.get("data") is None:
        raise InstsegError(f"predictions={path} needs data=... for the ground truth")
    records = load_results(path)  # the file's own errors before the ground truth is read
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    gt = datamodule.val_coco
    results = check_results(records, gt, path)
    evaluator = CocoEvaluator(gt, datamodule.categories, backend=cfg.eval.backend,
                              iou_types=results.tasks)
    scored, evaluator.category_ap, _ = evaluator.score(sorted(gt.imgs), results.records)
    for task, why in results.not_applicable.items():
        print(f"COCO {task}: not applicable: {why}")
    metrics = {f"val/{k}": v for k, v in scored.items()}
    _write_report(cfg, evaluator, metrics, {"predictions": str(path),
                                            "tasks": results.summary()})
    headline = MONITOR if MONITOR in metrics else f"val/{results.tasks[0]}_mAP"
    print(f"{headline} = {metrics[headline]:.4f}")
    return metrics


def _write_report(cfg: DictConfig, evaluator: CocoEvaluator, metrics: dict, about: dict) -> None:
    """metrics.json (`about`, 12 stats per task scored, AP per category) and, unless `about`
    names a scored predictions file, the predictions in COCO results format,
    coco_instances_results.json (RLE masks), in the run directory."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    per_category = {  # NaN (no ground truth) is not json: null
        task: {name: None if math.isnan(ap) else ap for name, ap in aps.items()}
        for task, aps in evaluator.category_ap.items()
    }
    report = about | {"metrics": metrics, "ap_per_category": per_category}
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    if "predictions" in about:  # the predictions are the user's file: nothing to write
        print(f"metrics written to {output_dir / 'metrics.json'}")
        return
    evaluator.write_results(output_dir / "coco_instances_results.json")
    print(f"metrics and predictions written to {output_dir}")


def _from_checkpoint(cfg: DictConfig):
    """Datamodule and module rebuilt from the config recorded in cfg.ckpt (or cfg.data)."""
    module, categories, record = module_from_checkpoint(cfg.ckpt, **run_options(cfg))
    with open_dict(cfg):
        cfg.num_classes = record["config"]["num_classes"]
        if cfg.get("model") is not None:  # model=... as well: it must be the checkpoint's
            _check_same_model(cfg, record["config"]["model"], module)
        cfg.model = record["config"]["model"]
        if cfg.get("data") is None:
            check_targets(record["config"]["data"], DATA_TARGETS, cfg.ckpt, "data")
            cfg.data = record["config"]["data"]
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.use_label_space(categories)
    return datamodule, module, record


def _check_same_model(cfg: DictConfig, recorded: dict, module: pl.LightningModule) -> None:
    """InstsegError when cfg.model's architecture differs from the one recorded in cfg.ckpt (the
    model of cfg.model is built only then, to list the weights that do not fit it)."""
    current = OmegaConf.to_container(cfg.model, resolve=True)
    if config_differences(recorded, current):
        check_fits(cfg.ckpt, recorded, current, module.state_dict(),
                   instantiate_module(cfg).state_dict(),
                   hint="evaluate.py ckpt=PATH builds the checkpoint's own model: leave out "
                        "model=...")


def module_from_checkpoint(path: str | Path, **options):
    """(LightningModule with the checkpoint's weights, its CategoryMap, the run record) of a
    checkpoint written by `train`, built from the model config recorded in it, with the run
    `options` given here (see run_options; the module's defaults otherwise)."""
    record, state_dict = load_checkpoint(path)
    recorded = record["config"]["model"]
    check_targets(recorded, MODEL_TARGETS, path, "model")  # before anything is instantiated
    cfg = OmegaConf.create({"num_classes": record["config"]["num_classes"], "model": recorded})
    module = instantiate_module(cfg, **options)
    check_fits(path, recorded, recorded, state_dict, module.state_dict(),
               hint="(written by another version of instseg's models, or altered)")
    module.load_state_dict(state_dict)
    ids, names = record["categories"]["ids"], record["categories"]["names"]
    return module, CategoryMap(tuple(ids), tuple(names)), record


def module_from_pretrained(cfg: DictConfig):
    """(LightningModule, CategoryMap) of cfg.model with the label space of its pretrained
    cfg.model.weights (e.g. coco: torchvision's 91 COCO ids and names)."""
    state, source, categories = _pretrained(cfg.model)
    if state is None or categories is None:
        raise InstsegError("model.weights must be coco or an instseg checkpoint here "
                           "(its class names come from the weights)")
    with open_dict(cfg):
        cfg.num_classes = categories.num_classes
    module = instantiate_module(cfg)
    load_pretrained(module.net, state, source)
    return module, categories


def load_checkpoint(path: str | Path, mmap: bool = False) -> tuple[dict, dict]:
    """The run record and model state dict of a checkpoint written by `train`."""
    checkpoint = read_torch_file(path, "checkpoint", mmap=mmap)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise InstsegError(f"{path}: not a checkpoint written by instseg's train (no run record)")
    return checkpoint[CHECKPOINT_KEY], checkpoint["state_dict"]


def compose_model_config(model: str, weights: str | None = "coco") -> DictConfig:
    """conf/model/<model>.yaml (with model.weights) composed outside any Hydra app."""
    return configs.compose("demo", [f"model={model}", f"model.weights={weights}"])


def demo(cfg: DictConfig) -> dict[str, float]:
    """Overlays and COCO-format detections for every input of cfg.input (conf/demo.yaml)."""
    from instseg.demo.run import run_demo

    files = collect_inputs(cfg.input)  # a missing input fails before the model is built
    options = dict(score_threshold=cfg.score_threshold, min_size=cfg.min_size,
                   max_size=cfg.max_size, device=cfg.device, compile=cfg.get("compile", False),
                   precision=cfg.get("precision", "32-true"))
    if cfg.get("ckpt"):
        predictor = Predictor.from_checkpoint(cfg.ckpt, **options)
    else:
        try:
            module, categories = module_from_pretrained(cfg)
        except InstsegError as error:
            raise InstsegError(f"{error}\nWithout these weights, ckpt=PATH runs a model "
                               "trained here (no download needed).") from error
        predictor = Predictor(module.net, categories, **options)
    return run_demo(predictor, files, Path(cfg.output_dir), side_by_side=cfg.side_by_side,
                    video_output=cfg.video_output)


def _instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group such as callbacks or logger."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def run_cli(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | None:
    """Entry-script wrapper: user errors end in one message and exit status 1; a run stopped
    by SIGTERM (its checkpoint saved) exits with 143, as a process killed by it would."""
    try:
        with exit_on_user_error():
            metrics = task(cfg)
    except SIGTERMException:  # Lightning's SystemExit, status 0 by itself
        sys.exit(128 + signal.SIGTERM)
    # What a Hydra sweeper optimises (bbox AP for a bbox-only results file).
    return metrics.get(MONITOR, metrics.get("val/bbox_mAP"))
