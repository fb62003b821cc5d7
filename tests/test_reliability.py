"""Bad checkpoints and crashes never lose work: atomic checkpoint writes, SIGKILL and SIGTERM
mid-run (real `python train.py` processes), NaN/Inf losses, checkpoints from another config
and from strangers.

The runs share one recipe (12 steps of 6 per epoch, cosine schedule, a periodic checkpoint
every 3 steps); `reference` is that run uninterrupted, whose final weights every interrupted
and resumed run must equal exactly.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from instseg.checkpoints.io import AtomicCheckpointIO
from instseg.models.nonfinite import NonFiniteLossError
from instseg.tasks.evaluate import evaluate
from instseg.tasks.train import train
from instseg.utils.errors import InstsegError
from tests.conftest import ROOT, compose_config, tiny_train_overrides

STEPS = 12
EVERY = 3


class SendSignal(pl.Callback):
    """Sends `signal` to this process as the batch after `at_step` optimizer steps starts:
    what SLURM or a user's kill does, at a known step."""

    def __init__(self, signal: str, at_step: int) -> None:
        self.signal, self.at_step = signal, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), getattr(signal, self.signal))


class PoisonImages(pl.Callback):
    """Fills the images of the batch after `at_step` optimizer steps with NaN; with
    `snapshots`, saves before.ckpt and after.ckpt around that batch into that folder."""

    def __init__(self, at_step: int, snapshots: str | None = None) -> None:
        self.at_step, self.snapshots, self.state = at_step, snapshots, "waiting"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step and self.state == "waiting":
            self._snapshot(trainer, "before.ckpt")
            for image in batch[0]:
                image.fill_(math.nan)
            self.state = "poisoned"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.state == "poisoned":
            self._snapshot(trainer, "after.ckpt")
            self.state = "done"

    def _snapshot(self, trainer, name: str) -> None:
        if self.snapshots:
            trainer.save_checkpoint(Path(self.snapshots) / name)


