"""GPU training throughput on real COCO photos: instseg's training step against a hand-written
PyTorch loop over the same torchvision model and batches, per precision and batch size, in one run.

    python benchmarks/bench_gpu_train.py [--precisions 32-true 16-mixed bf16-mixed]
        [--batch-sizes 2 4 8 16] [--warmup 10] [--steps 20] [--profile-steps 3]
        [--variants channels_last compile] [--profile-at 16-mixed:8] [--trace-dir DIR]
        [--coco128 DIR] [--json FILE] [--cpu-dry-run] [OVERRIDE ...]

Data: ../shared/data/coco128-seg (126 annotated COCO photos of 640 px with their polygons),
listed as many times as one run needs (each copy under its own image ids), so that no epoch
ends inside the timed steps, as none does in a COCO epoch of 118k images. The training loader
is CocoDataModule's (data=coco_format: polygons rasterised at full size, aspect-ratio grouping,
the flip; `data.num_workers=auto`, `data.pin_memory=auto`); the model resizes to 800-1333.
Model: conf/model/r50_fpn.yaml in its ImageNet-start shape (FrozenBatchNorm, layers 2-4
trainable; random weights: for timing), SGD with warm-up, gradient clipping at 10.

Sides, for every precision and batch size (same config, seed, weights and batches):
  instseg  instseg.tasks.train.train: Trainer.fit of MaskRCNNModule with the default
           callbacks (checkpoints, LR monitor, progress bar) and the TensorBoard logger;
           validation off, the periodic checkpoint only after the measured steps.
  plain    a hand-written loop (_common.plain_training_step) over the same torchvision
           MaskRCNN (instseg's built net) and loader (the workers and pinning instseg
           resolves for the device): torch.autocast (16-mixed: float16 and a GradScaler;
           bf16-mixed: bfloat16), loss terms summed, backward, unscale, clip_grad_norm_,
           optimizer step (the same SGD, torch's default foreach kernel), scheduler step.
  plain+channels_last, plain+compile (--variants), at --profile-at's precision and batch:
           the plain loop with the model in channels_last memory format / with
           torch.compile(backbone) (dynamic shapes): whether either is worth adopting.

Per run: images/s over --steps steps after --warmup (wall clock, CUDA-synchronised at both
ends), then --profile-steps steps under torch.profiler: the GPU busy fraction (the union of
CUDA kernel intervals over the profiled wall time), peak GPU memory, the loss of the first and
last step. At --profile-at, each side's profile top entries (self CUDA time, self CPU time)
are printed and, with --trace-dir, saved as Chrome traces. Rows are printed as each run ends,
so a run stopped by a time limit keeps what it measured. Then the issue's targets as ratios
of this run. A run that raises is reported and the rest go on; the exit status is 1 when a
run failed, a loss was not finite, or a 16-mixed instseg checkpoint lacks the GradScaler
state. `--cpu-dry-run` runs all of it on the CPU (no CUDA: no busy fraction; 16-mixed is
CUDA-only there).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import (
    SHARED_DATA,
    HelpFormatter,
    compose_config,
    endless,
    plain_training_step,
    quiet_lightning,
)
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from instseg.data.workers import resolve_num_workers, resolve_pin_memory
from instseg.models.module import TARGET_KEYS
from instseg.tasks.common import build_module
from instseg.tasks.train import train

IMAGE_START = ["model.net.backbone.norm=frozen_bn", "model.net.backbone.trainable_layers=3"]
AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


# -- data ---------------------------------------------------------------------------------

def repeated_coco128(coco128: Path, work: Path, images_needed: int) -> tuple[Path, Path]:
    """(image dir, json) listing coco128-seg's annotated photos `k` times (copy<i>/ links to
    the photo folder, fresh image and annotation ids), at least `images_needed` images."""
    source = json.loads((coco128 / "annotations/instances_train2017.json").read_text())
    annotated = {a["image_id"] for a in source["annotations"]}
    images = [i for i in source["images"] if i["id"] in annotated]
    copies = max(1, math.ceil(images_needed / len(images)))
    root = work / "coco128_repeated"
    root.mkdir(parents=True, exist_ok=True)
    out = {"categories": source["categories"], "images": [], "annotations": []}
    for k in range(copies):
        link = root / f"copy{k}"
        if not link.exists():
            link.symlink_to((coco128 / "images/train2017").resolve(), target_is_directory=True)
        offset = k * 10**7
        out["images"] += [{**i, "id": i["id"] + offset, "file_name": f"copy{k}/{i['file_name']}"}
                          for i in images]
        out["annotations"] += [{**a, "id": a["id"] + offset, "image_id": a["image_id"] + offset}
                               for a in source["annotations"]]
    annotations = root / "instances.json"
    annotations.write_text(json.dumps(out))
    return root, annotations


def bench_config(args, work: Path, output_dir: Path, precision: str, batch: int) -> DictConfig:
    total = args.warmup + args.steps + args.profile_steps
    images, annotations = args.data
    return compose_config("train", [
        f"model={args.model}", *IMAGE_START, "data=coco_format",
        f"data.train_images={images}", f"data.train_annotations={annotations}",
        f"data.val_images={images}", f"data.val_annotations={annotations}",
        f"data.batch_size={batch}", "trainer=gpu", f"trainer.precision={precision}",
        f"trainer.max_steps={total}", "trainer.max_epochs=-1", "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "callbacks.periodic_checkpoint.save_on_train_epoch_end=false",
        f"callbacks.periodic_checkpoint.every_n_train_steps={total}",
        *(["trainer.accelerator=cpu"] if args.cpu_dry_run else []), *args.overrides,
    ], work, output_dir)


# -- measuring ----------------------------------------------------------------------------

def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Window:
    """Called at the start of every step (and once after the last): times steps
    [warmup, warmup + steps), then profiles the next `profile_steps`."""

    def __init__(self, warmup: int, steps: int, profile_steps: int, trace: Path | None) -> None:
        self.edges = (warmup, warmup + steps, warmup + steps + profile_steps)
        self.trace = trace
        self.seconds = math.nan
        self.busy = math.nan
        self.profile: torch.profiler.profile | None = None
        self._start = self._profile_start = 0.0

    def at_step(self, step: int) -> None:
        timed_start, timed_end, profiled_end = self.edges
        if step not in self.edges:
            return
        synchronize()
        now = time.perf_counter()
        if step == timed_start:
            self._start = now
        if step == timed_end:
            self.seconds = now - self._start
            if profiled_end > timed_end:
                self._profile_start = time.perf_counter()
                self.profile = torch.profiler.profile(activities=_activities())
                self.profile.start()
        if step == profiled_end and self.profile is not None and profiled_end > timed_end:
            self.profile.stop()
            self.busy = busy_fraction(self.profile, time.perf_counter() - self._profile_start)
            if self.trace is not None:
                self.profile.export_chrome_trace(str(self.trace))


def _activities() -> list:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def busy_fraction(profile: torch.profiler.profile, wall_seconds: float) -> float:
    """The union of the profiled CUDA kernels' intervals over the wall time (NaN without)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in profile.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    if not spans:
        return math.nan
    busy, (start, end) = 0.0, spans[0]
    for s, e in spans[1:]:
        if s > end:
            busy, start, end = busy + end - start, s, e
        else:
            end = max(end, e)
    return (busy + end - start) / 1e6 / wall_seconds


