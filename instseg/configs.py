"""Where the Hydra configs are: the package `instseg.conf`.

The folder conf/ at the top of the repository is installed as the package `instseg.conf`
(setup.cfg: package_dir, package_data), so a wheel carries every conf/**/*.yaml (never
conf/local/, a developer's own overrides), and an editable install maps `instseg.conf` to the
source conf/ itself: edits there, conf/local/ included, take effect without reinstalling.
Everything that composes a config finds it here:

- `CONFIG_PATH`: the `config_path` of every @hydra.main (train.py, evaluate.py, the commands)
- `compose(name, overrides)`: a config composed outside a Hydra app
- `CONFIG_DIR`, `options(group)`: the package's folder and the options of a config group
- `model_config(cfg, num_classes)`: cfg.model resolved for a number of outputs

A checkout imported without being installed (PYTHONPATH=.) has no `instseg.conf`; there the
checkout's conf/ is read directly.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from instseg.utils import resolvers  # noqa: F401  (registers ${cwd:} for conf/paths)

CONFIG_MODULE = "instseg.conf"

_spec = importlib.util.find_spec(CONFIG_MODULE)
if _spec is not None and _spec.origin is not None:
    # A wheel installs the folder unpacked (instseg/conf/), so it has a path on disk.
    CONFIG_DIR = Path(_spec.origin).parent
    CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
else:  # a checkout on sys.path, not installed
    CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
    CONFIG_PATH = str(CONFIG_DIR)


def options(group: str) -> list[str]:
    """The options of a config group, e.g. options("model") -> ["mobilenet_v3_fpn", ...]."""
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


def compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """conf/<config_name>.yaml with `overrides`, composed outside any Hydra app (so `${hydra:}`
    interpolations, such as paths.output_dir, are unset)."""
    from hydra import compose as compose_config
    from hydra import initialize_config_dir, initialize_config_module

    if CONFIG_PATH.startswith("pkg://"):
        context = initialize_config_module(CONFIG_MODULE, version_base="1.3")
    else:
        context = initialize_config_dir(str(CONFIG_DIR), version_base="1.3")
    with context:
        return compose_config(config_name, overrides=list(overrides))


def model_config(cfg: DictConfig, num_classes: int) -> dict:
    """cfg.model resolved for `num_classes` outputs (categories plus background; the model
    files' predictors read ${num_classes}), as a dict; `cfg` itself is left as it is."""
    run = copy.deepcopy(cfg)
    with open_dict(run):
        run.num_classes = num_classes
    return OmegaConf.to_container(run.model, resolve=True)
