"""The progress bar reads the metrics it shows (a device sync each) at most once per interval."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from instseg.utils.progress import ProgressBar

STEPS = 20


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(bar: ProgressBar, monkeypatch) -> tuple[int, dict]:
    """(metric reads during one epoch of STEPS steps, the metrics shown at the end)."""
    reads = []
    original = RichProgressBar.get_metrics
    monkeypatch.setattr(RichProgressBar, "get_metrics",
                        lambda self, *a: reads.append(1) or original(self, *a))
    data = TensorDataset(torch.randn(STEPS, 4), torch.randn(STEPS, 1))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, callbacks=[bar], logger=False,
                         enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(Regression(), DataLoader(data, batch_size=1))
    return len(reads), bar.get_metrics(trainer, trainer.lightning_module)


@pytest.mark.parametrize(("interval", "most", "least"), [(3600.0, 3, 1), (0.0, None, STEPS)])
def test_metrics_are_read_at_most_once_per_interval(monkeypatch, interval, most, least):
    reads, shown = _fit(ProgressBar(metrics_interval=interval), monkeypatch)
    assert reads >= least and (most is None or reads <= most)
    assert "train/loss" in shown


def test_the_epochs_last_loss_is_shown_at_its_end(monkeypatch):
    bar = ProgressBar(metrics_interval=3600.0)
    _, shown = _fit(bar, monkeypatch)
    assert shown["train/loss"] == pytest.approx(
        float(bar.trainer.callback_metrics["train/loss"]), abs=1e-3)  # shown with 3 decimals
