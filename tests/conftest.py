"""Shared fixtures: config composition, a tiny generated shapes set, the real data folder, and
a torch hub cache of planted weights (tests/weights_cache.py).

No test may reach the network, whether or not the machine has one: at start, every HTTP(S)
request of this process and of the processes it starts goes to a proxy on a closed local
port, so a download fails at once (torch.hub raises URLError), as it does offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from tests.weights_cache import WeightsCache

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# A handful of 96 px images: enough for every code path, seconds to train on.
TINY_SHAPES = dict(num_train=12, num_val=7, image_size=96, max_objects=3, seed=1)


CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens there


def pytest_configure(config) -> None:
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        os.environ[name] = CLOSED_PORT_PROXY
    for name in ("no_proxy", "NO_PROXY"):
        os.environ.pop(name, None)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; skip where the folder is absent, except under CI."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing, and CI must run the tests that read it")
        pytest.skip(f"{path} is absent (real data lives in ../shared/data)")
    return path


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/<name>.yaml as the entry script would, writing into `output_dir`."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name=name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(output_dir)  # the app's cwd; Hydra's resolvers are absent here
        cfg.paths.output_dir = str(output_dir)
    return cfg


def tiny_data_overrides(shapes_root: Path) -> list[str]:
    """Overrides that point data=shapes at the tiny set (the same parameters: no regeneration)."""
    return [f"data.root={shapes_root}", *[f"data.{k}={v}" for k, v in TINY_SHAPES.items()],
            "data.num_workers=0"]


def tiny_train_overrides(shapes_root: Path) -> list[str]:
    """Overrides for a few CPU steps of the small model on the tiny shapes set."""
    return [
        *tiny_data_overrides(shapes_root),
        "data.batch_size=2",
        "model.net.min_size=96",
        "model.net.max_size=96",
        "model.scheduler.warmup_steps=2",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
    ]


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    from instseg.data.synthetic import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("data") / "shapes", **TINY_SHAPES)


@pytest.fixture(scope="session")
def trained_run(tiny_shapes, tmp_path_factory) -> tuple[Path, dict]:
    """(run directory, final metrics) of a tiny model trained a few CPU steps on tiny_shapes."""
    from instseg.tasks.train import train

    output_dir = tmp_path_factory.mktemp("run")
    # with the error analysis at each validation (two here), for the TensorBoard test
    cfg = compose_config("train", [*tiny_train_overrides(tiny_shapes), "eval.analyze=true"],
                         output_dir)
    metrics = train(cfg)
    return output_dir, metrics


@pytest.fixture(scope="session")
def tiny_checkpoint(trained_run) -> Path:
    """The best checkpoint of trained_run."""
    return next((trained_run[0] / "checkpoints").glob("best-*.ckpt"))


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory) -> WeightsCache:
    """A TORCH_HOME to plant torchvision weight files in (`.plant(enum name, ...)`); tests
    point TORCH_HOME at `.root` with monkeypatch.setenv (subprocesses inherit it)."""
    return WeightsCache(tmp_path_factory.mktemp("torch_home"))
