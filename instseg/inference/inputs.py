"""What the demo reads: an image, a video, a folder, a glob, or a list of these."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from instseg.utils.errors import InstsegError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def collect_inputs(specs: str | Iterable[str]) -> list[Path]:
    """Files named by `specs`, in order: folders give their images and videos (sorted), globs
    their matches. A missing path, an empty folder or glob is an InstsegError naming it."""
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    files: list[Path] = []
    for spec in map(str, specs):
        if glob.has_magic(spec):
            found = [Path(p) for p in sorted(glob.glob(spec, recursive=True))
                     if Path(p).is_file()]
        elif Path(spec).is_dir():
            found = sorted(p for p in Path(spec).iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif Path(spec).is_file():
            found = [Path(spec)]
        else:
            raise InstsegError(f"input not found: {spec}")
        if not found:
            raise InstsegError(f"input {spec}: no images or videos in it")
        files.extend(found)
    return files


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def output_stems(paths: list[Path]) -> list[str]:
    """A distinct output name per input: its stem, numbered where stems repeat."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return stems
