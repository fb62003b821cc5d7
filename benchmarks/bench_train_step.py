"""Training step: instseg's Lightning path against a hand-written PyTorch loop, same model,
data and seed, each run in a process of its own, alternated.

    python benchmarks/bench_train_step.py [--steps 50] [--warmup 10] [--repeats 4]
                                          [--data-dir DIR] [OVERRIDE ...]

Config: conf/train.yaml as train.py composes it (data=shapes: 800 generated 160 px images,
batch 4; model=small_cpu; seed 42; precision 32-true; gradient_clip_val 10; tensorboard
logger; the default callbacks: best and periodic checkpoints, LR monitor, rich progress bar,
rendered as in a terminal into /dev/null), with these overrides for every side:
data.num_workers=0 (batches are read in the main process, so the difference is the loop),
trainer.accelerator=cpu, trainer.max_steps=STEPS (the LR schedule is built for STEPS steps;
within the 100 warm-up steps the LR is the full run's) and trainer.num_sanity_val_steps=0
(before training, never timed). OVERRIDEs in Hydra syntax apply to all, e.g. logger=csv,
or Lightning without extras: logger=none callbacks=none +trainer.enable_progress_bar=false
+trainer.enable_checkpointing=false +trainer.enable_model_summary=false

instseg  `instseg.tasks.train.train(cfg)`, i.e. Trainer.fit of MaskRCNNModule, with one more
         callback recording time.perf_counter() at every on_train_batch_start and _end.
         On CPU its fit has glibc keep freed memory for the next step
         (runtime.reuse_memory, instseg.utils.memory).
plain    the same seed, datamodule (its train_dataloader: same batches in the same order),
         module config (net, optimizer and scheduler partials; the optimizer built as
         instseg builds it, fused: instseg.models.optimizers), then, per batch:
         zero_grad; losses = net(images, targets); sum; backward;
         clip_grad_norm_(params, 10.0); optimizer.step(); scheduler.step()
plain, reused memory
         plain in a process that made instseg's allocator setting first: instseg against
         it is the loop's own overhead, the allocator's share left out.

Timed, the same for all: whole iterations, from the start of one step to the start of the
next (data fetch, forward, backward, clipping, optimizer and LR scheduler step and, for
instseg, everything Lightning does around them: batch transfer, logging every
log_every_n_steps, progress bar, LR monitor, checkpoint callbacks). Per run: median and
mean over the steps after --warmup (the last step, with no next start, is left out of
both). Each repeat runs the three sides, each in a new Python process (the allocator
setting cannot be undone in a process), in an order rotated from one repeat to the next.
Also printed: the split of an iteration into the step (plain: fetched batch to scheduler
step; instseg: on_train_batch_start to _end, which Lightning calls after the scheduler
step) and what surrounds it, and how much each side's median varies across repeats.
All sides start from the same weights and RNG state and see the same batches, so their
per-step losses should agree: the largest difference is printed as a check that they did
the same work.

Last, the optimizer step alone, in this process: the model's parameters with fixed random
gradients, the configured optimizer built fused (as every side above) and as torch builds it
by default, alternated, median ms over --optimizer-steps steps of each per round.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch
from _common import HelpFormatter, compose_config, endless, plain_training_step, quiet_lightning
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from instseg.models.optimizers import build_optimizer
from instseg.tasks.common import build_module
from instseg.tasks.train import train
from instseg.utils.memory import reuse_freed_memory

BENCH_OVERRIDES = ["data.num_workers=0", "trainer.accelerator=cpu",
                   "trainer.num_sanity_val_steps=0"]


@dataclass
class Run:
    """One run: seconds per iteration, and of its step alone (plain: from the fetched batch
    to the scheduler step; instseg: on_train_batch_start to on_train_batch_end), losses."""

    side: str
    seconds: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    schedule_steps: int = 0

    def timed(self, warmup: int, steps: int, part: str = "iteration") -> list[float]:
        """Seconds of the timed iterations (after the warm-up, the last one, steps - 1, left
        out), or of their `part`: "step", or "around" it (iteration - step)."""
        window = slice(warmup, steps - 1)
        if part == "step":
            return self.step_seconds[window]
        if part == "around":
            return [i - s for i, s in zip(self.seconds[window], self.step_seconds[window],
                                          strict=True)]
        return self.seconds[window]


class StepTimer(pl.Callback):
    """Records perf_counter at every training batch start and end, and the step's loss; the
    iteration time is the difference of consecutive starts. The newest instance is
    `StepTimer.latest` (train() instantiates it from the config)."""

    latest: StepTimer | None = None

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.losses: list[float] = []
        self.schedule_steps = 0
        StepTimer.latest = self

    def on_train_start(self, trainer, pl_module) -> None:
        self.schedule_steps = int(trainer.estimated_stepping_batches)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item() if outputs else math.nan)
        self.ends.append(time.perf_counter())


def bench_config(work: Path, data_dir: Path, steps: int, overrides: list[str]) -> DictConfig:
    """conf/train.yaml with the benchmark's overrides, writing under `work`."""
    cfg = compose_config("train", [*BENCH_OVERRIDES, f"trainer.max_steps={steps}", *overrides],
                         work, work / "run", data_dir)
    with open_dict(cfg):
        if cfg.get("callbacks") and "rich_progress_bar" in cfg.callbacks:
            # Render the bar as in an interactive terminal (into /dev/null, see run_instseg).
            cfg.callbacks.rich_progress_bar.console_kwargs = {"force_terminal": True}
    return cfg


