"""The console commands: thin Hydra shims over the tasks (setup.cfg entry points; train.py and
evaluate.py at the top of the repository are the same for training and evaluation).

User errors end in one message and exit status 1; a run stopped by SIGTERM (its checkpoint
saved) exits with 143, as a process killed by it would.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import hydra
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from instseg.configs import CONFIG_PATH
from instseg.tasks.common import MONITOR
from instseg.utils.errors import exit_on_user_error


def run_cli(task: Callable[[DictConfig], dict[str, float]], cfg: DictConfig) -> float | None:
    """Run `task(cfg)` as a command; return the metric a Hydra sweeper optimises
    (val/segm_mAP; val/bbox_mAP for a bbox-only results file)."""
    try:
        with exit_on_user_error():
            metrics = task(cfg)
    except SIGTERMException:  # Lightning's SystemExit, status 0 by itself
        sys.exit(128 + signal.SIGTERM)
    return metrics.get(MONITOR, metrics.get("val/bbox_mAP"))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="demo")
def demo(cfg: DictConfig) -> None:
    from instseg.tasks.demo import demo as task

    run_cli(task, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="check")
def check(cfg: DictConfig) -> None:
    from instseg.tasks.check import check_dataset, exit_status

    with exit_on_user_error():
        problems = check_dataset(cfg)
    sys.exit(exit_status(problems, cfg.strict))


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="browse")
def browse(cfg: DictConfig) -> None:
    from instseg.tasks.browse import browse as task

    with exit_on_user_error():
        task(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="stats")
def stats(cfg: DictConfig) -> None:
    from instseg.tasks.stats import dataset_stats

    with exit_on_user_error():
        dataset_stats(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="export")
def export(cfg: DictConfig) -> None:
    from instseg.tasks.export import export_model

    with exit_on_user_error():
        export_model(cfg)
