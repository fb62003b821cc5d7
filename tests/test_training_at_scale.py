"""DDP, mixed precision, linear LR scaling, sweeps with summaries, Optuna, the run record."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from instseg.models.schedules import linear_scaling
from instseg.tasks.evaluate import evaluate
from instseg.tasks.train import scaling_for, train
from instseg.utils.sweeps import metric_history
from tests.conftest import ROOT, compose_config, tiny_train_overrides


def _overrides(tiny_shapes, *extra):
    base = [o for o in tiny_train_overrides(tiny_shapes) if "max_epochs" not in o]
    return [*base, "trainer.max_epochs=1", *extra]


def test_linear_scaling_rule():
    scaled = linear_scaling(16, 8, lr=0.02, max_steps=90000, warmup_steps=1000,
                            milestones=[60000, 80000])
    assert scaled == {"factor": 0.5, "lr": 0.01, "max_steps": 180000, "warmup_steps": 2000,
                      "milestones": [120000, 160000]}
    epochs = linear_scaling(16, 32, lr=0.02, max_steps=-1, warmup_steps=1000,
                            milestones=[0.6, 0.8])
    assert epochs["lr"] == 0.04 and epochs["max_steps"] == -1
    assert epochs["warmup_steps"] == 500 and epochs["milestones"] == [0.6, 0.8]


def test_world_size_2_batch_2_accumulate_2_scales_the_recipe(tiny_shapes, tmp_path):
    """README: 2 processes x 2 images x 2 accumulated = 8 images, half the 16-image recipe."""
    cfg = compose_config("train", _overrides(
        tiny_shapes, "trainer=ddp_sim", "trainer.accumulate_grad_batches=2",
        "scale_lr_from_batch=16", "model=r50_fpn", "model.optimizer.lr=0.02",
        "trainer.max_steps=900", "model.scheduler.warmup_steps=100",
        "model.scheduler.milestones=[600,800]"), tmp_path)
    assert instantiate(cfg.trainer).world_size == 2
    scaling = scaling_for(cfg)
    assert scaling["lr"] == pytest.approx(0.01)
    assert scaling["max_steps"] == 1800 and scaling["warmup_steps"] == 200
    assert scaling["milestones"] == [1200, 1600]
    assert scaling["total_batch"] == 8 and scaling["world_size"] == 2
    assert cfg.trainer.max_steps == 900  # the task's config is left as given


def test_bf16_mixed_trains_on_cpu(tiny_shapes, tmp_path):
    cfg = compose_config("train", _overrides(
        tiny_shapes, "trainer.precision=bf16-mixed", "trainer.limit_train_batches=3",
        "trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1",
        "data.val_batch_size=2"), tmp_path)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/segm_mAP" in metrics


@pytest.mark.slow
def test_ddp_training_on_two_processes_and_its_evaluation_equals_one_process(
    tiny_shapes, tmp_path
):
    """2 gloo processes train 3 steps and validate (7 images: one rank gets a padded
    repeat); a single process evaluating the checkpoint gets the logged numbers exactly."""
    cfg = compose_config("train", _overrides(tiny_shapes, "trainer=ddp_sim",
                                             "trainer.limit_train_batches=3"), tmp_path / "run")
    train(cfg)
    best = next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    record = torch.load(best, weights_only=True)["instseg"]
    assert record["config"]["trainer"]["strategy"] == "ddp_spawn"
    metrics = evaluate(compose_config("evaluate", [f"ckpt={best}"], tmp_path / "eval"))
    for key in ("val/segm_mAP", "val/bbox_mAP", "val/segm_mAR100"):
        assert metrics[key] == pytest.approx(record["metrics"][key], abs=1e-12)
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert environment["world_size"] == 2 and environment["packages"]["torch"]


def _train_script(tmp_path, *args, timeout=900):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path,
        env=os.environ | {"INSTSEG_ROOT": str(tmp_path)}, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_multirun_with_ddp_runs_each_job_once_in_its_own_directory(tiny_shapes, tmp_path):
    """-m with strategy=ddp: the extra rank of each job joins that job (no second sweep)."""
    result = _train_script(tmp_path, "-m", *_overrides(
        tiny_shapes, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
        "trainer.limit_train_batches=2", "seed=1,2"))
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        environment = json.loads((sweep / job / "environment.json").read_text())
        assert environment["world_size"] == 2
    assert not (tmp_path / "logs" / "train" / "runs").exists()  # no rank ran on its own
    summary = json.loads((sweep / "summary.json").read_text())
    assert sorted(j["overrides"].split()[-1] for j in summary) == ["seed=1", "seed=2"]
    assert "sweep: 2 jobs" in result.stdout


@pytest.mark.slow
def test_optuna_sweep_of_two_trials_is_summarised(tiny_shapes, tmp_path):
    """Each trial in its own directory of the sweep (Hydra resolves the sweep dir before any
    job), the summary best first, its table showing the overrides that differ."""
    result = _train_script(tmp_path, "hparams_search=optuna", "hydra.sweeper.n_trials=2",
                           "hydra.sweeper.sampler.n_startup_trials=2",
                           *_overrides(tiny_shapes, "trainer.limit_train_batches=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    summary = json.loads((sweep / "summary.json").read_text())
    assert len(summary) == 2 and all(j["status"] == "done" for j in summary)
    assert all("model.optimizer.lr=" in j["overrides"] for j in summary)
    assert sorted(j["job"] for j in summary) == [0, 1]
    for job in summary:
        assert (Path(job["output_dir"]) / "checkpoints" / "last.ckpt").is_file()
    assert summary[0]["val/segm_mAP"] >= summary[1]["val/segm_mAP"]
    assert "model.optimizer.lr=" in result.stdout
    assert "best_params" in (sweep / "optimization_results.yaml").read_text()
    # The figure's curves come from each job's own TensorBoard logs: what a job returned is
    # its last validation's logged value.
    assert (sweep / "summary.png").is_file() and "summary.png" in result.stdout
    assert "No path found" not in result.stdout + result.stderr  # TensorBoard's reader, quiet
    for job in summary:
        history = metric_history(Path(job["output_dir"]), "val/segm_mAP")
        assert history[-1][1] == pytest.approx(job["val/segm_mAP"], abs=1e-6)


def test_ema_weights_are_validated_and_checkpointed(tiny_shapes, tmp_path):
    cfg = compose_config("train", _overrides(
        tiny_shapes, "callbacks=[default,ema]", "callbacks.ema.decay=0.5",
        "trainer.limit_train_batches=3"), tmp_path / "run")
    train(cfg)
    best = next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt"))
    checkpoint = torch.load(best, weights_only=False)
    raw, averaged = checkpoint["current_model_state"], checkpoint["state_dict"]
    name = next(k for k in averaged if k.endswith("box_predictor.cls_score.weight"))
    assert not torch.equal(raw[name], averaged[name])
    logged = checkpoint["instseg"]["metrics"]["val/segm_mAP"]
    metrics = evaluate(compose_config("evaluate", [f"ckpt={best}"], tmp_path / "eval"))
    assert metrics["val/segm_mAP"] == pytest.approx(logged, abs=1e-12)  # the EMA weights


@pytest.mark.slow
def test_torchrun_two_processes_share_one_run_directory(tiny_shapes, tmp_path):
    """What multi-node runs do (torchrun on each node): ranks started outside Lightning."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         str(ROOT / "train.py"), *_overrides(tiny_shapes, "trainer=ddp", "trainer.devices=2",
                                             "trainer.limit_train_batches=2"),
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=os.environ | {"INSTSEG_ROOT": str(tmp_path)},
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((run_dir / "environment.json").read_text())["world_size"] == 2
    assert not (tmp_path / "logs").exists()


def test_slurm_launcher_composes_with_a_multi_node_experiment():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", return_hydra_config=True, overrides=[
            "hydra/launcher=submitit_slurm", "hydra.launcher.nodes=2",
            "hydra.launcher.tasks_per_node=8", "hydra.launcher.gpus_per_node=8",
            "experiment=coco_r50_fpn_1x", "trainer.devices=8", "trainer.num_nodes=2"])
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.trainer.strategy == "ddp" and cfg.scale_lr_from_batch == 16
