"""benchmarks/*.py run end to end at the smallest settings, each as a user runs it (a script in
a process of its own), and the checks each prints of the work it compared hold. Nothing here
reads a timing: the figures are the scripts' business on a quiet machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_data, tiny_data_overrides

pytestmark = pytest.mark.slow
SMALL_MODEL = ["model=small_cpu", "model.net.min_size=96", "model.net.max_size=96"]


def run_benchmark(name: str, *args: str, cwd: Path) -> str:
    """The script's stdout; the test fails with its output when it exits non-zero."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout


def test_bench_train_step_runs_the_same_steps_on_both_sides(tiny_shapes, tmp_path):
    out = run_benchmark("bench_train_step.py", "--steps", "5", "--warmup", "1", "--repeats", "1",
                        "--optimizer-steps", "2", *tiny_data_overrides(tiny_shapes),
                        *SMALL_MODEL, "data.batch_size=2", cwd=tmp_path)
    median = next(line for line in out.splitlines() if line.startswith("median"))
    assert median.split()[-1] == "0.0e+00"  # max|dloss|: identical losses at every step
    assert re.search(r"^overhead: -?\d+\.\d%", out, re.MULTILINE)
    assert re.search(r"^optimizer step alone \(AdamW.*: fused \d+\.\d ms", out, re.MULTILINE)


def test_bench_data_feeds_the_model_the_same_batches_from_the_loader(tiny_shapes, tmp_path):
    shared_data("coco128-seg")  # its JPEGs for the decoder comparison
    out = run_benchmark("bench_data.py", "--workers", "0", "--batches", "2", "--steps", "2",
                        "--repeats", "1", *tiny_data_overrides(tiny_shapes), *SMALL_MODEL,
                        cwd=tmp_path)
    row = next(line for line in out.splitlines() if line.startswith("0 "))
    assert "yes" in row.split()  # same losses fed by the loader as from memory
    assert re.search(r"pixels: \d+/\d+ images identical", out)


def test_bench_augment_rates_every_augmentation_against_flip(tmp_path):
    shared_data("coco128-seg")
    out = run_benchmark("bench_augment.py", "--images", "4", "--workers", "0", "--repeats", "1",
                        "--canvas", "128", cwd=tmp_path)
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split() and line.split()[0] in ("flip", "lsj", "lsj+copy_paste")}
    assert rows["flip"][2] == "1.00x" and set(rows) == {"flip", "lsj", "lsj+copy_paste"}
    stages = {m[1]: float(m[2]) for m in re.finditer(r"^  (\w[\w ]+?) +([\d.]+) ms$", out, re.M)}
    assert set(stages) == {"decoding", "polygons to masks", "flipping", "whole sample"}
    assert stages["whole sample"] > stages["decoding"]  # decoding is one part of a sample
    cores = re.search(r"^  flip: +(\d+), (\d+), (\d+)$", out, re.M)
    assert cores and int(cores[1]) <= int(cores[3])  # more cores for a faster GPU (25, 100)


def test_bench_inference_compares_plain_and_ours_on_a_trained_model(tiny_checkpoint, tmp_path):
    photos = shared_data("coco-sample", "images")
    out = run_benchmark("bench_inference.py", "--ckpt", str(tiny_checkpoint), "--sizes", "96",
                        "--runs", "1", "--image-dir", str(photos), "--backends",
                        "onnxruntime", "openvino", "torchscript", cwd=tmp_path)
    rows = {line.split()[1]: line.split() for line in out.splitlines()
            if line.split()[:1] == ["96"]}
    assert set(rows) == {"32-true", "onnxruntime", "openvino", "torchscript"}
    assert len(rows["32-true"]) == 13  # size .. ratio vs 'plain, reused memory'
    for backend in ("onnxruntime", "openvino", "torchscript"):
        assert rows[backend][9] == "True", rows[backend]  # the plain net's detections


def test_bench_gpu_train_dry_run_on_the_cpu(tmp_path):
    """Both sides and a variant on coco128-seg photos; the same weights, seed and batches
    give both sides the same first loss."""
    shared_data("coco128-seg")
    out = run_benchmark("bench_gpu_train.py", "--cpu-dry-run", "--model", "small_cpu",
                        "--precisions", "32-true", "--batch-sizes", "2", "--warmup", "1",
                        "--steps", "1", "--profile-steps", "1", "--variants", "channels_last",
                        "--profile-at", "32-true:2", "--trace-dir", str(tmp_path / "traces"),
                        "model.net.min_size=96", "model.net.max_size=160", cwd=tmp_path)
    assert "all checks passed" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] in (["instseg"], ["plain"], ["plain+channels_last"])
            and len(line.split()) == 8}
    assert set(rows) == {"instseg", "plain", "plain+channels_last"}
    assert len({row[6] for row in rows.values()}) == 1  # first loss, to 4 decimals
    assert "top 15 by self_cpu_time_total" in out
    assert len(list((tmp_path / "traces").glob("*.json"))) == 3


def test_bench_evaluation_gives_pycocotools_stats(tmp_path):
    out = run_benchmark("bench_evaluation.py", "--images", "12", "--detections", "10",
                        cwd=tmp_path)
    assert "12 stats of bbox and segm equal to 1e-12: True" in out
