"""train(cfg) / evaluate(cfg) in process, and the real entry scripts in subprocesses."""

import json
import os
import subprocess
import sys

import pytest
import torch

from instseg.tasks.evaluate import evaluate
from instseg.tasks.train import train
from tests.conftest import ROOT, compose_config, tiny_data_overrides, tiny_train_overrides


def test_train_logs_losses_and_mAP_and_writes_run_directory(trained_run):
    output_dir, metrics = trained_run
    for key in ["train/loss", "train/loss_mask", "train/loss_classifier", "train/loss_box_reg",
                "train/loss_objectness", "train/loss_rpn_box_reg",
                "val/segm_mAP", "val/bbox_mAP", "val/segm_mAP50", "val/bbox_mAP75"]:
        assert key in metrics, key
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (output_dir / "config_resolved.yaml").is_file()
    assert list((output_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (output_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((output_dir / "checkpoints").glob("best-*.ckpt"))


def test_tensorboard_holds_losses_learning_rate_and_mAP(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = trained_run
    events = EventAccumulator(str(output_dir / "tensorboard")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss_mask", "val/segm_mAP", "val/bbox_mAP"} <= tags
    assert any(tag.startswith("lr-") for tag in tags)


def test_evaluate_reproduces_logged_mAP_in_process(trained_run, tmp_path):
    output_dir, _ = trained_run
    best = next((output_dir / "checkpoints").glob("best-*.ckpt"))
    logged = torch.load(best, weights_only=True)["instseg"]["metrics"]
    cfg = compose_config("evaluate", [f"ckpt={best}", "eval.backend=pycocotools"], tmp_path)
    metrics = evaluate(cfg)
    assert metrics["val/segm_mAP"] == pytest.approx(logged["val/segm_mAP"], abs=1e-12)
    assert metrics["val/bbox_mAP"] == pytest.approx(logged["val/bbox_mAP"], abs=1e-12)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"]["val/segm_mAP"] == metrics["val/segm_mAP"]


def _run(script: str, *overrides: str, cwd) -> subprocess.CompletedProcess:
    env = os.environ | {"INSTSEG_ROOT": str(cwd)}
    return subprocess.run([sys.executable, str(ROOT / script), *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


# What the scripts print concerns the run: no advertisements of Lightning's cloud products,
# no note per checkpoint save, no FLOPs line that reads 0.
NOISE = ("💡 Tip", "litlogger", "litmodels", "`weights_only` was not set", "Total FLOPs",
         "Trainer already configured with model summary callbacks", "LeafSpec")


@pytest.mark.slow
def test_entry_scripts_round_trip(tiny_shapes, tmp_path):
    """train.py writes best, periodic and last checkpoints; evaluate.py on the best prints the
    mAP training logged; neither prints Lightning's noise."""
    run_dir = tmp_path / "run"
    overrides = [o for o in tiny_train_overrides(tiny_shapes) if "max_epochs" not in o]
    train_run = _run("train.py", *overrides, "trainer.max_epochs=1",
                     "callbacks.periodic_checkpoint.every_n_train_steps=4",  # + last at 6
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert train_run.returncode == 0, train_run.stderr[-3000:]
    assert "Average Precision" in train_run.stdout
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "last.ckpt").exists() and list(checkpoints.glob("step-*.ckpt"))
    assert "Trainable params" in train_run.stdout and "Restored" not in train_run.stdout
    # the model summary's compute, as environment.json records it (instseg.models.cost)
    cost = json.loads((run_dir / "environment.json").read_text())["model"]["cost"]
    assert cost["image_size"] == [96, 96] and cost["gflops"] > cost["gflops_without_detections"]
    assert f"{cost['gflops']:.1f} GFLOPs per 96x96 image" in train_run.stdout
    best = next(checkpoints.glob("best-*.ckpt"))
    logged = torch.load(best, weights_only=True)["instseg"]["metrics"]["val/segm_mAP"]

    eval_dir = tmp_path / "eval"
    eval_run = _run("evaluate.py", f"ckpt={best}", f"hydra.run.dir={eval_dir}", cwd=tmp_path)
    assert eval_run.returncode == 0, eval_run.stderr[-3000:]
    assert f"val/segm_mAP = {logged:.4f} (training logged {logged:.4f}" in eval_run.stdout
    report = json.loads((eval_dir / "metrics.json").read_text())
    assert report["metrics"]["val/segm_mAP"] == pytest.approx(logged, abs=1e-12)
    printed = train_run.stdout + train_run.stderr + eval_run.stdout + eval_run.stderr
    assert [noise for noise in NOISE if noise in printed] == []


@pytest.mark.slow
def test_missing_dataset_is_one_clear_message(tmp_path):
    result = _run("train.py", "data=coco", f"data.root={tmp_path}/nowhere",
                  f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 1
    assert "error: dataset files not found:" in result.stderr  # run_cli's one message
    assert f"{tmp_path}/nowhere/annotations/instances_train2017.json" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_r50_fpn_smoke_run(tiny_shapes, tmp_path):
    cfg = compose_config(
        "train", ["model=r50_fpn", "debug=smoke", *tiny_data_overrides(tiny_shapes)], tmp_path
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert "val/segm_mAP" in metrics


def test_evaluate_writes_results_and_predictions_mode_rescores_them(
    trained_run, tiny_shapes, tmp_path
):
    output_dir, _ = trained_run
    best = next((output_dir / "checkpoints").glob("best-*.ckpt"))
    first = evaluate(compose_config("evaluate", [f"ckpt={best}"], tmp_path / "model"))
    results_file = tmp_path / "model" / "coco_instances_results.json"
    results = json.loads(results_file.read_text())
    assert results and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(
        results[0])
    assert isinstance(results[0]["segmentation"]["counts"], str)  # compressed RLE
    report = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert set(report["ap_per_category"]["segm"]) == {"circle", "rectangle", "triangle", "star"}

    rescored = evaluate(compose_config(
        "evaluate", [f"predictions={results_file}", "data=shapes",
                     *tiny_data_overrides(tiny_shapes)], tmp_path / "rescore"))
    assert rescored == first


def test_validation_logs_per_category_ap_and_precision_recall_figure(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = trained_run
    events = EventAccumulator(str(output_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert "val/segm_AP/circle" in events.Tags()["scalars"]
    assert "val/precision_recall" in events.Tags()["images"]
    # trained with eval.analyze=true: the error analysis figures at each validation
    for tag in ("val/error_analysis", "val/tide_errors"):
        assert len(events.Images(tag)) == 2, tag


def test_error_analysis_of_a_checkpoint_and_of_its_results_file(trained_run, tiny_shapes,
                                                                 tmp_path):
    """eval.analyze=true: both tasks' curves and TIDE errors in metrics.json and two figures;
    the same analysis from the checkpoint and from the results file it wrote; C75 and C50
    end at the AP75 and AP50 stats."""
    from PIL import Image

    output_dir, _ = trained_run
    best = next((output_dir / "checkpoints").glob("best-*.ckpt"))
    metrics = evaluate(compose_config("evaluate", [f"ckpt={best}", "eval.analyze=true"],
                                      tmp_path / "model"))
    report = json.loads((tmp_path / "model" / "metrics.json").read_text())
    analysis = report["error_analysis"]
    assert set(analysis) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        overall = analysis[task]["analyze"]["overall"]["all"]["ap"]
        assert overall["C75"] == pytest.approx(metrics[f"val/{task}_mAP75"], abs=1e-12)
        assert overall["C50"] == pytest.approx(metrics[f"val/{task}_mAP50"], abs=1e-12)
        assert overall["FN"] == 1.0
        assert set(analysis[task]["tide"]["main"]) == {"Cls", "Loc", "Both", "Dupe", "Bkg",
                                                       "Miss"}
    for name in ("error_analysis.png", "tide_errors.png"):
        with Image.open(tmp_path / "model" / name) as image:
            assert image.width > 400

    rescored = compose_config("evaluate", [
        f"predictions={tmp_path / 'model' / 'coco_instances_results.json'}", "data=shapes",
        *tiny_data_overrides(tiny_shapes), "eval.analyze=true"], tmp_path / "rescore")
    evaluate(rescored)
    again = json.loads((tmp_path / "rescore" / "metrics.json").read_text())
    assert again["error_analysis"] == analysis


@pytest.mark.slow
def test_ddp_evaluation_on_two_processes_equals_one(trained_run, tiny_shapes, tmp_path):
    """2 gloo processes on 7 images (the sampler pads one): every image counted once; with
    test-time augmentation (eval.tta=true), whose detections the evaluator takes as any
    model's (plain DDP evaluation: tests/test_training_at_scale.py), and the error analysis
    (rank 0's, while the other rank waits)."""
    output_dir, _ = trained_run
    best = next((output_dir / "checkpoints").glob("best-*.ckpt"))
    data = ["data=shapes", *tiny_data_overrides(tiny_shapes), "data.val_batch_size=1",
            "eval.tta=true", "eval.analyze=true"]
    run = _run("evaluate.py", f"ckpt={best}", *data, "trainer=ddp", "trainer.accelerator=cpu",
               "trainer.devices=2", f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "COCO segm (7 images," in run.stdout  # the padded duplicate is not counted
    assert "Starting with 2 processes" in run.stdout + run.stderr
    evaluate(compose_config("evaluate", [f"ckpt={best}", *data, "trainer.accelerator=cpu"],
                            tmp_path / "single"))
    runs = {}
    for name in ("ddp", "single"):
        report = json.loads((tmp_path / name / "metrics.json").read_text())
        assert report["test_time_augmentation"] == {"scales": [0.8, 1.0, 1.2], "flip": True}
        runs[name] = report["metrics"], report["error_analysis"]
    assert runs["ddp"] == runs["single"]


def test_resume_from_last_checkpoint_continues_the_run(trained_run, tiny_shapes, tmp_path):
    output_dir, _ = trained_run
    last = output_dir / "checkpoints" / "last.ckpt"
    steps_done = torch.load(last, weights_only=True)["global_step"]
    overrides = [o for o in tiny_train_overrides(tiny_shapes) if "max_epochs" not in o]
    cfg = compose_config("train", [*overrides, "trainer.max_epochs=3", f"ckpt_path={last}"],
                         tmp_path)
    train(cfg)
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == steps_done * 3 // 2  # one more epoch, not three
