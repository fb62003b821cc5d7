"""evaluate(cfg): COCO bbox and segm mAP of a checkpoint, of published / local weights, or of
a results file, with metrics.json (and the predictions) written to the run directory.

- `ckpt=PATH`: the checkpoint's own model and (unless data=... is given) data, rebuilt from
  its run record; with model=... as well, that model must be the checkpoint's architecture.
- `model=... model.weights=... data=...`: a model config with its weights, on a data config.
- `predictions=FILE data=...`: a COCO results file (no model), its records checked first;
  bbox-only results score bbox, and segm is reported not applicable.
- `exported=FILE [backend=...] data=...`: a model written by instseg-export, run by
  onnxruntime / openvino (.onnx) or torchscript (.pt), so that a deployed file can be
  shown to keep its checkpoint's mAP.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from instseg.checkpoints.build import module_from_checkpoint
from instseg.checkpoints.fit import DATA_TARGETS, check_fits, check_targets, config_differences
from instseg.configs import model_config
from instseg.evaluation.analysis import error_analysis, print_error_analysis
from instseg.evaluation.callback import ANALYSIS_NOT_FOR_LVIS
from instseg.evaluation.coco import CocoEvaluator
from instseg.evaluation.plots import analysis_figure, save_figure, tide_figure
from instseg.evaluation.results import check_results, load_results
from instseg.export.runtimes import ExportedModel, load_exported
from instseg.inference.optimize import optimize_for_inference
from instseg.models.build import instantiate_module
from instseg.models.tta import TestTimeAugmentation
from instseg.tasks.common import MONITOR, build_module, evaluation_callback, run_options
from instseg.utils.errors import InstsegError
from instseg.utils.logs import quiet_lightning_tips


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """The COCO metrics ({"val/segm_mAP": ..., ...}) of the mode `cfg` asks for."""
    quiet_lightning_tips()
    if cfg.get("predictions"):
        return _score_predictions(cfg)
    if cfg.get("exported"):
        return _score_exported(cfg)
    record: dict = {}
    if cfg.get("ckpt"):
        datamodule, module, record = _from_checkpoint(cfg)
    elif cfg.get("model") is not None and cfg.get("data") is not None:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        module, _ = build_module(cfg, datamodule, **run_options(cfg))
    else:
        raise InstsegError("evaluate needs ckpt=PATH, or model=... (with model.weights=...) "
                           "and data=...")
    if cfg.eval.get("tta"):
        module.test_time_augmentation = TestTimeAugmentation(tuple(cfg.eval.tta_scales),
                                                             bool(cfg.eval.tta_flip))
    evaluation = evaluation_callback(cfg)
    trainer = instantiate(cfg.trainer, logger=False,
                          callbacks=[pl.callbacks.RichProgressBar(), evaluation])
    # Inference only from here, optimised for the device it will run on (the CPU-only
    # optimisations must not follow the net onto a GPU).
    module.to(trainer.strategy.root_device)
    optimize_for_inference(module.net, compile=cfg.eval.get("compile", False),
                           reuse_memory=cfg.runtime.reuse_memory)
    trainer.validate(module, datamodule=datamodule)

    metrics = evaluation.metrics
    logged = record.get("metrics", {})
    if trainer.is_global_zero:
        model = record["config"]["model"] if record else cfg.model
        _write_report(cfg, evaluation.evaluator, metrics,
                      {"checkpoint": cfg.get("ckpt"), "weights": model.get("weights"),
                       "logged_in_training": logged,
                       "test_time_augmentation": _tta_summary(module)},
                      analysis=evaluation.analysis)
        note = f" (training logged {logged[MONITOR]:.4f} for this checkpoint)" if logged else ""
        print(f"{MONITOR} = {metrics[MONITOR]:.4f}{note}")
    return metrics


class ExportedModule(pl.LightningModule):
    """An exported model in Lightning's validation loop (the same batches, callback and
    report as a checkpoint's evaluation); it runs on the CPU, as exported."""

    def __init__(self, model: ExportedModel) -> None:
        super().__init__()
        self.model = model

    def validation_step(self, batch, batch_idx: int):
        images, targets, _ = batch
        if not images:
            return None
        return [t["image_id"] for t in targets], self.model(images)


