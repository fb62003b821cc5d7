"""The training progress bar, without a device sync on every step.

Lightning's RichProgressBar reads the progress-bar metrics after every batch, and reading a
metric logged as a device tensor (train/loss) is `.item()`: the host waits for the GPU to
finish the step before it may queue the next one. The bar redraws at most `refresh_rate`
times per second anyway, so this one reads the metrics at most every `metrics_interval`
seconds (and at the end of every epoch, where the values shown last are read).
"""

from __future__ import annotations

import time

from pytorch_lightning.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """RichProgressBar whose metrics are read at most every `metrics_interval` seconds."""

    def __init__(self, *args, metrics_interval: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_interval = metrics_interval
        self._metrics: dict = {}
        self._read_at = -float("inf")

    def get_metrics(self, trainer, pl_module) -> dict:
        now = time.monotonic()
        if now - self._read_at >= self.metrics_interval or not self._metrics:
            self._metrics = super().get_metrics(trainer, pl_module)
            self._read_at = now
        return self._metrics

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._read_at = -float("inf")  # the epoch's last values, not up to a second old
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._read_at = -float("inf")  # val/* metrics show as soon as they exist
        super().on_validation_end(trainer, pl_module)
