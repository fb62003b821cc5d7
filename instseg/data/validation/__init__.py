"""Checks of a COCO instances json and its image folder: every problem is named by file, image
id and annotation id, together with what training does about it.

Severities (`KINDS` is the one table of cases; the README's bad-data table lists the same):
    error  training refuses to start: the json cannot be trusted as it is
    skip   training goes on without the record (annotation or image), counted and logged
    fixed  training uses the record after the repair or conversion the kind names

`check_annotations` is the cheap part (json records, image files exist), run by every training
and evaluation start; `check_images` decodes every image (the checker command,
`instseg-check-data`, runs both). The result, `CheckedAnnotations`, carries what the
datasets use: the usable non-crowd annotations per image (boxes clipped to the image,
polygons of fewer than 3 points dropped) and the evaluation ground truth (the json without
its skipped annotations, a missing `area` computed from the segmentation).

Modules: `problems` (kinds, Problem, CheckedAnnotations), `schema` (record fields and
types), `annotations` (the json checks), `cleaning` (one annotation as training uses it),
`images` (decoding checks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from instseg.data.validation.annotations import (
    check_annotations,
    complete_lvis_records,
    read_annotation_json,
)
from instseg.data.validation.cleaning import clean_annotation
from instseg.data.validation.images import check_images
from instseg.data.validation.problems import (
    ERROR,
    FIXED,
    KINDS,
    SKIP,
    CheckedAnnotations,
    Kind,
    Problem,
    raise_on_errors,
)
from instseg.utils.errors import InstsegError

__all__ = ["ERROR", "FIXED", "KINDS", "SKIP", "CheckedAnnotations", "Kind", "Problem",
           "check_annotations", "check_images", "check_split", "clean_annotation",
           "complete_lvis_records",
           "raise_on_errors", "read_annotation_json"]


def check_split(annotation_file: str | Path, image_dir: str | Path, full: bool = True,
                max_image_side: int = 4096,
                progress: Callable[[Iterable], Iterable] = iter) -> CheckedAnnotations:
    """All checks of one json and its image folder (`full`: decode every image too)."""
    try:
        data = read_annotation_json(annotation_file)
    except InstsegError as error:
        checked = CheckedAnnotations(Path(annotation_file))
        checked.problems.append(Problem("unreadable json", str(annotation_file), str(error)))
        return checked
    image_dir = Path(image_dir)
    checked = check_annotations(data, annotation_file, image_dir)
    if not image_dir.is_dir():
        checked.problems.append(Problem("missing image file", str(image_dir),
                                        "the image folder does not exist"))
    elif full and not checked.errors:
        checked.problems.extend(check_images(checked, image_dir, max_image_side, progress))
    return checked
