"""What a check finds: the kinds of problem and their severities (`KINDS`, the one table of
cases; the README's bad-data table lists the same), a `Problem` naming its file and records,
and `CheckedAnnotations`, what the datasets and the evaluator use of a checked json."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pycocotools.coco import COCO

from instseg.utils.errors import InstsegError

ERROR, SKIP, FIXED = "error", "skip", "fixed"


@dataclass(frozen=True)
class Kind:
    severity: str
    action: str  # what training does


KINDS: dict[str, Kind] = {
    "unreadable json": Kind(ERROR, "stops: the file is not a COCO instances json"),
    "missing key": Kind(ERROR, "stops, naming the record and the key"),
    "wrong type": Kind(ERROR, "stops, naming the record and the field"),
    "duplicate image id": Kind(ERROR, "stops, naming both file names"),
    "duplicate annotation id": Kind(ERROR, "stops"),
    "duplicate category id": Kind(ERROR, "stops"),
    "different categories": Kind(ERROR, "stops: both splits need the same 'categories'"),
    "unknown image id": Kind(SKIP, "annotation skipped"),
    "unknown category id": Kind(SKIP, "annotation skipped"),
    "degenerate box": Kind(SKIP, "annotation skipped (box width or height under 1 px)"),
    "box outside image": Kind(SKIP, "annotation skipped (no part of its box is in the image)"),
    "empty segmentation": Kind(SKIP, "annotation skipped"),
    "short polygons only": Kind(SKIP, "annotation skipped (every polygon has < 3 points)"),
    "mask size mismatch": Kind(SKIP, "annotation skipped (RLE size is not the image's)"),
    "missing image file": Kind(SKIP, "image skipped"),
    "unreadable image": Kind(SKIP, "image skipped when read: logged, train/skipped_images"),
    "size mismatch": Kind(SKIP, "image skipped when read: logged, train/skipped_images"),
    "only crowd regions": Kind(SKIP, "not trained on; kept in the evaluation ground truth"),
    "no annotations": Kind(SKIP, "not trained on; kept in the evaluation ground truth"),
    "box partly outside image": Kind(FIXED, "box clipped to the image"),
    "short polygon part": Kind(FIXED, "polygons of < 3 points dropped, the rest kept"),
    "missing area": Kind(FIXED, "area computed from the segmentation"),
    "converted colour": Kind(FIXED, "read as 8-bit RGB"),
    "exif orientation": Kind(FIXED, "not rotated: annotations refer to the stored pixels"),
    "large image": Kind(FIXED, "downscaled when read for training (data.max_image_side)"),
}


@dataclass(frozen=True)
class Problem:
    kind: str
    source: str  # the json, or the image file
    detail: str
    image_id: int | None = None
    annotation_id: int | None = None

    @property
    def severity(self) -> str:
        return KINDS[self.kind].severity

    def __str__(self) -> str:
        return f"{self.source}{self._ids()}: {self.kind}: {self.detail}"

    def brief(self) -> str:
        """Without the json's path and the kind (for a table of one json's problems)."""
        name = "" if self.source.endswith(".json") else f" {Path(self.source).name}"
        return f"{self._ids().strip()}{name}: {self.detail}".lstrip(": ")

    def _ids(self) -> str:
        return "".join(
            f" {name} {value}" for name, value in
            (("image", self.image_id), ("annotation", self.annotation_id)) if value is not None
        )

    def as_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "source": self.source,
                "image_id": self.image_id, "annotation_id": self.annotation_id,
                "detail": self.detail}


@dataclass
class CheckedAnnotations:
    """A checked json: its problems and what the datasets and the evaluator use."""

    source: Path
    problems: list[Problem] = field(default_factory=list)
    images: dict[int, dict] = field(default_factory=dict)
    categories: list[dict] = field(default_factory=list)
    train_annotations: dict[int, list[dict]] = field(default_factory=dict)
    ground_truth: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    def skipped_images(self) -> set[int]:
        return {p.image_id for p in self.problems if p.kind == "missing image file"}

    @cached_property
    def coco(self) -> COCO:
        """pycocotools' index of the evaluation ground truth."""
        coco = COCO()
        coco.dataset = self.ground_truth
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco


def raise_on_errors(checked: CheckedAnnotations, shown: int = 10) -> None:
    """InstsegError listing the first `shown` errors of `checked`, if it has any."""
    errors = checked.errors
    if not errors:
        return
    lines = [f"  {problem}" for problem in errors[:shown]]
    if len(errors) > shown:
        lines.append(f"  ... and {len(errors) - shown} more")
    raise InstsegError(
        f"{checked.source}: {len(errors)} error(s) in the annotations:\n" + "\n".join(lines)
        + f"\nFull report: instseg-check-data annotations={checked.source} "
        "images=<image folder>"
    )


def short_repr(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
