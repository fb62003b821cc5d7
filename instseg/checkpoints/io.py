"""Checkpoints that survive kills, and the run's resume point.

- `AtomicCheckpointIO` (Lightning CheckpointIO plugin, conf/trainer/default.yaml): every
  checkpoint is written to a temporary file beside its final path, flushed and fsynced, then
  renamed over it. A kill during the write leaves the previous file whole; the partial
  `.<name>.<pid>.<random>.tmp` is removed by the next save of the same path.
- `PeriodicCheckpoint` (conf/callbacks/periodic_checkpoint.yaml): Lightning's ModelCheckpoint
  whose last.ckpt is also written at every epoch end, at the end of training, and when
  SIGTERM (SLURM preemption, `kill`) stops the run, at the loop position Lightning stopped
  at, so the run resumes exactly from there.
- `resume_path`: `ckpt_path=last` is the newest last*.ckpt in this run's checkpoint
  directories (`hydra.run.dir=<run dir> ckpt_path=last` continues that run; without one,
  training starts from scratch, as a job script run before and after a requeue wants).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)



class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temporary file in the target's directory, fsync, os.replace.

    Lightning's own save also renames a finished file into place, but from a temporary file
    in /tmp: across file systems that rename is a copy onto the final path, which a kill
    cuts short, and nothing is fsynced. Remote paths (s3://...) keep Lightning's save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temporary, "xb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)  # the rename itself survives a power cut
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed writer
            stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class PeriodicCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose last.ckpt (save_last) also holds the state at every training
    epoch end, at the end of fit, and where SIGTERM stopped fit.

    With every_n_train_steps, Lightning writes last.ckpt only with the periodic step-N.ckpt:
    a run ending between two of those left an older last.ckpt. Lightning turns SIGTERM into a
    SIGTERMException raised between batches (all DDP ranks at the same batch), so the loops
    are at a clean position to save and resume. Other exceptions save nothing: the state
    they leave (a failed step, non-finite weights) is not worth resuming from.
    """

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self._save_last(trainer)
        if path and trainer.is_global_zero:
            log.warning("SIGTERM: stopped at step %d; saved %s. Resume with the same overrides "
                        "and ckpt_path=%s (or hydra.run.dir=%s ckpt_path=last)",
                        trainer.global_step, path, path, Path(path).parent.parent)

    def _save_last(self, trainer: pl.Trainer) -> str | None:
        """last.ckpt, written unless this step is in it already; None when none is kept
        (no save_last, a sanity check or fast_dev_run, no step made yet)."""
        if not self.save_last or trainer.sanity_checking or trainer.fast_dev_run:
            return None
        if trainer.global_step == 0:
            return None
        path = self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)
        # Every save of this callback writes last.ckpt too (save_last). The same decision on
        # every rank: saving is collective.
        if self._last_global_step_saved != trainer.global_step:
            self.last_model_path = path  # part of the state saved
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
            self._last_global_step_saved = trainer.global_step
        return path


def resume_path(ckpt_path: str | None, trainer: pl.Trainer) -> str | None:
    """`ckpt_path`, with "last" resolved as Lightning does (the newest last*.ckpt of the
    checkpoint callbacks' directories); None where there is none yet."""
    if ckpt_path != "last":
        return ckpt_path
    directories = {Path(c.dirpath) for c in trainer.checkpoint_callbacks
                   if getattr(c, "dirpath", None)}
    found = [p for d in directories for p in d.glob("last*.ckpt")]
    if not found:
        log.warning("ckpt_path=last: no last.ckpt in %s: training starts from scratch "
                    "(to resume a run: hydra.run.dir=<its directory> ckpt_path=last)",
                    ", ".join(map(str, sorted(directories))) or "any checkpoint directory")
        return None
    return str(max(found, key=lambda p: p.stat().st_mtime))
