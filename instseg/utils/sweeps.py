"""Hydra multirun support: a summary of every sweep, and DDP inside a sweep's jobs.

`SweepSummary` (a Hydra callback, conf/hydra/default.yaml) collects each job's overrides,
output directory and returned metric (val/segm_mAP, what `run_cli` returns) and, when the
sweep ends, prints them as a table, best first, and writes into the sweep directory
`summary.json`, `summary.csv` and `summary.png`: the final metric per job (bars, best first,
labelled by the overrides that differ between jobs; failed jobs marked "failed") above the
metric over training steps per job, read back from each job's own logs (`metric_history`:
TensorBoard events under `<output_dir>/tensorboard/`, else the CSV logger's
`<output_dir>/csv/metrics.csv`). Jobs without such logs get no curve, and the printed summary
counts them; a job whose logs cannot be read is named in a warning and the rest are plotted.

`ddp_children_run_this_job()`: Lightning's DDP launcher starts ranks 1..N-1 by re-running
this process's command line with `hydra.run.dir=<Hydra's run dir>`. Under `-m` that command
is the whole sweep, and the run dir is not the job's directory: every extra rank would run
every job again, into a second sweep folder. Inside the context, the command line is this
job's own overrides and the run dir is the job's output directory, so each extra rank joins
the job it belongs to and writes where its rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

# matplotlib, tensorboard and rich are imported where they are used: every training run imports
# this module (for ddp_children_run_this_job), only the end of a sweep draws or prints.
if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

log = logging.getLogger(__name__)
# What Lightning's subprocess launcher sets in the launching process's environment.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
# Where conf/logger/{tensorboard,csv}.yaml write, relative to a job's output directory.
TENSORBOARD_DIR = "tensorboard"
CSV_METRICS = "csv/metrics.csv"


class SweepSummary(Callback):
    """Collects every job of a multirun; at its end writes summary.json/.csv/.png and prints a
    table. A job is a dict: job (number), overrides (one string), <metric> (float, None when
    the job failed or returned NaN), status ("done" or "failed: ..."), output_dir."""

    def __init__(self, metric: str = "val/segm_mAP", mode: str = "max") -> None:
        self.metric = metric
        self.mode = mode
        self.jobs: list[dict[str, Any]] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.jobs = []

    def on_job_end(self, config: DictConfig, job_return, **kwargs: Any) -> None:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            return
        try:
            value = job_return.return_value
        except Exception as error:  # the job raised: Hydra re-raises it when asked for
            value, status = None, f"failed: {error}"
        else:
            status = "done"
        self.jobs.append({
            "job": job_return.hydra_cfg.hydra.job.num,
            "overrides": " ".join(job_return.overrides),
            self.metric: None if value is None or math.isnan(value) else float(value),
            "status": status,
            "output_dir": job_return.hydra_cfg.hydra.runtime.output_dir,
        })

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the summaries into `config.hydra.sweep.dir` and print the table. The table
        and the json/csv come before the figure: a plotting error still leaves them."""
        if not self.jobs:
            return
        jobs = sorted(self.jobs, key=self._rank_key)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / "summary.json").write_text(json.dumps(jobs, indent=2))
        with open(sweep_dir / "summary.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(jobs[0]))
            writer.writeheader()
            writer.writerows(jobs)
        console = self._print_table(jobs)
        histories, unreadable = job_histories(jobs, self.metric)
        sweep_figure(jobs, self.metric, histories).savefig(sweep_dir / "summary.png", dpi=100)
        # soft_wrap: a path or job list cut at the console's width would not paste back whole.
        console.print(f"summary.json, summary.csv and summary.png written to {sweep_dir}",
                      soft_wrap=True)
        console.print(_histories_note(jobs, self.metric, histories, unreadable), soft_wrap=True)

    def _rank_key(self, job: dict) -> tuple:
        value = job[self.metric]
        if value is None:
            return (1, 0.0)
        return (0, -value if self.mode == "max" else value)

    def _print_table(self, jobs: list[dict]) -> Console:
        """Print the table of `jobs` (in the given order); return the console it went to."""
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"sweep: {len(jobs)} jobs, best {self.metric} first")
        for column in ("job", self.metric, "overrides that differ", "status"):
            table.add_column(column, justify="left" if column.startswith("over") else "right")
        for job, differing in zip(jobs, differing_overrides(jobs), strict=True):
            value = job[self.metric]
            table.add_row(str(job["job"]), "-" if value is None else f"{value:.4f}",
                          differing, job["status"])
        console = Console(width=120)
        console.print(table)
        return console


def differing_overrides(jobs: list[dict]) -> list[str]:
    """For each of `jobs` (at least one; same order), its overrides that not every job shares,
    as one space-separated string: what tells the jobs apart."""
    shared = set.intersection(*(set(job["overrides"].split()) for job in jobs))
    return [" ".join(o for o in job["overrides"].split() if o not in shared) for job in jobs]


def metric_log(output_dir: Path) -> Path | None:
    """The log `metric_history` reads in a job's `output_dir`: its TensorBoard directory if it
    holds event files, else its CSV logger's metrics.csv if present, else None."""
    tensorboard = output_dir / TENSORBOARD_DIR
    if tensorboard.is_dir() and any(tensorboard.glob("events.out.tfevents.*")):
        return tensorboard
    metrics_csv = output_dir / CSV_METRICS
    return metrics_csv if metrics_csv.is_file() else None