def _score_exported(cfg: DictConfig) -> dict[str, float]:
    if cfg.get("data") is None:
        raise InstsegError(f"exported={cfg.exported} needs data=... for the images and ground "
                           "truth")
    asked = [name for name, value in (("ckpt", cfg.get("ckpt")), ("eval.tta", cfg.eval.tta),
                                      ("eval.compile", cfg.eval.compile)) if value]
    if asked:
        raise InstsegError(f"exported={cfg.exported} runs as it was exported: leave "
                           f"{', '.join(asked)} unset")
    model = load_exported(cfg.exported, cfg.get("backend"))
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.use_label_space(model.categories)
    evaluation = evaluation_callback(cfg)
    trainer = instantiate(cfg.trainer, logger=False, accelerator="cpu", devices=1,
                          callbacks=[pl.callbacks.RichProgressBar(), evaluation])
    trainer.validate(ExportedModule(model), datamodule=datamodule)
    metrics = evaluation.metrics
    _write_report(cfg, evaluation.evaluator, metrics,
                  {"exported": str(cfg.exported), "backend": model.backend,
                   "export": model.metadata}, analysis=evaluation.analysis)
    print(f"{MONITOR} = {metrics[MONITOR]:.4f} ({model.backend}, {cfg.exported})")
    return metrics


def _tta_summary(module) -> dict | None:
    tta = module.test_time_augmentation
    return None if tta is None else {"scales": list(tta.scales), "flip": tta.flip}


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
    scored, category_ap, _ = evaluator.score(sorted(gt.imgs), results.records)
    for task, why in results.not_applicable.items():
        print(f"COCO {task}: not applicable: {why}")
    metrics = {f"val/{k}": v for k, v in scored.items()}
    analysis = None
    if cfg.eval.get("analyze"):
        if evaluator.lvis:
            raise InstsegError(ANALYSIS_NOT_FOR_LVIS)
        analysis = error_analysis(gt, results.records, results.tasks, cfg.eval.backend,
                                  sorted(gt.imgs), mask_areas=True)
    _write_report(cfg, None, metrics, {"predictions": str(path), "tasks": results.summary()},
                  category_ap, analysis)
    headline = MONITOR if MONITOR in metrics else f"val/{results.tasks[0]}_mAP"
    print(f"{headline} = {metrics[headline]:.4f}")
    return metrics


def _write_report(cfg: DictConfig, evaluator: CocoEvaluator | None, metrics: dict,
                  about: dict, category_ap: dict | None = None,
                  analysis: dict | None = None) -> None:
    """metrics.json (`about`, 12 stats per task scored, AP per category, the error analysis
    if any, whose figures go to error_analysis.png and tide_errors.png) and, with an
    `evaluator` of a model's detections, the predictions in COCO results format,
    coco_instances_results.json (RLE masks), in the run directory."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    category_ap = evaluator.category_ap if evaluator is not None else category_ap
    per_category = {  # NaN (no ground truth) is not json: null
        task: {name: None if math.isnan(ap) else ap for name, ap in aps.items()}
        for task, aps in category_ap.items()
    }
    report = about | {"metrics": metrics, "ap_per_category": per_category}
    if analysis is not None:
        report["error_analysis"] = analysis
        _write_analysis(analysis, output_dir)
    (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
    if evaluator is None:  # the predictions are the user's file: nothing to write
        print(f"metrics written to {output_dir / 'metrics.json'}")
        return
    evaluator.write_results(output_dir / "coco_instances_results.json")
    print(f"metrics and predictions written to {output_dir}")


def _write_analysis(analysis: dict, output_dir: Path) -> None:
    print_error_analysis(analysis)
    for name, draw in (("error_analysis.png", analysis_figure), ("tide_errors.png", tide_figure)):
        save_figure(draw(analysis), output_dir / name)
    print(f"error analysis figures: {output_dir / 'error_analysis.png'}, "
          f"{output_dir / 'tide_errors.png'}")


def _from_checkpoint(cfg: DictConfig):
    """(datamodule, module, run record) rebuilt from cfg.ckpt (data: cfg.data if given)."""
    module, categories, record = module_from_checkpoint(cfg.ckpt, **run_options(cfg))
    recorded = record["config"]
    if cfg.get("model") is not None:  # model=... as well: it must be the checkpoint's
        _check_same_model(cfg, recorded, module)
    data = cfg.get("data")
    if data is None:
        check_targets(recorded["data"], DATA_TARGETS, cfg.ckpt, "data")
        data = recorded["data"]
    datamodule = instantiate(data)
    datamodule.prepare_data()
    datamodule.use_label_space(categories)
    return datamodule, module, record


def _check_same_model(cfg: DictConfig, recorded: dict, module: pl.LightningModule) -> None:
    """InstsegError when cfg.model's architecture differs from the one recorded in cfg.ckpt
    (the model of cfg.model is built only then, to list the weights that do not fit it)."""
    current = model_config(cfg, recorded["num_classes"])
    if config_differences(recorded["model"], current):
        check_fits(cfg.ckpt, recorded["model"], current, module.state_dict(),
                   instantiate_module(current).state_dict(),
                   hint="evaluate.py ckpt=PATH builds the checkpoint's own model: leave out "
                        "model=...")


