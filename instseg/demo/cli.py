"""The instseg-demo entry point: a thin Hydra shim over instseg.pipeline.demo."""

import hydra
from omegaconf import DictConfig

from instseg.configs import CONFIG_PATH
from instseg.pipeline import demo, run_cli


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="demo")
def main(cfg: DictConfig) -> None:
    run_cli(demo, cfg)
