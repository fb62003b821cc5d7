"""What `python train.py` and `python evaluate.py` print concerns the run: no advertisements of
Lightning's cloud products, no note per checkpoint save, no FLOPs line that reads 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, tiny_train_overrides

NOISE = ("💡 Tip", "litlogger", "litmodels", "`weights_only` was not set", "FLOPs",
         "Trainer already configured with model summary callbacks", "LeafSpec")


def _run(script: str, tmp_path, *overrides: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={tmp_path / script}"],
        cwd=tmp_path, env=os.environ | {"INSTSEG_ROOT": str(tmp_path)}, capture_output=True,
        text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


@pytest.mark.slow
def test_train_and_evaluate_logs_carry_no_lightning_noise(tiny_shapes, tmp_path):
    output = _run("train.py", tmp_path, *tiny_train_overrides(tiny_shapes), "trainer.max_epochs=1",
                  "callbacks.periodic_checkpoint.every_n_train_steps=4")  # + last.ckpt at 6
    checkpoints = tmp_path / "train.py" / "checkpoints"
    assert (checkpoints / "last.ckpt").exists() and list(checkpoints.glob("step-*.ckpt"))
    assert "Trainable params" in output and "Restored" not in output  # the summary is there
    output += _run("evaluate.py", tmp_path, f"ckpt={checkpoints / 'last.ckpt'}")
    assert "val/segm_mAP" in output
    assert [noise for noise in NOISE if noise in output] == []