class WindowCallback(pl.Callback):
    """The Window at every training batch start of Trainer.fit, and the first and last loss.
    train() instantiates it from the config; it takes `WindowCallback.window`, set before."""

    window: Window | None = None
    latest: WindowCallback | None = None

    def __init__(self) -> None:
        self.window = WindowCallback.window
        self.losses: list[float] = []
        WindowCallback.latest = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.window.at_step(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in (1, trainer.max_steps):  # first and last: two syncs per run
            self.losses.append(outputs["loss"].item())

    def on_train_end(self, trainer, pl_module) -> None:
        self.window.at_step(trainer.global_step)


# -- the two sides ------------------------------------------------------------------------

def run_instseg(cfg: DictConfig, window: Window) -> dict:
    WindowCallback.window = window
    with open_dict(cfg):
        cfg.callbacks.window = {"_target_": f"{__name__}.WindowCallback"}
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        train(cfg)
    callback = WindowCallback.latest
    scaler = {}
    if cfg.trainer.precision == "16-mixed":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        scaler = torch.load(last, map_location="cpu", weights_only=False).get("MixedPrecision", {})
    return {"losses": callback.losses, "grad_scaler_scale": scaler.get("scale")}


def run_plain(cfg: DictConfig, window: Window, variant: str = "") -> dict:
    """The hand-written loop (see the module docstring) over instseg's built net."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    module, _ = build_module(cfg, datamodule)
    datamodule.setup("fit")
    device = torch.device("cpu" if cfg.trainer.accelerator == "cpu" else "cuda")
    # The loader options instseg's trainer resolves for this device (workers, pinning).
    datamodule.num_workers = resolve_num_workers(cfg.data.num_workers, device.type)
    datamodule.pin_memory = resolve_pin_memory(cfg.data.pin_memory, device.type)
    net = module.net.to(device).train()
    if variant == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    if variant == "compile":
        net.backbone = torch.compile(net.backbone, dynamic=True)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = module.optimizer_factory(params)
    scheduler = module.scheduler_factory(optimizer=optimizer, total_steps=cfg.trainer.max_steps)
    precision = cfg.trainer.precision
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    batches = endless(datamodule.train_dataloader())
    losses = []
    for step in range(cfg.trainer.max_steps):
        window.at_step(step)
        images, targets, _ = next(batches)
        images = [i.to(device, non_blocking=True) for i in images]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items() if k in TARGET_KEYS}
                   for t in targets]
        loss = plain_training_step(net, params, optimizer, images, targets,
                                   cfg.trainer.gradient_clip_val, AUTOCAST.get(precision), scaler)
        scheduler.step()
        if step in (0, cfg.trainer.max_steps - 1):
            losses.append(loss.item())
    window.at_step(cfg.trainer.max_steps)
    return {"losses": losses}


def measure(side: str, precision: str, batch: int, args, work: Path) -> dict:
    """One run of `side` (instseg, plain or plain+<variant>); its row."""
    name = f"{side}_{precision}_{batch}"
    cfg = bench_config(args, work, work / name, precision, batch)
    profiled = f"{precision}:{batch}" == args.profile_at
    trace = args.trace_dir / f"{name}.json" if profiled and args.trace_dir else None
    window = Window(args.warmup, args.steps, args.profile_steps, trace)
    row = {"side": side, "precision": precision, "batch": batch}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        if side == "instseg":
            row |= run_instseg(cfg, window)
        else:
            row |= run_plain(cfg, window, variant=side.partition("+")[2])
    except Exception as error:  # noqa: BLE001  (reported; the other runs go on)
        traceback.print_exc()
        return row | {"error": f"{type(error).__name__}: {error}"}
    row |= {"images_per_s": batch * args.steps / window.seconds, "busy": window.busy,
            "peak_gib": (torch.cuda.max_memory_allocated() / 2**30
                         if torch.cuda.is_available() else math.nan),
            "checkpoint": str(work / name / "checkpoints" / "last.ckpt")}
    if profiled and window.profile is not None:
        print_profile(name, window.profile)
    return row


def print_profile(name: str, profile: torch.profiler.profile) -> None:
    averages = profile.key_averages()
    sorts = (["self_cuda_time_total"] if torch.cuda.is_available() else []) + \
        ["self_cpu_time_total"]
    for sort in sorts:
        print(f"\nprofile of {name}, top 15 by {sort}:")
        print(averages.table(sort_by=sort, row_limit=15, max_name_column_width=60), flush=True)


# -- report -------------------------------------------------------------------------------

COLUMNS = (f"{'side':<22}{'precision':<12}{'batch':>6}{'images/s':>10}{'GPU busy':>10}"
           f"{'peak GiB':>10}{'loss first':>12}{'loss last':>11}")


def print_row(row: dict) -> None:
    if "error" in row:
        print(f"{row['side']:<22}{row['precision']:<12}{row['batch']:>6}  FAILED: "
              f"{row['error'][:200]}", flush=True)
        return
    first, last = (row["losses"] + [math.nan, math.nan])[:2]
    print(f"{row['side']:<22}{row['precision']:<12}{row['batch']:>6}{row['images_per_s']:>10.1f}"
          f"{row['busy']:>10.2f}{row['peak_gib']:>10.1f}{first:>12.4f}{last:>11.4f}", flush=True)


def targets(rows: list[dict]) -> None:
    """The issue's targets, as ratios of this run."""
    rate = {(r["side"], r["precision"], r["batch"]): r["images_per_s"] for r in rows
            if "error" not in r}
    print("\ntargets (this run):")
    for (side, precision, batch), value in sorted(rate.items()):
        if precision == "16-mixed" and (side, "32-true", batch) in rate and side == "instseg":
            ratio = value / rate[(side, "32-true", batch)]
            print(f"  16-mixed / 32-true, instseg, batch {batch}: {ratio:.2f}x (target >= 1.5x)")
        if side == "instseg" and ("plain", precision, batch) in rate:
            ratio = value / rate[("plain", precision, batch)]
            print(f"  instseg / plain, {precision}, batch {batch}: {ratio:.3f} (target >= 0.97)")
    best = max((v, b) for (s, p, b), v in rate.items() if s == "instseg" and p == "16-mixed") \
        if any(s == "instseg" and p == "16-mixed" for s, p, _ in rate) else None
    if best:
        print(f"  best instseg 16-mixed: {best[0]:.1f} images/s at batch {best[1]} "
              "(target >= 100 on one H200)")


def failures(rows: list[dict]) -> list[str]:
    found = []
    for r in rows:
        label = f"{r['side']} {r['precision']} batch {r['batch']}"
        if "error" in r:
            found.append(f"{label}: {r['error'][:120]}")
        elif not all(math.isfinite(x) for x in r["losses"]):
            found.append(f"{label}: loss not finite")
        elif r["side"] == "instseg" and r["precision"] == "16-mixed" \
                and not r.get("grad_scaler_scale"):
            found.append(f"{label}: no GradScaler state in the checkpoint")
    return found


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model", default="r50_fpn")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "16-mixed", "bf16-mixed"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--sides", nargs="+", default=["instseg", "plain"],
                        choices=["instseg", "plain"])
    parser.add_argument("--variants", nargs="*", default=["channels_last", "compile"],
                        choices=["channels_last", "compile"])
    parser.add_argument("--warmup", type=int, default=10, help="steps before the timed ones")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--profile-steps", type=int, default=3, help="profiled steps after them")
    parser.add_argument("--profile-at", default="16-mixed:8",
                        help="PRECISION:BATCH whose profile tables are printed")
    parser.add_argument("--trace-dir", type=Path, help="write Chrome traces there")
    parser.add_argument("--coco128", type=Path, default=SHARED_DATA / "coco128-seg",
                        help="coco128-seg (images/train2017, annotations/) where it is")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run it all on the CPU (tests this script without a GPU)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit("error: no CUDA device: this benchmark measures GPU training")
    quiet_lightning()
    if args.trace_dir:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
    device = "CPU (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}, {os.cpu_count()} CPUs, model {args.model}, "
          f"warm-up {args.warmup}, timed {args.steps}, profiled {args.profile_steps} steps")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_gpu_train.") as tmp:
        work = Path(tmp)
        steps = args.warmup + args.steps + args.profile_steps
        # a quarter more than the steps take: aspect-ratio grouping leaves some batches short
        args.data = repeated_coco128(args.coco128, work,
                                     math.ceil(1.25 * steps * max(args.batch_sizes)))
        runs = [(side, p, b) for p in args.precisions for b in args.batch_sizes
                for side in args.sides]
        profile_precision, _, profile_batch = args.profile_at.partition(":")
        runs += [(f"plain+{v}", profile_precision, int(profile_batch)) for v in args.variants]
        print(COLUMNS, flush=True)
        for side, precision, batch in runs:
            rows.append(measure(side, precision, batch, args, work))
            print_row(rows[-1])
            if args.json:
                args.json.write_text(json.dumps(rows, indent=2))
        targets(rows)
    found = failures(rows)
    if found:
        print("FAILED: " + "; ".join(found))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