def run_instseg(cfg: DictConfig, work: Path) -> Run:
    """instseg.tasks.train.train with a StepTimer callback; Lightning's console output (model
    summary, progress bar) goes to /dev/null."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.paths.output_dir = str(work)
        cfg.callbacks = cfg.get("callbacks") or {}
        cfg.callbacks.step_timer = {"_target_": f"{__name__}.StepTimer"}
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        train(cfg)
    timer = StepTimer.latest
    seconds = [b - a for a, b in itertools.pairwise(timer.starts)] + [math.nan]
    steps = [b - a for a, b in zip(timer.starts, timer.ends, strict=True)]
    return Run("instseg", seconds, steps, timer.losses, timer.schedule_steps)


def run_plain(cfg: DictConfig, steps: int) -> Run:
    """The hand-written loop over the same model, optimizer, scheduler and batches."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as train() does
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    module, _ = build_module(cfg, datamodule)  # the same weights as train()'s, from the seed
    datamodule.setup("fit")
    net = module.net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = module.build_optimizer(params)
    total = min(steps, len(datamodule.train_dataloader()) * cfg.trainer.max_epochs)
    scheduler = module.scheduler_factory(optimizer=optimizer, total_steps=total)
    clip = cfg.trainer.gradient_clip_val
    run = Run("plain", schedule_steps=total)
    batches = endless(datamodule.train_dataloader())
    for _ in range(steps):
        start = time.perf_counter()
        images, targets, _ = next(batches)
        fetched = time.perf_counter()
        loss = plain_training_step(net, params, optimizer, images, targets, clip).item()
        scheduler.step()
        run.losses.append(loss)
        end = time.perf_counter()
        run.seconds.append(end - start)
        run.step_seconds.append(end - fetched)
    return run


SIDES = ("plain", "plain, reused memory", "instseg")


def worker(args) -> None:
    """One run of `args.worker` in this process; the Run as json to args.out."""
    quiet_lightning()
    work = Path(args.out).parent / args.out.stem
    cfg = bench_config(work, args.data_dir, args.steps, args.overrides)
    if args.worker == "plain, reused memory":
        reuse_freed_memory()
    run = (run_instseg(cfg, work) if args.worker == "instseg"
           else run_plain(cfg, args.steps))
    run.side = args.worker
    args.out.write_text(json.dumps(dataclasses.asdict(run)))


def in_subprocess(side: str, index: int, args, work: Path) -> Run:
    out = work / f"{index}.json"
    subprocess.run([sys.executable, __file__, "--worker", side, "--out", str(out),
                    "--steps", str(args.steps), "--data-dir", str(args.data_dir),
                    *args.overrides], check=True)
    return Run(**json.loads(out.read_text()))