class PoisonWeights(pl.Callback):
    """Sets a weight to NaN after the update of step `at_step` (before that step's periodic
    checkpoint): what overflowing gradients with a finite loss do."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.at_step:
            next(pl_module.parameters()).data.fill_(math.nan)


def _recipe(tiny_shapes, *extra: str) -> list[str]:
    base = [o for o in tiny_train_overrides(tiny_shapes) if "max_epochs" not in o]
    return [*base, "logger=csv", "trainer.max_epochs=-1", f"trainer.max_steps={STEPS}",
            f"callbacks.periodic_checkpoint.every_n_train_steps={EVERY}", *extra]


def _callback(name: str, cls: type, **kwargs) -> list[str]:
    return [f"+callbacks.{name}._target_={__name__}.{cls.__name__}",
            *[f"+callbacks.{name}.{k}={v}" for k, v in kwargs.items()]]


def _load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_weights(path, expected_path) -> None:
    got, expected = _load(path)["state_dict"], _load(expected_path)["state_dict"]
    assert got.keys() == expected.keys()
    different = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _train_script(run_dir, *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]


def _env(tmp_path) -> dict:
    return os.environ | {"INSTSEG_ROOT": str(tmp_path)}


@pytest.fixture(scope="module")
def reference(tiny_shapes, tmp_path_factory):
    """The final last.ckpt of the recipe run without interruption."""
    output_dir = tmp_path_factory.mktemp("reference")
    train(compose_config("train", _recipe(tiny_shapes), output_dir))
    last = output_dir / "checkpoints" / "last.ckpt"
    assert _load(last)["global_step"] == STEPS
    yield last
    shutil.rmtree(output_dir, ignore_errors=True)


# -- atomic writes ----------------------------------------------------------------------------

def _checkpoint(value: float, numel: int = 1 << 20) -> dict:
    return {"state_dict": {"w": torch.full((numel,), value)}, "global_step": int(value)}


@pytest.mark.parametrize("sigxfsz", ["SIG_DFL", "SIG_IGN"])
def test_a_write_cut_short_leaves_the_previous_checkpoint(tmp_path, sigxfsz):
    """A 4 MiB checkpoint is written over a good one under a 1 MiB file size limit: past it
    the kernel kills the writer (SIGXFSZ), or, with the signal ignored, the write fails
    (EFBIG) inside torch.save. Either way the good checkpoint still loads, unchanged."""
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_checkpoint(1.0), path)
    writer = textwrap.dedent(f"""
        import resource, signal, torch
        from instseg.checkpoints.io import AtomicCheckpointIO
        signal.signal(signal.SIGXFSZ, signal.{sigxfsz})
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        AtomicCheckpointIO().save_checkpoint(
            {{"state_dict": {{"w": torch.full((1 << 20,), 2.0)}}, "global_step": 2}}, {str(path)!r})
    """)
    result = subprocess.run([sys.executable, "-c", writer], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    previous = _load(path)
    assert previous["global_step"] == 1
    assert torch.equal(previous["state_dict"]["w"], torch.ones(1 << 20))
    partial = list(tmp_path.glob(".last.ckpt.*.tmp"))
    if sigxfsz == "SIG_DFL":
        assert result.returncode == -signal.SIGXFSZ, result.stderr[-2000:]
        assert [p.stat().st_size for p in partial] == [1 << 20]  # killed mid-write
        AtomicCheckpointIO().save_checkpoint(_checkpoint(3.0, 16), path)
        assert _load(path)["global_step"] == 3
    else:
        assert result.returncode == 1 and "File too large" in result.stderr, result.stderr
        assert partial == []  # removed on the way out
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("trainer", ["default", "cpu", "ddp_sim", "ddp"])
def test_every_trainer_config_writes_checkpoints_atomically(trainer, tmp_path):
    extra = ["trainer.accelerator=cpu", "trainer.devices=2"] if trainer == "ddp" else []
    cfg = compose_config("train", [f"trainer={trainer}", *extra], tmp_path)
    trainer_obj = instantiate(cfg.trainer, logger=False)
    assert isinstance(trainer_obj.strategy.checkpoint_io, AtomicCheckpointIO)


# -- SIGKILL and SIGTERM ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_weights(reference, tiny_shapes,
                                                                     tmp_path):
    """SIGKILL once the first periodic checkpoint (step 3 of a 6-step epoch) is there; then
    `hydra.run.dir=<that run> ckpt_path=last` finishes it: the weights of the run never
    killed, tensor for tensor."""
    run_dir, recipe = tmp_path / "run", _recipe(tiny_shapes)
    last = run_dir / "checkpoints" / "last.ckpt"
    with open(tmp_path / "killed.log", "w") as output:
        process = subprocess.Popen(_train_script(run_dir, *recipe), cwd=tmp_path,
                                   env=_env(tmp_path), stdout=output, stderr=output)
        while not last.exists() and process.poll() is None:
            time.sleep(0.05)
        process.kill()
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    killed_at = _load(last)["global_step"]
    assert EVERY <= killed_at < STEPS  # killed before the end: there is something to resume

    resumed = subprocess.run(_train_script(run_dir, *recipe, "ckpt_path=last"),
                             cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in resumed.stderr + resumed.stdout
    assert _load(last)["global_step"] == STEPS
    _assert_same_weights(last, reference)


@pytest.mark.slow
def test_sigterm_saves_the_exact_position_and_exits_143(reference, tiny_shapes, tmp_path):
    """SIGTERM during step 5 (after the periodic checkpoint of step 3): the run finishes that
    step, writes last.ckpt at step 5, says where, and exits 143; resuming from it gives the
    uninterrupted run's weights."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        _train_script(run_dir, *_recipe(tiny_shapes),
                      *_callback("sigterm", SendSignal, signal="SIGTERM", at_step=4)),
        cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    checkpoints = run_dir / "checkpoints"
    output = result.stdout + result.stderr
    assert result.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert f"SIGTERM: stopped at step 5; saved {checkpoints / 'last.ckpt'}" in output
    assert "Traceback" not in output
    assert _load(checkpoints / "last.ckpt")["global_step"] == 5
    assert (checkpoints / "step-3.ckpt").exists() and not (checkpoints / "step-5.ckpt").exists()

    resumed = tmp_path / "resumed"
    train(compose_config("train", [*_recipe(tiny_shapes),
                                   f"ckpt_path={checkpoints / 'last.ckpt'}"], resumed))
    _assert_same_weights(resumed / "checkpoints" / "last.ckpt", reference)


# -- NaN / Inf losses -------------------------------------------------------------------------

def test_a_nan_loss_stops_with_step_and_terms_and_leaves_the_checkpoint(tiny_shapes, tmp_path):
    cfg = compose_config("train", _recipe(tiny_shapes, *_callback("poison", PoisonImages,
                                                                  at_step=4)), tmp_path)
    with pytest.raises(NonFiniteLossError) as error:
        train(cfg)
    message = str(error.value)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert "non-finite loss at global step 4 (epoch 0): loss_classifier=nan" in message
    assert "loss_mask=nan" in message
    assert f"the last good checkpoint is intact, {last}" in message
    checkpoint = _load(last)
    assert checkpoint["global_step"] == EVERY  # nothing saved on the way out
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "step-3.ckpt"]


