"""Hydra multirun support: a summary of every sweep, and DDP inside a sweep's jobs.

`SweepSummary` (a Hydra callback, conf/hydra/default.yaml) collects each job's overrides,
output directory and returned metric (val/segm_mAP, what `run_cli` returns) and, when the
sweep ends, prints them as a table, best first, and writes `summary.json` and `summary.csv`
into the sweep directory.

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch.distributed
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)
# What Lightning's subprocess launcher sets in the launching process's environment.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


class SweepSummary(Callback):
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
        self._print(jobs, sweep_dir)

    def _rank_key(self, job: dict) -> tuple:
        value = job[self.metric]
        if value is None:
            return (1, 0.0)
        return (0, -value if self.mode == "max" else value)

    def _print(self, jobs: list[dict], sweep_dir: Path) -> None:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"sweep: {len(jobs)} jobs, best {self.metric} first")
        for column in ("job", self.metric, "overrides that differ", "status"):
            table.add_column(column, justify="left" if column.startswith("over") else "right")
        shared = set.intersection(*(set(job["overrides"].split()) for job in jobs))
        for job in jobs:
            value = job[self.metric]
            differing = " ".join(o for o in job["overrides"].split() if o not in shared)
            table.add_row(str(job["job"]), "-" if value is None else f"{value:.4f}",
                          differing, job["status"])
        console = Console(width=120)
        console.print(table)
        console.print(f"summary.json and summary.csv written to {sweep_dir}")


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