def summary(run: Run, warmup: int, steps: int) -> tuple[float, float]:
    """(median, mean) milliseconds per timed iteration."""
    timed = run.timed(warmup, steps)
    return statistics.median(timed) * 1e3, statistics.fmean(timed) * 1e3


def print_header(cfg: DictConfig, args) -> None:
    callbacks = ", ".join(k for k, v in (cfg.get("callbacks") or {}).items() if v) or "none"
    loggers = ", ".join(k for k, v in (cfg.get("logger") or {}).items() if v) or "none"
    print(f"data=shapes ({cfg.data.num_train} train images, {cfg.data.image_size} px), batch "
          f"{cfg.data.batch_size}, num_workers {cfg.data.num_workers}; model "
          f"{cfg.model.net.backbone.arch} FPN at {cfg.model.net.min_size} px; seed {cfg.seed}; "
          f"precision {cfg.trainer.precision}; clip {cfg.trainer.gradient_clip_val}")
    print(f"instseg: logger {loggers}, log_every_n_steps {cfg.trainer.log_every_n_steps}; "
          f"callbacks {callbacks}; runtime.reuse_memory {cfg.runtime.get('reuse_memory')}")
    print(f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs; torch "
          f"{torch.__version__}, Lightning {pl.__version__}; load average "
          f"{os.getloadavg()[0]:.2f} at start")
    timed = args.steps - 1 - args.warmup
    print(f"timed: whole iterations (fetch + step + loop until the next step starts), "
          f"steps {args.warmup}..{args.steps - 2} of {args.steps} ({timed} per run)")


def print_table(runs: list[dict[str, Run]], args) -> dict[str, float]:
    """One row per repeat and the median row; returns the median row by column."""
    names = ["plain ms", "reused ms", "instseg ms", "vs plain", "vs reused",
             "mean vs plain", "mean vs reused", "max|dloss|"]
    print(f"{'repeat':<8}" + "".join(f"{name:>15}" for name in names))
    rows = []
    for index, repeat in enumerate(runs, 1):
        (plain, _), (reused, _), (ours, _) = (summary(repeat[side], args.warmup, args.steps)
                                              for side in SIDES)
        means = {side: summary(repeat[side], args.warmup, args.steps)[1] for side in SIDES}
        dloss = max(abs(a - b) for side in SIDES[:2]
                    for a, b in zip(repeat[side].losses, repeat["instseg"].losses, strict=True))
        rows.append(dict(zip(names, (
            plain, reused, ours, (ours / plain - 1) * 100, (ours / reused - 1) * 100,
            (means["instseg"] / means["plain"] - 1) * 100,
            (means["instseg"] / means["plain, reused memory"] - 1) * 100, dloss), strict=True)))
        _print_row(str(index), rows[-1])
    medians = {name: statistics.median(row[name] for row in rows) for name in names}
    _print_row("median", medians)
    return medians


def _print_row(name: str, row: dict[str, float]) -> None:
    cells = [f"{value:>15.1e}" if column == "max|dloss|"
             else f"{value:>14.1f}%" if "vs" in column else f"{value:>15.1f}"
             for column, value in row.items()]
    print(f"{name:<8}" + "".join(cells))


def print_split(runs: list[dict[str, Run]], args) -> None:
    """Where the time goes: median ms of the step and of what surrounds it, all runs."""
    def median_ms(side: str, part: str) -> float:
        return statistics.median(x for repeat in runs
                                 for x in repeat[side].timed(args.warmup, args.steps, part)) * 1e3

    print("split (median ms over all runs): " + "; ".join(
        f"{side} = step {median_ms(side, 'step'):.1f} + around {median_ms(side, 'around'):.1f}"
        for side in SIDES))
    print("(step: plain from the fetched batch to the scheduler step, instseg from "
          "on_train_batch_start to _end; around: batch fetch and, for instseg, logging, "
          "progress bar, callbacks, loop)")


