"""What a run ran on, written next to its config: versions, git commit, world size, devices."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

PACKAGES = ("torch", "torchvision", "pytorch-lightning", "hydra-core", "pycocotools",
            "faster-coco-eval", "numpy")


def environment(world_size: int) -> dict:
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
        "command": sys.argv,
    }


def write_environment(path: Path, world_size: int) -> None:
    path.write_text(json.dumps(environment(world_size), indent=2))


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
