"""`instseg-check-data`: check a dataset before training
(conf/check.yaml). A thin Hydra shim over `instseg.data.validation`: every problem of the
json(s) and images, a table by kind, check_report.json, exit status 1 on errors."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import track
from rich.table import Table

from instseg.data.categories import CategoryMap
from instseg.data.validation import ERROR, KINDS, SKIP, CheckedAnnotations, Problem, check_split
from instseg.utils.errors import InstsegError


def dataset_files(cfg: DictConfig, splits: tuple[str, ...] = ("train", "val"),
                  need_images: bool = True) -> dict[str, tuple[Path, Path | None]]:
    """{split: (json, image folder)} of the command's dataset: annotations=JSON images=FOLDER
    (one split, "dataset"), or the `splits` of data=<config> (generated or checked for
    missing files by its prepare_data). The commands check, browse and stats all take it."""
    if cfg.get("annotations"):
        if need_images and not cfg.get("images"):
            raise InstsegError("annotations=JSON needs images=FOLDER (where its files are)")
        return {"dataset": (Path(cfg.annotations),
                            Path(cfg.images) if cfg.get("images") else None)}
    if cfg.get("data") is None:
        raise InstsegError("say which dataset: annotations=JSON images=FOLDER, or "
                           "data=<config> [data.root=...]")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    paths = datamodule.paths
    return {split: (paths[f"{split}_annotations"], paths[f"{split}_images"])
            for split in splits}


def dataset_split(cfg: DictConfig, need_images: bool = True) -> tuple[Path, Path | None]:
    """(json, image folder) of annotations=/images=, or of data=<config> split=train|val."""
    split = cfg.get("split", "val")
    if split not in ("train", "val"):
        raise InstsegError(f"split={split}: expected train or val")
    (files,) = dataset_files(cfg, (split,), need_images).values()
    return files


def check_dataset(cfg: DictConfig) -> list[Problem]:
    """Check every split; print the tables; write cfg.report; return all problems."""
    console = Console()
    checked: dict[str, CheckedAnnotations] = {}
    for split, (annotation_file, image_dir) in dataset_files(cfg).items():
        checked[split] = check_split(
            annotation_file, image_dir, full=cfg.full, max_image_side=cfg.max_image_side,
            progress=lambda items, s=split: track(items, description=f"reading {s} images",
                                                  console=console, transient=True),
        )
    if "train" in checked:
        checked["train"].problems.extend(_category_mismatch(checked))
    for split, result in checked.items():
        title = f"{split}: {result.source} ({len(result.images)} images)"
        console.print(problem_table(title, result.problems, cfg.show))
    problems = [p for result in checked.values() for p in result.problems]
    report = Path(cfg.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps([p.as_dict() for p in problems], indent=1))
    counts = Counter(p.severity for p in problems)
    console.print(f"{counts[ERROR]} errors, {counts[SKIP]} skipped records, "
                  f"{counts['fixed']} fixed; every problem: {report}")
    return problems


def _category_mismatch(checked: dict[str, CheckedAnnotations]) -> list[Problem]:
    if set(checked) != {"train", "val"} or any(c.errors for c in checked.values()):
        return []
    train, val = (CategoryMap.from_coco_categories(checked[s].categories)
                  for s in ("train", "val"))
    if train == val:
        return []
    return [Problem("different categories", str(checked["train"].source),
                    f"{len(train.names)} categories here, {len(val.names)} in "
                    f"{checked['val'].source}, or other ids / names")]


def problem_table(title: str, problems: list[Problem], show: int) -> Table:
    """One row per kind found: severity, count, what training does, the first examples."""
    table = Table(title=title, title_justify="left", show_lines=True)
    for column in ("kind", "severity", "count", "training", "examples"):
        table.add_column(column, overflow="fold")
    by_kind: dict[str, list[Problem]] = {}
    for problem in problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    order = {ERROR: 0, SKIP: 1, "fixed": 2}
    for kind, found in sorted(by_kind.items(), key=lambda kv: order[KINDS[kv[0]].severity]):
        examples = "\n".join(p.brief() for p in found[:show])
        more = f"\n... {len(found) - show} more" if len(found) > show else ""
        table.add_row(kind, KINDS[kind].severity, str(len(found)), KINDS[kind].action,
                      examples + more)
    if not by_kind:
        table.add_row("none", "", "0", "", "no problem found")
    return table


def exit_status(problems: list[Problem], strict: bool) -> int:
    severities = {p.severity for p in problems}
    return int(ERROR in severities or (strict and SKIP in severities))