def print_noise(runs: list[dict[str, Run]], args) -> None:
    """The spread of each side's median across repeats: the noise floor of a comparison."""
    for side in SIDES:
        medians = [summary(repeat[side], args.warmup, args.steps)[0] for repeat in runs]
        print(f"{side} ms/iteration across repeats: {min(medians):.1f} to {max(medians):.1f} "
              f"(spread {(max(medians) / min(medians) - 1) * 100:.1f}%)")


OPTIMIZER_ROUNDS = 3


def optimizer_step_ms(cfg: DictConfig, steps: int, rounds: int = OPTIMIZER_ROUNDS
                      ) -> dict[str, float]:
    """Median ms of one optimizer step over the model's parameters, fused and torch's
    default, alternated over `rounds`."""
    datamodule = instantiate(cfg.data)
    module, _ = build_module(cfg, datamodule)
    params = [p for p in module.net.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    times: dict[str, list[float]] = {"fused": [], "default": []}
    for _ in range(rounds):
        for kind in times:
            optimizer = build_optimizer(module.optimizer_factory, params, fused=kind == "fused")
            optimizer.step()  # state allocated, untimed
            for _ in range(steps):
                start = time.perf_counter()
                optimizer.step()
                times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(t) * 1e3 for kind, t in times.items()}


def print_optimizer_steps(cfg: DictConfig, ms: dict[str, float], steps: int) -> None:
    name = cfg.model.optimizer._target_.rsplit(".", 1)[-1]
    print(f"optimizer step alone ({name}, the model's parameters, fixed gradients; median of "
          f"{OPTIMIZER_ROUNDS * steps}): fused {ms['fused']:.1f} ms, torch's default "
          f"{ms['default']:.1f} ms ({ms['default'] / ms['fused']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="first steps not timed")
    parser.add_argument("--repeats", type=int, default=4,
                        help="runs of each side (the order rotated every repeat)")
    parser.add_argument("--optimizer-steps", type=int, default=20,
                        help="optimizer steps per round in the optimizer comparison")
    parser.add_argument("--data-dir", type=Path,
                        help="paths.data_dir holding (or to receive) shapes/; unset: a "
                             "temporary directory, the set generated there")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every side")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.steps < args.warmup + 3:
        parser.error("--steps must exceed --warmup by at least 3")
    quiet_lightning()
    with tempfile.TemporaryDirectory(prefix="bench_train_step.") as tmp:
        work = Path(tmp)
        args.data_dir = args.data_dir or work / "data"
        cfg = bench_config(work, args.data_dir, args.steps, args.overrides)
        print_header(cfg, args)
        instantiate(cfg.data).prepare_data()  # generate the set once, untimed
        runs = []
        for repeat in range(args.repeats):
            order = SIDES[repeat % 3:] + SIDES[:repeat % 3]
            runs.append({side: in_subprocess(side, repeat * 3 + index, args, work)
                         for index, side in enumerate(order)})
        optimizer_ms = optimizer_step_ms(cfg, args.optimizer_steps)
    schedules = {run.schedule_steps for repeat in runs for run in repeat.values()}
    print(f"LR schedule length (steps) in all: {sorted(schedules)}")
    overhead = print_table(runs, args)
    print("(ms per iteration, median over the timed steps; vs plain = instseg / plain - 1, "
          "vs reused = instseg / (plain, reused memory) - 1, the loop's own overhead; mean: "
          "the same of the means, periodic logging included; max|dloss|: largest per-step "
          "loss difference from instseg within the repeat)")
    print_split(runs, args)
    print_noise(runs, args)
    print(f"load average {os.getloadavg()[0]:.2f} at the end (1 min; this run adds about 1.6: "
          "more means another process shared the CPUs)")
    print(f"allocator setting alone: plain, reused memory / plain = "
          f"{overhead['reused ms'] / overhead['plain ms']:.3f}")
    print(f"overhead: {overhead['vs plain']:.1f}% vs plain, {overhead['vs reused']:.1f}% vs "
          "plain with the same allocator setting (target <= 3%)")
    print_optimizer_steps(cfg, optimizer_ms, args.optimizer_steps)


if __name__ == "__main__":
    main()
