"""The instseg-demo entry point: a thin Hydra shim over instseg.pipeline.demo."""

import hydra
from omegaconf import DictConfig

from instseg.pipeline import CONFIG_DIR, demo, run_cli


# An absolute path: as a console script Hydra would look for "conf" as a Python package.
@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="demo")
def main(cfg: DictConfig) -> None:
    run_cli(demo, cfg)
