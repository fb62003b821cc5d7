"""Every config composes and its _target_s instantiate (models: tests/models/test_zoo.py)."""

import pytest
from hydra.utils import instantiate

from instseg.tasks.common import instantiate_group as _instantiate_group
from tests.conftest import CONFIG_DIR, compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("data", _options("data"))
def test_data_configs_instantiate(data, tmp_path):
    overrides = [f"data={data}"]
    if data == "coco_format":
        overrides += [f"data.{k}={tmp_path}" for k in
                      ("train_images", "train_annotations", "val_images", "val_annotations")]
    cfg = compose_config("train", overrides, tmp_path)
    datamodule = instantiate(cfg.data)
    assert datamodule.batch_size >= 1


@pytest.mark.parametrize("trainer", [t for t in _options("trainer") if t not in ("gpu", "ddp")])
def test_trainer_callbacks_and_loggers_instantiate(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}", "logger=csv"], tmp_path)
    callbacks = _instantiate_group(cfg.callbacks)
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "LearningRateMonitor"}
    trainer_obj = instantiate(cfg.trainer, callbacks=callbacks,
                              logger=_instantiate_group(cfg.logger))
    assert trainer_obj.logger is not None


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_accelerator_trainer_configs_compose(trainer, tmp_path):
    cfg = compose_config("train", [f"trainer={trainer}"], tmp_path)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


@pytest.mark.parametrize("name", ["logger=tensorboard", "logger=none", "callbacks=none",
                                  *[f"debug={d}" for d in _options("debug")],
                                  *[f"experiment={e}" for e in _options("experiment")]])
def test_other_options_compose(name, tmp_path):
    cfg = compose_config("train", [name], tmp_path)
    assert cfg.data._target_ and cfg.model.net._target_


def test_evaluate_config_composes(tmp_path):
    cfg = compose_config("evaluate", ["ckpt=x.ckpt", "data=coco"], tmp_path)
    assert cfg.ckpt == "x.ckpt" and cfg.data._target_ == "instseg.data.CocoDataModule"


@pytest.mark.parametrize("augment", [*_options("augment"), "[lsj,copy_paste,photometric]"])
def test_augment_options_instantiate_with_the_data_module(augment, tmp_path):
    from instseg.data.copy_paste import CopyPaste

    cfg = compose_config("train", [f"augment={augment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    steps = [type(t).__name__ for t in datamodule.train_transforms.transforms]
    assert "RandomHorizontalFlip" in steps
    assert ("ScaleJitter" in steps and "TightBoxes" in steps) == ("lsj" in augment)
    assert ("RandomPhotometricDistort" in steps) == ("photometric" in augment)
    assert isinstance(datamodule.copy_paste, CopyPaste) == ("copy_paste" in augment)