def test_a_skipped_nan_step_changes_nothing_and_the_run_goes_on(tiny_shapes, tmp_path):
    """The batch after step 3 is NaN: with skip, the weights, BatchNorm statistics and
    optimizer moments after it are those before it (Lightning still counts the step); the
    run goes on to max_steps, finite, and counts 1 skip (also in its checkpoints)."""
    snapshots = tmp_path / "snapshots"
    cfg = compose_config("train", _recipe(
        tiny_shapes, *_callback("poison", PoisonImages, at_step=3, snapshots=snapshots),
        "runtime.nonfinite_loss=skip", "trainer.max_steps=7"), tmp_path)
    metrics = train(cfg)
    before, after = _load(snapshots / "before.ckpt"), _load(snapshots / "after.ckpt")
    _assert_same_weights(snapshots / "after.ckpt", snapshots / "before.ckpt")
    assert _same(after["optimizer_states"][0]["state"], before["optimizer_states"][0]["state"])
    assert (before["global_step"], after["global_step"]) == (3, 4)
    assert after["instseg_skipped_steps"] == 1
    assert metrics["train/skipped_steps"] == 1 and math.isfinite(metrics["train/loss"])
    # The end of the run (between two periodic checkpoints) is in last.ckpt too.
    last = _load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 7 and last["instseg_skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def _same(a, b) -> bool:
    """Nested containers of tensors and plain values, equal."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_non_finite_weights_are_never_checkpointed(tiny_shapes, tmp_path):
    cfg = compose_config("train", _recipe(tiny_shapes, *_callback("poison", PoisonWeights,
                                                                  at_step=2 * EVERY)), tmp_path)
    with pytest.raises(NonFiniteLossError, match="the weights are not finite at global step 6 "
                                                 r"\(1 tensors, e.g. net.backbone"):
        train(cfg)
    assert _load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == EVERY


def test_an_unknown_nonfinite_policy_is_one_clear_error(tiny_shapes, tmp_path):
    cfg = compose_config("train", _recipe(tiny_shapes, "runtime.nonfinite_loss=ignore"), tmp_path)
    with pytest.raises(InstsegError, match="runtime.nonfinite_loss='ignore': expected one of"):
        train(cfg)


# -- checkpoints from another config or a stranger --------------------------------------------

def test_resuming_with_another_model_config_lists_keys_and_weights(reference, tiny_shapes,
                                                                   tmp_path):
    cfg = compose_config("train", _recipe(
        tiny_shapes, f"ckpt_path={reference}", "model.net.box_head.representation_size=128",
        "model.net.box_predictor.in_channels=128", "runtime.nonfinite_loss=skip"), tmp_path)
    with pytest.raises(InstsegError) as error:
        train(cfg)
    message = str(error.value)
    compared = len(_flatten_keys(_load(reference)["instseg"]["config"]["model"]["net"]))
    assert message.splitlines()[:6] == [
        f"{reference} does not fit this model:",
        f"  architecture keys that differ (checkpoint -> now; {compared} keys under model.net "
        "compared): 2",
        "    model.net.box_head.representation_size: 256 -> 128",
        "    model.net.box_predictor.in_channels: 256 -> 128",  # not nonfinite_loss: how to
        "  weights of another shape (checkpoint -> model): 6",  # react, not what weights are
        "    net.roi_heads.box_head.fc6.weight (256, 3136) -> (128, 3136)",
    ]
    assert "... and 1 more" in message and ".hydra/overrides.yaml" in message
    assert not (tmp_path / "checkpoints").exists()  # stopped before training


def _flatten_keys(config, prefix: str = "") -> list[str]:
    if not isinstance(config, dict):
        return [prefix]
    return [k for key, value in config.items() for k in _flatten_keys(value, f"{prefix}.{key}")]


def test_resuming_with_other_run_options_optimizer_and_schedule_is_allowed(reference, tiny_shapes,
                                                                          tmp_path, caplog):
    """Run options (evaluation backend, NaN policy, optimizer kernel, allocator) and the
    optimizer's settings are not the architecture: the resume goes ahead, says what it
    compared, and warns that the checkpoint's optimizer state wins over a changed lr."""
    cfg = compose_config("train", _recipe(
        tiny_shapes, f"ckpt_path={reference}", "runtime.fused_optimizer=false",
        "runtime.reuse_memory=false", "runtime.nonfinite_loss=skip", "eval.backend=pycocotools",
        "model.optimizer.lr=0.5"), tmp_path)
    with caplog.at_level("INFO", logger="instseg.tasks.train"):
        train(cfg)
    compared = len(_flatten_keys(_load(reference)["instseg"]["config"]["model"]["net"]))
    assert f"resuming {reference}: same architecture ({compared} keys under model.net" \
        in caplog.text
    assert "model.optimizer differs from the checkpoint's (model.optimizer.lr: " in caplog.text
    assert f"Restored all states from the checkpoint at {reference}" in caplog.text


def test_evaluating_with_other_run_options_is_allowed(reference, tmp_path):
    metrics = evaluate(compose_config("evaluate", [
        f"ckpt={reference}", "model=small_cpu", "model.net.min_size=96", "model.net.max_size=96",
        "runtime.reuse_memory=false", "eval.backend=pycocotools"], tmp_path))
    assert "val/segm_mAP" in metrics


def test_evaluating_with_another_model_config_lists_keys(reference, tmp_path):
    cfg = compose_config("evaluate", [f"ckpt={reference}", "model=small_cpu"], tmp_path)
    with pytest.raises(InstsegError) as error:
        evaluate(cfg)
    message = str(error.value)
    assert "    model.net.min_size: 96 -> 160\n" in message
    assert "  (the weights have the same names and shapes)\n" in message
    assert message.endswith("leave out model=...")


def test_evaluating_weights_that_do_not_fit_their_config_lists_them(reference, tmp_path):
    checkpoint = _load(reference)
    state = checkpoint["state_dict"]
    del state["net.roi_heads.mask_predictor.mask_fcn_logits.bias"]
    state["net.extra.weight"] = torch.zeros(1)
    state["net.rpn.head.cls_logits.weight"] = torch.zeros(1, 64, 3, 3)
    doctored = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, doctored)
    with pytest.raises(InstsegError) as error:
        evaluate(compose_config("evaluate", [f"ckpt={doctored}"], tmp_path / "eval"))
    assert str(error.value).splitlines() == [
        f"{doctored} does not fit this model:",
        "  weights missing from the checkpoint: 1",
        "    net.roi_heads.mask_predictor.mask_fcn_logits.bias",
        "  weights not in the model: 1",
        "    net.extra.weight",
        "  weights of another shape (checkpoint -> model): 1",
        "    net.rpn.head.cls_logits.weight (1, 64, 3, 3) -> (3, 64, 1, 1)",
        "(written by another version of instseg's models, or altered)",
    ]