def metric_history(output_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, value) of every logged `metric` in the job's log (`metric_log`), steps ascending;
    a step logged twice (a resumed run) keeps its last value. [] when the job has no log or
    the log lacks the metric; unreadable logs raise."""
    source = metric_log(output_dir)
    if source is None:
        return []
    read = _tensorboard_scalars if source.is_dir() else _csv_scalars
    return sorted(dict(read(source, metric)).items())


def _tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing import event_accumulator

    # 0: keep every scalar (the default keeps a random sample of 10,000).
    accumulator = event_accumulator.EventAccumulator(
        str(directory), size_guidance={event_accumulator.SCALARS: 0})
    reader_log = logging.getLogger("tensorboard")
    level = reader_log.level
    reader_log.setLevel(logging.WARNING)  # its "No path found after <file>" per file read
    try:
        accumulator.Reload()
    finally:
        reader_log.setLevel(level)
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def _csv_scalars(path: Path, column: str) -> list[tuple[int, float]]:
    with open(path, newline="") as file:
        # Lightning's CSVLogger writes one row per log call; other metrics' rows leave it empty.
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(file)
                if row.get(column) not in (None, "")]


def job_histories(jobs: list[dict], metric: str) -> tuple[dict[int, list[tuple[int, float]]],
                                                         list[int]]:
    """`metric_history` of each job, by job number, and the numbers of the jobs whose logs
    could not be read (each named in a warning with its file; they get no history)."""
    histories, unreadable = {}, []
    for job in jobs:
        output_dir = Path(job["output_dir"])
        try:
            histories[job["job"]] = metric_history(output_dir, metric)
        except Exception as error:  # one corrupt log must not cost the sweep its other curves
            log.warning("sweep summary: job %s: cannot read %s from %s: %r", job["job"], metric,
                        metric_log(output_dir), error)
            unreadable.append(job["job"])
    return histories, unreadable


def sweep_figure(jobs: list[dict], metric: str,
                 histories: dict[int, list[tuple[int, float]]]) -> Figure:
    """Two panels: `metric` per job as horizontal bars in the order of `jobs` (top first; no bar
    and "failed" where the value is None), and one line per job with a non-empty history
    (`histories[job number]`, in the order of `jobs`), `metric` over training steps."""
    from matplotlib.figure import Figure

    # A Figure of its own (no pyplot) needs no global backend: savefig renders with Agg.
    figure = Figure(figsize=(10, 4 + 0.35 * len(jobs)), layout="constrained")
    bars, curves = figure.subplots(2, 1, height_ratios=[1 + 0.35 * len(jobs), 3])
    _plot_bars(bars, jobs, metric)
    _plot_curves(curves, jobs, metric, histories)
    return figure


def _plot_bars(ax, jobs: list[dict], metric: str) -> None:
    # Wrapped, not cut: the overrides are what the bar is about.
    labels = [textwrap.fill(f"{job['job']}: {differing}", 60) for job, differing
              in zip(jobs, differing_overrides(jobs), strict=True)]
    ax.set_yticks(range(len(jobs)), labels, fontsize="small")
    # Set, not left to the bars: failed jobs have none but keep their row. Best (first) on top.
    ax.set_ylim(len(jobs) - 0.5, -0.5)
    ax.margins(x=0.15)  # room for the value printed after the longest bar
    for row, job in enumerate(jobs):
        value = job[metric]
        if value is None:
            ax.text(0, row, " failed", va="center", color="tab:red")
        else:
            ax.barh(row, value, color="tab:blue")
            ax.text(value, row, f" {value:.4f}", va="center", fontsize="small")
    ax.set_xlabel(f"final {metric}")
    ax.set_title(f"{len(jobs)} jobs, best first")


def _plot_curves(ax, jobs: list[dict], metric: str,
                 histories: dict[int, list[tuple[int, float]]]) -> None:
    for job in jobs:
        history = histories.get(job["job"])
        if history:
            steps, values = zip(*history, strict=True)
            ax.plot(steps, values, marker="o", markersize=3, label=f"job {job['job']}")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if ax.get_lines():
        ax.legend(fontsize="small", ncols=max(1, len(ax.get_lines()) // 10))
    else:
        ax.text(0.5, 0.5, f"no job logged {metric}", ha="center", transform=ax.transAxes)


def _histories_note(jobs: list[dict], metric: str,
                    histories: dict[int, list[tuple[int, float]]], unreadable: list[int]) -> str:
    """The printed account of summary.png's curves: how many jobs have one and why not the rest."""
    missing = [job["job"] for job in jobs if job["job"] in histories and not histories[job["job"]]]
    plotted = len(jobs) - len(missing) - len(unreadable)
    note = f"summary.png: {plotted} of {len(jobs)} jobs with a {metric} curve"
    if missing:
        note += (f"; {len(missing)} without {metric} in {TENSORBOARD_DIR}/ or {CSV_METRICS}"
                 f" (jobs {', '.join(map(str, missing))})")
    if unreadable:
        note += (f"; {len(unreadable)} with unreadable logs (jobs "
                 f"{', '.join(map(str, unreadable))}, see the warnings)")
    return note


@contextmanager
def ddp_children_run_this_job():
    """See the module docstring; a no-op outside a Hydra multirun."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        yield
        return
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_run_dir = sys.argv[:], hydra_cfg.run.dir
    saved_environment = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = saved_argv
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = saved_run_dir
        # Lightning leaves the process group up and its launch variables set (with LOCAL_RANK
        # set, the next job's launcher would think its ranks were started outside).
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
