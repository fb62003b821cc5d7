"""instseg.models.module: on CPU, fit makes glibc's keep-freed-memory setting
(instseg.utils.memory) unless runtime.reuse_memory=false. The setting's effect on page faults
is tested in tests/utils/test_memory.py; here, that fit asks for it, and only when told.
Fit builds the fused optimizer unless runtime.fused_optimizer=false or gradients are clipped
under mixed precision, and frees the gradients before the forward pass that starts an
accumulation."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from instseg.tasks.train import train
from instseg.utils.memory import reuse_freed_memory
from tests.conftest import compose_config, tiny_train_overrides


def fit(tiny_shapes, tmp_path, overrides: list[str], callback: type | None = None,
        plugins: list | None = None) -> None:
    """train() on the tiny set for trainer.max_steps (1 unless overridden), no validation,
    logger or callbacks but `callback`; `plugins` replace trainer.precision."""
    cfg = compose_config("train", [*tiny_train_overrides(tiny_shapes), "trainer.max_steps=1",
                                   "trainer.limit_val_batches=0", "logger=none",
                                   "callbacks=none", *overrides], tmp_path)
    with open_dict(cfg):
        if callback is not None:
            cfg.callbacks = {"probe": {"_target_": f"{__name__}.{callback.__name__}"}}
        if plugins:
            cfg.trainer.precision = None
            cfg.trainer.plugins = plugins
    train(cfg)


@pytest.mark.parametrize("reuse", [True, False])
def test_cpu_fit_asks_for_the_allocator_setting_as_configured(reuse, tiny_shapes, tmp_path):
    reuse_freed_memory.cache_clear()  # forget earlier calls in this process (idempotent)
    fit(tiny_shapes, tmp_path, [f"runtime.reuse_memory={reuse}"])
    assert reuse_freed_memory.cache_info().currsize == int(reuse)


class RecordOptimizer(pl.Callback):
    """The optimizer fit built, as `RecordOptimizer.seen`."""

    seen: torch.optim.Optimizer | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        RecordOptimizer.seen = trainer.optimizers[0]


def fitted_optimizer(tiny_shapes, tmp_path, overrides: list[str], plugins: list | None = None):
    RecordOptimizer.seen = None
    fit(tiny_shapes, tmp_path, overrides, RecordOptimizer, plugins)
    return RecordOptimizer.seen


@pytest.mark.parametrize("fused", [True, False])
def test_fit_uses_the_fused_optimizer_as_configured(fused, tiny_shapes, tmp_path):
    optimizer = fitted_optimizer(tiny_shapes, tmp_path, [f"runtime.fused_optimizer={fused}"])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert bool(optimizer.defaults["fused"]) is fused


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_with_clipping_trains_with_the_unfused_optimizer(precision, tiny_shapes,
                                                                         tmp_path):
    # Lightning refuses to clip gradients for a fused optimizer under mixed precision (16-mixed:
    # it must unscale the GradScaler's gradients first). fp16 autocast on CPU needs the plugin
    # spelled out (trainer.precision=16-mixed turns into bf16-mixed on CPU).
    scaled = [{"_target_": "pytorch_lightning.plugins.MixedPrecision", "precision": "16-mixed",
               "device": "cpu", "scaler": {"_target_": "torch.amp.GradScaler", "device": "cpu"}}]
    optimizer = fitted_optimizer(
        tiny_shapes, tmp_path, ["trainer.gradient_clip_val=1.0", f"trainer.precision={precision}"],
        plugins=scaled if precision == "16-mixed" else None)
    assert not optimizer.defaults["fused"]


class RecordGradsAtForward(pl.Callback):
    """Per training forward pass of the net: whether any parameter still holds a gradient."""

    held: list[bool] = []

    def on_train_start(self, trainer, pl_module) -> None:
        RecordGradsAtForward.held = []
        pl_module.net.register_forward_pre_hook(self._record)

    def _record(self, net, args) -> None:
        RecordGradsAtForward.held.append(any(p.grad is not None for p in net.parameters()))


def test_gradients_are_freed_before_the_forward_pass_that_starts_an_accumulation(tiny_shapes,
                                                                                 tmp_path):
    # Freed before the forward pass (not after it, where Lightning zeroes them), and only
    # where Lightning would zero them: the first batch of every accumulation.
    fit(tiny_shapes, tmp_path, ["trainer.max_steps=2", "trainer.accumulate_grad_batches=2"],
        RecordGradsAtForward)
    assert RecordGradsAtForward.held == [False, True, False, True]
