"""The configs ship with the package: conf/ is installed as `instseg.conf` (setup.cfg), so a
wheel installed outside the source tree runs its commands; an editable install reads conf/."""

import configparser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONFIG_DIR, ROOT, shared_data

# What the wheel is built from: the files setup.cfg reads (README.md: long_description).
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "instseg", "conf")
COCO_WEIGHTS = "MaskRCNN_ResNet50_FPN_Weights.COCO_V1"  # conf/model/r50_fpn.yaml, demo's default


def _setup_cfg() -> configparser.ConfigParser:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    return setup


def test_setup_cfg_lists_every_package_under_instseg():
    options = _setup_cfg()["options"]
    listed = options["packages"].split()
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for init in (ROOT / "instseg").rglob("__init__.py")}
    assert sorted(listed) == sorted(on_disk | {"instseg.conf"})
    assert options["package_dir"].split() == ["instseg.conf", "=", "conf"]


def test_an_editable_install_reads_the_source_conf():
    # (a stale instseg.egg-info in the checkout is a distribution too, without direct_url.json)
    urls = [json.loads(dist.read_text("direct_url.json") or "{}")
            for dist in importlib.metadata.distributions(name="instseg")]
    if not any(url.get("dir_info", {}).get("editable") for url in urls):
        pytest.skip("instseg has no editable install here (a checkout on sys.path reads conf/)")
    from instseg import configs

    assert configs.CONFIG_PATH == "pkg://instseg.conf", 'reinstall: pip install -e ".[dev]"'
    assert configs.CONFIG_DIR == CONFIG_DIR


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the source (so that the build leaves no build/ in the repo), with
    a developer's overrides planted in conf/local/."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / name, source / name)
    (source / "conf/local/deeper").mkdir(parents=True, exist_ok=True)
    (source / "conf/local/default.yaml").write_text("# @package _global_\nseed: 1\n")
    (source / "conf/local/deeper/mine.yaml").write_text("seed: 2\n")
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-index",
                    "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
                   cwd=source, check=True, capture_output=True, timeout=300)
    [built] = (tmp / "dist").glob("instseg-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel) -> Path:
    """The wheel installed into a folder of its own, outside the source tree."""
    target = wheel.parent / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    return target


def _run_installed(site: Path, command: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    """`command` from `cwd` (outside the repository) with instseg from `site`, everything else
    (torch, hydra, ...) from this environment; an instseg-* command is site's console script."""
    if command[0].startswith("instseg-"):
        command = [str(site / "bin" / command[0]), *command[1:]]
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("INSTSEG_ROOT", "PYTHONPATH")}
    environment.update(PYTHONPATH=str(site), COLUMNS="200", **env)
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_the_wheel_carries_every_config_and_no_local_override(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    relative = [path.relative_to(CONFIG_DIR) for path in CONFIG_DIR.rglob("*.yaml")]
    configs = {f"instseg/conf/{path.as_posix()}" for path in relative if path.parts[0] != "local"}
    assert len(configs) > 40
    shipped = {name for name in names if name.startswith("instseg/conf/")}
    assert shipped == configs | {"instseg/conf/__init__.py"}
    assert {"instseg/configs.py", "instseg/cli.py", "instseg/tasks/check.py",
            "instseg/data/convert/cli.py"} <= names


COMPOSE = """
import json, instseg, instseg.conf
from instseg import configs

train = configs.compose("train", ["model=r50_fpn", "experiment=coco_r50_fpn_1x"])
evaluate = configs.compose("evaluate", ["ckpt=x.ckpt", "data=coco"])
from hydra import compose, initialize_config_module

with initialize_config_module("instseg.conf", version_base="1.3"):
    default = compose("train")
    others = {name: compose(name) for name in ("demo", "check", "stats", "browse")}
print(json.dumps({
    "instseg": instseg.__file__, "conf": instseg.conf.__file__, "path": configs.CONFIG_PATH,
    "models": configs.options("model"), "seed": default.seed,
    "default": [default.model.net.backbone.arch, default.data._target_],
    "train": [train.model.net.backbone.arch, train.data._target_],
    "evaluate": [evaluate.ckpt, evaluate.data._target_, evaluate.trainer._target_],
    "tasks": [cfg.task_name for cfg in others.values()],
}))
"""


@pytest.mark.slow
def test_the_installed_package_composes_train_and_evaluate_from_its_configs(site, tmp_path):
    done = _run_installed(site, [sys.executable, "-c", COMPOSE], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])
    assert Path(found["instseg"]).is_relative_to(site)
    assert Path(found["conf"]).is_relative_to(site)
    assert found["path"] == "pkg://instseg.conf"
    assert found["models"] == sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    assert found["seed"] == 42  # conf/local/default.yaml (planted in the built copy) is not read
    assert found["default"] == ["resnet18", "instseg.data.ShapesDataModule"]
    assert found["train"] == ["resnet50", "instseg.data.CocoDataModule"]
    assert found["evaluate"] == ["x.ckpt", "instseg.data.CocoDataModule",
                                 "pytorch_lightning.Trainer"]
    assert found["tasks"] == ["demo", "check", "stats", "browse"]


@pytest.mark.slow
def test_the_installed_instseg_demo_runs_its_default_coco_model(site, weights_cache, tmp_path):
    [image] = sorted(shared_data("demo-images").glob("*.jpg"))[:1]
    weights_cache.plant(COCO_WEIGHTS)
    done = _run_installed(site, ["instseg-demo", f"input={image}", "min_size=160",
                                 "max_size=256", "hydra.run.dir=run"],
                          tmp_path / "work", TORCH_HOME=str(weights_cache.root))
    assert done.returncode == 0, done.stderr[-3000:]
    output = tmp_path / "work/run"
    assert {p.name for p in output.iterdir()} >= {f"{image.stem}.png", f"{image.stem}.json",
                                                   "demo_summary.json"}
    assert "demo: 1 inputs" in done.stdout


@pytest.mark.slow
def test_the_installed_instseg_check_data_checks_real_data(site, tmp_path):
    sample = shared_data("coco-sample")
    done = _run_installed(site, ["instseg-check-data", f"annotations={sample}/annotations.json",
                                 f"images={sample}/images", "hydra.run.dir=run"],
                          tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "work/run/check_report.json").read_text())
    assert {p["kind"] for p in report} == {"no annotations"}  # image 89 has none


@pytest.mark.slow
def test_the_installed_instseg_convert_converts_the_voc_sample(site, tmp_path):
    voc = shared_data("coco-sample", "voc")
    done = _run_installed(site, ["instseg-convert", "voc", "--root", str(voc), "-o",
                                 "voc.json"], tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    dataset = json.loads((tmp_path / "work/voc.json").read_text())
    assert (len(dataset["images"]), len(dataset["annotations"])) == (1, 2)
