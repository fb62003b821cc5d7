"""Train Mask R-CNN: python train.py [model=r50_fpn] [data=coco data.root=...] [key=value ...]."""

import hydra
from omegaconf import DictConfig

from instseg.cli import run_cli
from instseg.configs import CONFIG_PATH
from instseg.tasks.train import train


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_cli(train, cfg)


if __name__ == "__main__":
    main()
