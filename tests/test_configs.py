"""Every config composes; every _target_ instantiates; r50_fpn is torchvision's architecture."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torchvision.models.detection import maskrcnn_resnet50_fpn

from instseg.pipeline import _instantiate_group
from tests.conftest import CONFIG_DIR, compose_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("model", _options("model"))
def test_model_configs_instantiate(model, tmp_path):
    cfg = compose_config("train", [f"model={model}"], tmp_path)
    with open_dict(cfg):
        cfg.num_classes = 5
    module = instantiate(cfg.model)
    module.eval()
    with torch.no_grad():
        (output,) = module([torch.rand(3, 100, 120)])
    assert set(output) == {"boxes", "labels", "scores", "masks"}
    assert module.net.roi_heads.box_predictor.cls_score.out_features == 5
    assert module.net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 5


def test_r50_fpn_has_torchvision_state_dict(tmp_path):
    cfg = compose_config("train", ["model=r50_fpn"], tmp_path)
    with open_dict(cfg):
        cfg.num_classes = 91
    ours = instantiate(cfg.model.net).state_dict()
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    assert list(ours) == list(reference)
    assert all(ours[k].shape == reference[k].shape for k in reference)


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
