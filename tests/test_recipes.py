"""The COCO experiments are the recipes their headers name. The expected values are the
sources' own, written here with the source, not read from our configs:

- detectron2 configs/Base-RCNN-FPN.yaml + COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml
  / _3x.yaml: IMS_PER_BATCH 16, BASE_LR 0.02, MOMENTUM 0.9, WEIGHT_DECAY 1e-4, WARMUP_ITERS
  1000, WARMUP_FACTOR 1/1000, STEPS (60000, 80000) / (210000, 250000), MAX_ITER 90000 /
  270000, MIN_SIZE_TRAIN (640, ..., 800), MAX_SIZE_TRAIN 1333, MIN_SIZE_TEST 800,
  MAX_SIZE_TEST 1333, BACKBONE.FREEZE_AT 2, RESNETS.NORM FrozenBN.
- torchvision references/detection README, maskrcnn_resnet50_fpn: --epochs 26 --lr-steps 16
  22 --aspect-ratio-group-factor 3, lr 0.02 on 8 GPUs x 2 images, momentum 0.9, weight decay
  1e-4, warm-up over the first min(1000, len(loader) - 1) iterations from 1/1000, hflip 0.5,
  --weights-backbone ResNet50_Weights.IMAGENET1K_V1, trainable_backbone_layers 3 (FrozenBN).
- torchvision pull request 5773 (maskrcnn_resnet50_fpn_v2's recipe): --epochs 400 --lr-steps
  352 384 --lr 0.1 --batch-size 2 on 32 GPUs --weight-decay 0.00004 --sync-bn
  --data-augmentation lsj (ScaleJitter to 1024 x 1024, FixedSizeCrop 1024, hflip 0.5); no
  backbone weights.
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config

DETECTRON2_MIN_SIZE_TRAIN = [640, 672, 704, 736, 768, 800]


def _recipe(name: str, tmp_path) -> dict:
    cfg = compose_config("train", [f"experiment={name}"], tmp_path)
    cfg.num_classes = 81
    return OmegaConf.to_container(cfg, resolve=True)


def _common_detectron2(cfg: dict) -> None:
    net, optimizer, scheduler = cfg["model"]["net"], cfg["model"]["optimizer"], \
        cfg["model"]["scheduler"]
    assert cfg["scale_lr_from_batch"] == 16
    assert (optimizer["lr"], optimizer["momentum"], optimizer["weight_decay"]) == \
        (0.02, 0.9, 1e-4)
    assert (scheduler["warmup_steps"], scheduler["warmup_factor"]) == (1000, 0.001)
    assert net["min_size"] == DETECTRON2_MIN_SIZE_TRAIN and net["max_size"] == 1333
    assert net["min_size"][-1] == 800  # torchvision's transform tests at the last size
    assert net["backbone"]["norm"] == "frozen_bn"
    assert net["backbone"]["trainable_layers"] == 3  # FREEZE_AT 2: stem and res2 frozen
    assert cfg["data"]["train_transforms"]["hflip_prob"] == 0.5


@pytest.mark.parametrize("name, max_steps, milestones", [
    ("coco_r50_fpn_1x", 90000, [60000, 80000]),
    ("coco_r50_fpn_3x", 270000, [210000, 250000]),
])
def test_detectron2_schedules(name, max_steps, milestones, tmp_path):
    cfg = _recipe(name, tmp_path)
    _common_detectron2(cfg)
    assert cfg["trainer"]["max_steps"] == max_steps
    assert cfg["model"]["scheduler"]["milestones"] == milestones


def test_torchvision_26_epoch_recipe(tmp_path):
    cfg = _recipe("coco_r50_fpn", tmp_path)
    net, optimizer, scheduler = cfg["model"]["net"], cfg["model"]["optimizer"], \
        cfg["model"]["scheduler"]
    assert cfg["trainer"]["max_epochs"] == 26 and cfg["scale_lr_from_batch"] == 16
    assert (optimizer["lr"], optimizer["momentum"], optimizer["weight_decay"]) == \
        (0.02, 0.9, 1e-4)
    assert [round(m * 26, 6) for m in scheduler["milestones"]] == [16, 22]
    assert (scheduler["warmup_steps"], scheduler["warmup_factor"]) == (1000, 0.001)
    assert cfg["data"]["group_aspect_ratio"] is True
    assert cfg["data"]["train_transforms"] == {
        "_target_": "instseg.data.transforms.training_transforms", "hflip_prob": 0.5}
    assert (net["min_size"], net["max_size"]) == (800, 1333)
    assert net["backbone"]["weights"] == "IMAGENET1K_V1"
    assert (net["backbone"]["norm"], net["backbone"]["trainable_layers"]) == ("frozen_bn", 3)


def test_torchvision_v2_lsj_recipe(tmp_path):
    cfg = _recipe("coco_r50_fpn_v2_lsj", tmp_path)
    model, transforms = cfg["model"], cfg["data"]["train_transforms"]
    assert model["coco_weights"] == "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"
    assert cfg["trainer"]["max_epochs"] == 400 and cfg["trainer"]["sync_batchnorm"] is True
    assert cfg["scale_lr_from_batch"] == 2 * 32 and cfg["data"]["batch_size"] == 2
    assert (model["optimizer"]["lr"], model["optimizer"]["weight_decay"]) == (0.1, 4e-5)
    assert [round(m * 400, 6) for m in model["scheduler"]["milestones"]] == [352, 384]
    assert model["net"]["backbone"]["weights"] is None
    assert model["net"]["backbone"]["norm"] == "bn"
    assert transforms["scale_jitter"] == {"target_size": [1024, 1024],
                                          "scale_range": [0.1, 2.0]}
    assert transforms["crop_size"] == [1024, 1024] and transforms["hflip_prob"] == 0.5
    assert cfg["data"].get("copy_paste") is None  # not in the source's command
    assert (model["net"]["min_size"], model["net"]["max_size"]) == (800, 1333)