@pytest.mark.parametrize("where, entry", [
    ("model.net.backbone", {"_target_": "os.system", "_args_": ["touch pwned"]}),
    ("model.net.box_head", {"_target_": "hydra.utils.get_class", "path": "subprocess.Popen"}),
    ("data", {"_target_": "os.system", "_args_": ["touch pwned"]}),
])
def test_a_checkpoint_naming_other_callables_is_refused(reference, tmp_path, monkeypatch,
                                                        where, entry):
    checkpoint = _load(reference)
    *parents, key = where.split(".")
    node = checkpoint["instseg"]["config"]
    for parent in parents:
        node = node[parent]
    node[key] = entry
    doctored = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, doctored)
    monkeypatch.chdir(tmp_path)  # where `touch pwned` would write
    named = entry.get("path") or entry["_target_"]
    with pytest.raises(InstsegError, match=f"names '{named}' at {where}"):
        evaluate(compose_config("evaluate", [f"ckpt={doctored}"], tmp_path / "eval"))
    assert not (tmp_path / "pwned").exists()


class Payload:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_a_checkpoint_holding_pickled_code_is_not_run(reference, tiny_shapes, tmp_path,
                                                      monkeypatch):
    checkpoint = _load(reference)
    checkpoint["payload"] = Payload()
    doctored = tmp_path / "doctored.ckpt"
    torch.save(checkpoint, doctored)
    monkeypatch.chdir(tmp_path)  # where `touch pwned` would write
    with pytest.raises(InstsegError, match="cannot load checkpoint .*Weights only load"):
        evaluate(compose_config("evaluate", [f"ckpt={doctored}"], tmp_path / "eval"))
    with pytest.raises(InstsegError, match="cannot load checkpoint .*Weights only load"):
        train(compose_config("train", _recipe(tiny_shapes, f"ckpt_path={doctored}"),
                             tmp_path / "resume"))
    assert not (tmp_path / "pwned").exists()
