"""CUDA training check: the whole training pipeline on one GPU at fp32, 16-mixed and bf16-mixed.

    python benchmarks/bench_gpu_train.py [--model r50_fpn] [--steps 60] [--batch-sizes 2 4 8]
        [--image-size 640] [--precisions 32-true 16-mixed ...] [--eval-images 200]

For each precision and batch size it runs `instseg.tasks.train.train` (the Hydra config,
ShapesDataModule, Mask R-CNN, SGD with warm-up, gradient clipping, checkpointing, validation
through CocoEvaluator) for `--steps` steps on generated shapes images (resized to the model's
800 px), with Lightning's ThroughputMonitor, and prints in one table: images/s over the last
20 steps (warm-up excluded), the ratio to fp32 at the same batch size, peak GPU memory, the
last training loss and the validation segm mAP. Then evaluate.py's path
(`instseg.tasks.evaluate.evaluate` on the last checkpoint) over --eval-images images, as end-to-end
images/s. Checks (exit status 1 when one fails): CUDA is there, every loss is finite,
validation produced a segm mAP, and a 16-mixed run checkpointed native AMP's GradScaler state
(so mixed precision really ran; there is no apex). `--cpu-dry-run` runs it all on a CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import compose_config

from instseg.tasks.evaluate import evaluate
from instseg.tasks.train import train

WINDOW = 20  # conf/callbacks/throughput_monitor.yaml
RATE = "train/device/samples_per_sec"  # images/s of one device over the window


def _data_overrides(args, work: Path) -> list[str]:
    """One generated set for every run (the largest batch's steps; fewer batches are used)."""
    return [f"data.root={work}/shapes", f"data.num_train={args.steps * max(args.batch_sizes)}",
            f"data.num_val={args.eval_images}", f"data.image_size={args.image_size}",
            "data.val_batch_size=8", f"data.num_workers={args.workers}"]


def run(precision: str, batch_size: int, args, work: Path) -> dict:
    output_dir = work / f"{precision}_{batch_size}"
    cfg = compose_config("train", [
        f"model={args.model}", "trainer=gpu", f"trainer.precision={precision}",
        "trainer.max_epochs=1", f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=2", "trainer.log_every_n_steps=5",
        "trainer.num_sanity_val_steps=0", "logger=csv",
        "callbacks=[model_checkpoint,periodic_checkpoint,throughput_monitor]",
        *_data_overrides(args, work),
        f"data.batch_size={batch_size}", "seed=0",
        *(["trainer.accelerator=cpu"] if args.cpu_dry_run else []),
    ], work, output_dir)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = train(cfg)
    logged = _read_csv(output_dir / "csv" / "metrics.csv")
    rates = [float(r[RATE]) for r in logged if r.get(RATE)]
    checkpoint = torch.load(output_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=False)
    scaler = checkpoint.get("MixedPrecision") or {}
    return {
        "precision": precision, "batch_size": batch_size,
        "images_per_s": rates[-1] if rates else float("nan"),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
        else float("nan"),
        "loss": metrics.get("train/loss", float("nan")),
        "segm_mAP": metrics.get("val/segm_mAP", float("nan")),
        "grad_scaler_scale": scaler.get("scale"),
        "checkpoint": str(output_dir / "checkpoints" / "last.ckpt"),
    }


def run_evaluation(checkpoint: str, precision: str, args, work: Path) -> dict:
    """evaluate.py's path on --eval-images images: wall-clock images/s, model build and
    COCO scoring included."""
    cfg = compose_config("evaluate", [
        f"ckpt={checkpoint}", f"trainer.precision={precision}",
        "trainer.accelerator=" + ("cpu" if args.cpu_dry_run else "gpu"),
    ], work, work / "eval")  # the data config recorded in the checkpoint: the same generated set
    start = time.perf_counter()
    metrics = evaluate(cfg)
    seconds = time.perf_counter() - start
    return {"images": args.eval_images, "seconds": seconds,
            "images_per_s": args.eval_images / seconds, "segm_mAP": metrics["val/segm_mAP"]}


def _read_csv(path: Path) -> list[dict]:
    with open(path) as file:
        return list(csv.DictReader(file))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="r50_fpn")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4])
    parser.add_argument("--eval-images", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--precisions", nargs="+",
                        default=["32-true", "16-mixed", "bf16-mixed"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the same checks on the CPU (tests this script without a GPU)")
    args = parser.parse_args()
    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit("error: no CUDA device: this benchmark checks GPU training")
    if args.steps <= WINDOW:
        sys.exit(f"error: --steps must exceed the throughput window ({WINDOW})")
    device = "CPU (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}, model {args.model}, {args.steps} steps per run")
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(p, b, args, Path(tmp)) for p in args.precisions for b in args.batch_sizes]
        evaluation = run_evaluation(results[-1]["checkpoint"], results[-1]["precision"], args,
                                    Path(tmp))
    failures = _report(results)
    print(f"evaluation ({results[-1]['precision']}, evaluate.py path, {evaluation['images']} "
          f"images, model build and COCO scoring included): "
          f"{evaluation['images_per_s']:.1f} images/s")
    if args.json:
        args.json.write_text(json.dumps({"train": results, "evaluate": evaluation}, indent=2))
    if failures:
        print("FAILED: " + "; ".join(failures))
        sys.exit(1)
    print("all checks passed")


def _report(results: list[dict]) -> list[str]:
    print(f"{'precision':<12}{'batch':>6}{'images/s':>10}{'vs fp32':>9}{'peak GiB':>10}"
          f"{'loss':>9}{'segm mAP':>10}")
    failures = []
    for r in results:
        base = next((b["images_per_s"] for b in results
                     if b["precision"] == "32-true" and b["batch_size"] == r["batch_size"]), None)
        ratio = f"{r['images_per_s'] / base:.2f}x" if base else "-"
        print(f"{r['precision']:<12}{r['batch_size']:>6}{r['images_per_s']:>10.1f}{ratio:>9}"
              f"{r['peak_gib']:>10.1f}{r['loss']:>9.3f}{r['segm_mAP']:>10.4f}")
        if not math.isfinite(r["loss"]):
            failures.append(f"{r['precision']}: loss not finite")
        if not math.isfinite(r["segm_mAP"]):
            failures.append(f"{r['precision']}: no validation segm mAP")
        if not math.isfinite(r["images_per_s"]):
            failures.append(f"{r['precision']}: no throughput logged")
        if r["precision"] == "16-mixed" and not r["grad_scaler_scale"]:
            failures.append("16-mixed: no GradScaler state in the checkpoint")
    return failures


if __name__ == "__main__":
    main()
