"""Loader processes and pinned memory: what `data.num_workers: auto` and `data.pin_memory: auto`
resolve to, given the device of the trainer the loaders feed.

- Training on CPUs: 0 workers. The model's threads use every core; a worker process only
  competes with them (benchmarks/bench_data.py: 0 workers trained fastest on 2 cores).
- Training on GPUs: the CPUs this process may use, shared by the processes of the node
  (one per GPU), minus one for the main process, at most MAX_AUTO_WORKERS. One core makes
  about 100 flipped 640 px COCO photos per second and about 7 with LSJ and copy-paste
  (benchmarks/bench_augment.py), so a few workers keep up with any GPU for the default
  augmentation, and more than 8 are worth their memory only for heavy augmentation on a
  fast GPU: set `data.num_workers` there.
- Pinned memory: on when the trainer's device is a CUDA GPU, so that the batch copies to it
  are asynchronous (Lightning copies with non_blocking=True).

Without a trainer (data tools, browsing) auto means 0 workers and no pinning. Where auto
chose 0 workers for a CPU trainer, Lightning's hint to add workers is not shown.
"""

from __future__ import annotations

import os
import warnings

from instseg.utils.errors import InstsegError

AUTO = "auto"
MAX_AUTO_WORKERS = 8
WORKERS_HINT = r"The '\w+' does not have many workers"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_num_workers(requested: int | str, device: str | None, devices: int = 1) -> int:
    """`requested` (an int >= 0) as is; "auto" as the module docstring says, for a trainer
    on `device` ("cuda", "cpu", ...; None: no trainer) with `devices` per node."""
    if requested != AUTO:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0:
            raise InstsegError(f"data.num_workers={requested!r}: expected an integer >= 0 or "
                               f"{AUTO!r}")
        return requested
    if device != "cuda":
        if device is not None:  # Lightning would suggest workers: on CPUs none is faster
            warnings.filterwarnings("ignore", message=WORKERS_HINT)
        return 0
    per_process = usable_cpus() // max(1, devices)
    return max(1, min(MAX_AUTO_WORKERS, per_process - 1))


def resolve_pin_memory(requested: bool | str, device: str | None) -> bool:
    """`requested` (a bool) as is; "auto": pinned when `device` is "cuda"."""
    if requested == AUTO:
        return device == "cuda"
    if not isinstance(requested, bool):
        raise InstsegError(f"data.pin_memory={requested!r}: expected true, false or {AUTO!r}")
    return requested
