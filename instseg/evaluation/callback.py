"""The Lightning hook that feeds validation to a `CocoEvaluator`: the metric is evaluation's,
not the model's.

`CocoEvaluation(backend)` takes what the module's `validation_step` returns, (image ids,
detections as torchvision dicts, masks unpasted or pasted), for the datamodule's `val_coco`
ground truth and `categories` label space (as `instseg.data.CocoDataModule` exposes them).
At the end of each validation (not the sanity check) it logs `val/segm_mAP`,
`val/bbox_mAP50`, ... (12 stats per task), `val/<task>_AP/<category>` (categories with
ground truth) and a precision-recall figure to every logger that takes figures (TensorBoard,
W&B, MLflow: `instseg.utils.trackers.log_figures`).
`metrics` holds the last validation's numbers (float64, as the evaluator computed them) and
`evaluator` its detections, for reports. With `analyze`, rank 0 also runs the error analysis
(`instseg.evaluation.analysis.error_analysis`: COCO's analyze() curves and TIDE's errors)
while the other ranks wait with the scoring (`CocoEvaluator.evaluate`), keeps it in
`analysis` and logs both figures the same way.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytorch_lightning as pl

from instseg.evaluation.coco import SCORING_TIMEOUT, CocoEvaluator
from instseg.evaluation.plots import (
    analysis_figure,
    close_figure,
    precision_recall_figure,
    tide_figure,
)
from instseg.utils.errors import InstsegError
from instseg.utils.trackers import TRACKERS_WITH_FIGURES, log_figures

ANALYSIS_NOT_FOR_LVIS = ("eval.analyze: the error analysis follows COCO's rules (every "
                         "category exhaustively annotated), which LVIS's federated ground "
                         "truth does not; leave it off for LVIS data")


class CocoEvaluation(pl.Callback):
    def __init__(self, backend: str = "faster_coco_eval",
                 timeout: timedelta = SCORING_TIMEOUT, analyze: bool = False) -> None:
        """timeout: how long other ranks wait for rank 0's scoring (`CocoEvaluator`);
        analyze: the error analysis at each validation (see the module docstring)."""
        self.backend = backend
        self.timeout = timeout
        self.analyze = analyze
        self.evaluator: CocoEvaluator | None = None
        self.metrics: dict[str, float] = {}
        self.analysis: dict | None = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        self.evaluator = CocoEvaluator(datamodule.val_coco, datamodule.categories,
                                       backend=self.backend, verbose=trainer.is_global_zero,
                                       timeout=self.timeout)
        if self.analyze and self.evaluator.lvis:
            raise InstsegError(ANALYSIS_NOT_FOR_LVIS)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if outputs is not None:
            image_ids, detections = outputs
            self.evaluator.process(image_ids, detections)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.metrics = {f"val/{k}": v for k, v in self.evaluator.evaluate(self.analyze).items()}
        # Every rank holds the same numbers (rank 0 computed them): no reduction needed.
        pl_module.log_dict(self.metrics, sync_dist=False)
        per_category = {
            f"val/{task}_AP/{name}": ap
            for task, aps in self.evaluator.category_ap.items() for name, ap in aps.items()
            if not math.isnan(ap)  # categories without ground truth have no AP
        }
        pl_module.log_dict(per_category, sync_dist=False)
        if not trainer.is_global_zero:
            return
        self.analysis = self.evaluator.analysis
        if not any(isinstance(logger, TRACKERS_WITH_FIGURES) for logger in trainer.loggers):
            return
        figures = {"val/precision_recall": precision_recall_figure(self.evaluator.pr_curves)}
        if self.analysis is not None:
            figures["val/error_analysis"] = analysis_figure(self.analysis)
            figures["val/tide_errors"] = tide_figure(self.analysis)
        log_figures(trainer.loggers, figures, trainer.global_step)
        for figure in figures.values():
            close_figure(figure)
