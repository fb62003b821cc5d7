"""COCO-evaluate a checkpoint: python evaluate.py ckpt=PATH [data=... key=value ...]."""

import hydra
from omegaconf import DictConfig

from instseg.cli import run_cli
from instseg.configs import CONFIG_PATH
from instseg.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    return run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
