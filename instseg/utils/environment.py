"""What a run ran on (versions, git commit, world size, devices), written next to its config;
and the random number generators' states, saved in checkpoints for exact resume."""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "pycocotools",
            "faster-coco-eval", "numpy")


def environment(world_size: int, model: dict | None = None) -> dict:
    """The machine, packages and command; `model`: what the task records of the model (its
    parameters and compute per image)."""
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "packages": packages, "git_commit": _git_commit(), "world_size": world_size,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i)
                                             for i in range(torch.cuda.device_count())],
        "command": sys.argv, "model": model,
    }


def write_environment(path: Path, world_size: int, model: dict | None = None) -> None:
    path.write_text(json.dumps(environment(world_size, model), indent=2))


def _git_commit() -> str | None:
    """HEAD of the instseg checkout (with "+dirty" when it has uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty.strip() else "")


def rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values (so a
    checkpoint holding them still loads with torch.load(weights_only=True))."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": [version, list(python_state), python_gauss],
    }


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, python_gauss = states["python"]
    random.setstate((version, tuple(python_state), python_gauss))
