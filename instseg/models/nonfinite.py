"""What a training step does with a non-finite (NaN or Inf) loss: `runtime.nonfinite_loss`.

The loss terms are checked after the forward pass, before backward (one device sync per step;
under DDP the verdict is all-reduced, so every rank acts at the same step).

- `stop` (default): `NonFiniteLossError`, naming the global step, the NaN/Inf terms and the
  newest checkpoint. Nothing of that step reaches the weights, and no checkpoint is written
  on the way out (instseg.checkpoints.PeriodicCheckpoint saves on SIGTERM only).
- `skip`: that step's update is skipped (training_step returns None: no backward; the
  optimizer, finding no gradients, changes nothing), the BatchNorm statistics its forward
  pass changed are restored, and the step is counted (`train/skipped_steps`, kept in
  checkpoints) and warned about. Lightning still counts it as a step (global_step,
  max_steps, the LR schedule). Under DDP all ranks skip together (a rank skipping alone
  would leave the others waiting in the gradient all-reduce). With gradient accumulation,
  batches accumulated before the skipped one are still applied.

Whatever the policy, a checkpoint whose weights are not finite is never written
(`check_saved`): finite losses can still give overflowing gradients.
"""

from __future__ import annotations

import logging
import os

import pytorch_lightning as pl
import torch
from torch import nn

from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)
POLICIES = ("stop", "skip")


class NonFiniteLossError(InstsegError):
    """The loss (or the weights about to be saved) became NaN or Inf."""


class NonFiniteGuard:
    def __init__(self, policy: str = "stop") -> None:
        if policy not in POLICIES:
            raise InstsegError(f"runtime.nonfinite_loss={policy!r}: expected one of {POLICIES}")
        self.policy = policy
        self.skipped = 0  # steps skipped in this run (restored on resume)
        self._buffers: list[torch.Tensor] = []

    def before_forward(self, net: nn.Module) -> None:
        """With skip: remember the buffers (BatchNorm statistics) the forward pass updates."""
        if self.policy == "skip":
            self._buffers = [b.detach().clone() for b in net.buffers()]

    def check(self, module: pl.LightningModule, losses: dict[str, torch.Tensor]) -> bool:
        """True when every loss term is finite on every rank; else stop (raise) or skip
        (restore the buffers, count, warn, False)."""
        finite = bool(torch.isfinite(torch.stack([v.detach() for v in losses.values()])).all())
        if module.trainer.strategy.reduce_boolean_decision(finite, all=True):
            return True
        bad = [f"{k}={v.item()}" for k, v in losses.items() if not torch.isfinite(v).all()]
        where = (f"global step {module.global_step} (epoch {module.current_epoch}): "
                 f"{', '.join(bad) or 'on another process'}")
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"non-finite loss at {where}. Stopped before this step's update: "
                f"{_newest_checkpoint(module.trainer)}. To go on: resume from it with "
                "runtime.nonfinite_loss=skip (such steps are skipped), or train from its weights "
                "with a lower learning rate (model.weights=PATH model.optimizer.lr=...)."
            )
        for saved, buffer in zip(self._buffers, module.net.buffers(), strict=True):
            buffer.copy_(saved)
        self.skipped += 1
        log.warning("non-finite loss at %s; skipped this step's update (%d skipped so far)",
                    where, self.skipped)
        return False

    def check_saved(self, state_dict: dict[str, torch.Tensor], step: int) -> None:
        """NonFiniteLossError instead of saving non-finite weights."""
        bad = [k for k, v in state_dict.items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteLossError(
                f"the weights are not finite at global step {step} ({len(bad)} tensors, e.g. "
                f"{bad[0]}): not saving them over a good checkpoint. Resume from the last one "
                "with a smaller trainer.gradient_clip_val, or train from its weights with a "
                "lower learning rate (model.weights=PATH model.optimizer.lr=...)."
            )


def _newest_checkpoint(trainer: pl.Trainer) -> str:
    """A sentence naming the newest checkpoint this run's checkpoint callbacks wrote."""
    paths = {getattr(c, attribute, "") for c in trainer.checkpoint_callbacks
             for attribute in ("last_model_path", "best_model_path")}
    existing = [p for p in paths if p and os.path.isfile(p)]
    if not existing:
        return "no checkpoint was written before it"
    return f"the last good checkpoint is intact, {max(existing, key=os.path.getmtime)}"
