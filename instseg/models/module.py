"""LightningModule around a built torchvision Mask R-CNN.

Training: the model's loss dict is summed; every term is logged as `train/<term>` and the
sum as `train/loss`. Validation is COCO mAP, not a loss, and the metric is not the model's:
`validation_step` returns (image ids, detections with masks left at the mask head's 28x28,
`instseg.models.forward.predict_unpasted`), and an evaluation callback
(`instseg.evaluation.callback.CocoEvaluation`, added by the train and evaluate tasks) scores
them and logs `val/segm_mAP`, `val/bbox_mAP50`, ...

A NaN or Inf loss stops training, or skips that step's update, by `nonfinite_loss`
(`instseg.models.nonfinite`); non-finite weights are never checkpointed.

On CPU, with `reuse_memory` (the train task passes it), fit has glibc keep freed memory for
the next step (instseg.utils.memory): every step allocates the same large activations and
gradients, which glibc would otherwise hand back to the kernel and fault in again, zeroed.

The optimizer is torch's fused implementation where it has one (`fused_optimizer`,
instseg.models.optimizers), except with mixed precision (16-mixed, bf16-mixed) and gradient
clipping: Lightning refuses a fused optimizer there (under 16-mixed, gradients must be
unscaled before they are clipped, and a fused optimizer unscales them only inside its step),
so there the optimizer is built as configured.
"""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import MixedPrecision
from torch import nn

from instseg.models.forward import predict_unpasted
from instseg.models.nonfinite import NonFiniteGuard
from instseg.models.optimizers import build_optimizer
from instseg.utils.memory import reuse_freed_memory

# What torchvision's Mask R-CNN reads of a target; the rest (image_id, seeds, counts) is ours.
TARGET_KEYS = ("boxes", "labels", "masks")


class MaskRCNNModule(pl.LightningModule):
    """`net` is a torchvision `MaskRCNN`; `optimizer(params)` and `scheduler(optimizer,
    total_steps)` are partials (Hydra `_partial_: true`); the scheduler steps every iteration.
    `nonfinite_loss`: stop | skip, what a step with a NaN/Inf loss does. `reuse_memory`:
    on CPU, keep freed memory in the process for the next step (a process-wide setting, made
    at fit start). `fused_optimizer`: use the optimizer's fused kernel where torch has one
    (see the module docstring). These three are run options that the task passes in
    (conf/train.yaml: runtime); they are not the model's config.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        nonfinite_loss: str = "stop",
        reuse_memory: bool = False,
        fused_optimizer: bool = True,
    ) -> None:
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.nonfinite = NonFiniteGuard(nonfinite_loss)
        self.skipped_images = 0  # this process's count since the run (or resume) started
        self.dropped_instances = 0  # the run's instances augmentation cropped away (resumed)
        # Evaluation with test-time augmentation (instseg.models.tta), set by the evaluate
        # task (eval.tta=true); None: one pass at the model's own size.
        self.test_time_augmentation: Callable | None = None
        # Compute per image (instseg.models.cost.ModelCost), counted and set by the train task
        # for the run's summary; None: not counted.
        self.cost = None
        self.reuse_memory = reuse_memory
        self.fused_optimizer = fused_optimizer

    def _count_dropped(self, targets: list[dict]) -> None:
        dropped = sum(int(t.get("dropped_instances", 0)) for t in targets)
        if dropped:  # each augmentation op counts what it drops (instseg.data.transforms)
            self.dropped_instances += dropped
            self.log("train/dropped_instances", float(self.dropped_instances))

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self.net(images)

    def on_fit_start(self) -> None:
        if self.reuse_memory and self.device.type == "cpu":  # in every DDP process
            reuse_freed_memory()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Lightning zeroes gradients after the forward pass, so the previous step's would be
        # held through it: freed here first, as a plain loop does, at the same batches as
        # Lightning's own zeroing (the first of each accumulation). Callbacks'
        # on_before_zero_grad, which Lightning still calls after the forward pass, find the
        # gradients already gone.
        if batch_idx % self.trainer.accumulate_grad_batches == 0:
            for optimizer in self.trainer.optimizers:
                optimizer.zero_grad(set_to_none=True)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        images, targets, skipped = batch  # instseg.data.coco.Batch
        if skipped:  # unreadable images the loader dropped (each one logged by name)
            self.skipped_images += skipped
            self.log("train/skipped_images", float(self.skipped_images))
        # A batch left without images skips the step on every rank together (a rank
        # skipping alone would leave the others waiting in DDP's gradient all-reduce).
        if not self.trainer.strategy.reduce_boolean_decision(bool(images), all=True):
            return None
        self._count_dropped(targets)
        targets = [{k: v for k, v in t.items() if k in TARGET_KEYS} for t in targets]
        self.nonfinite.before_forward(self.net)
        losses = self.net(images, targets)
        if not self.nonfinite.check(self, losses):  # NaN/Inf: raises, or skips this update
            self.log("train/skipped_steps", float(self.nonfinite.skipped), batch_size=len(images))
            return None
        loss = sum(losses.values())
        self.log_dict({f"train/{name}": value for name, value in losses.items()},
                      batch_size=len(images))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int):
        """(image ids, unpasted detections) for the evaluation callback; None for a batch
        left without images (an unreadable image is logged and left out of the scores)."""
        images, targets, _ = batch
        if not images:
            return None
        predict = self.test_time_augmentation or predict_unpasted
        return [t["image_id"] for t in targets], predict(self.net, images)

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]
        optimizer = self.build_optimizer(params)
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, total_steps=total)
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def build_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The configured optimizer over `params`, fused as `fused_optimizer` says unless
        the trainer clips gradients under mixed precision."""
        return build_optimizer(self.optimizer_factory, params,
                               fused=self.fused_optimizer and not self._clips_mixed_precision())

    def _clips_mixed_precision(self) -> bool:
        trainer = self._trainer  # None when the module is used outside a Trainer
        return (trainer is not None and bool(trainer.gradient_clip_val)
                and isinstance(trainer.precision_plugin, MixedPrecision))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.check_saved(checkpoint["state_dict"], self.global_step)
        checkpoint["instseg_skipped_steps"] = self.nonfinite.skipped
        checkpoint["instseg_dropped_instances"] = self.dropped_instances

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.skipped = checkpoint.get("instseg_skipped_steps", 0)
        self.dropped_instances = checkpoint.get("instseg_dropped_instances", 0)
