"""Pretrained weights: the fine-tune rule, label spaces, local files, the offline message."""

import logging
import shutil

import pytest
import torch
from hydra.utils import instantiate
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from instseg.data.categories import CategoryMap
from instseg.data.coco import load_coco
from instseg.models.weights import (
    load_pretrained,
    published_state_dict,
    read_torch_file,
    state_dict_of,
)
from instseg.tasks.common import build_module
from instseg.tasks.train import train
from instseg.utils.errors import InstsegError
from tests.conftest import compose_config, shared_data, tiny_data_overrides, tiny_train_overrides
from tests.models.test_zoo import build

PREDICTOR_KEYS = {
    "roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias",
    "roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias",
    "roi_heads.mask_predictor.mask_fcn_logits.weight",
    "roi_heads.mask_predictor.mask_fcn_logits.bias",
}


def _coco128_overrides() -> list[str]:
    root = shared_data("coco128-seg")
    images, annotations = root / "images/train2017", root / "annotations/instances_train2017.json"
    return ["data=coco_format", f"data.train_images={images}", f"data.val_images={images}",
            f"data.train_annotations={annotations}", f"data.val_annotations={annotations}",
            "data.num_workers=0"]


@pytest.fixture(scope="module")
def shapes_checkpoint(tiny_shapes, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("shapes_run")
    overrides = [*tiny_train_overrides(tiny_shapes), "trainer.max_epochs=1"]
    train(compose_config("train", overrides, output_dir))
    yield output_dir / "checkpoints" / "last.ckpt"
    shutil.rmtree(output_dir, ignore_errors=True)


def test_shapes_checkpoint_initialises_coco128_model_except_predictors(
    shapes_checkpoint, tmp_path, caplog
):
    cfg = compose_config("train", ["model=small_cpu", f"model.weights={shapes_checkpoint}",
                                   *_coco128_overrides()], tmp_path)
    datamodule = instantiate(cfg.data)
    with caplog.at_level(logging.INFO, logger="instseg.models.weights"):
        module, model = build_module(cfg, datamodule)
    assert model["net"]["box_predictor"]["num_classes"] == 81
    assert datamodule.categories.num_classes == 81
    logged = next(r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage())
    assert {k.strip() for k in logged.split(":", 1)[1].split(",")} == PREDICTOR_KEYS
    source = state_dict_of(read_torch_file(shapes_checkpoint), shapes_checkpoint)
    state = module.net.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in source if k not in PREDICTOR_KEYS)
    assert not torch.equal(state["roi_heads.box_predictor.cls_score.bias"][:5],
                           source["roi_heads.box_predictor.cls_score.bias"])


def test_coco128_checkpoint_initialises_shapes_model_except_predictors(tiny_shapes, tmp_path):
    coco_run = tmp_path / "coco_run"
    train(compose_config("train", [
        *_coco128_overrides(), "model.net.min_size=96", "model.net.max_size=96",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1", "data.batch_size=2", "logger=csv",
    ], coco_run))
    checkpoint = coco_run / "checkpoints" / "last.ckpt"
    cfg = compose_config("train", [f"model.weights={checkpoint}",
                                   *tiny_data_overrides(tiny_shapes)], tmp_path / "shapes")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    net = build_module(cfg, datamodule)[0].net
    assert net.roi_heads.box_predictor.cls_score.out_features == 5
    source = state_dict_of(read_torch_file(checkpoint), checkpoint)
    assert torch.equal(net.state_dict()["backbone.body.conv1.weight"],
                       source["backbone.body.conv1.weight"])


def test_same_categories_keep_every_key(shapes_checkpoint, tiny_shapes, tmp_path):
    cfg = compose_config("train", [f"model.weights={shapes_checkpoint}",
                                   *tiny_data_overrides(tiny_shapes)], tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    net = build_module(cfg, datamodule)[0].net
    source = state_dict_of(read_torch_file(shapes_checkpoint), shapes_checkpoint)
    assert all(torch.equal(v, source[k]) for k, v in net.state_dict().items())


def test_torchvision_coco_label_space_covers_coco_datasets():
    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    coco_space = CategoryMap.from_torchvision(names)
    assert coco_space.num_classes == 91
    for path in [shared_data("coco128-seg", "annotations", "instances_train2017.json"),
                 shared_data("coco-sample", "annotations.json")]:
        data = CategoryMap.from_coco_categories(load_coco(path).dataset["categories"])
        assert coco_space.covers(data)
        # A COCO-weights label is the raw category id, in both directions.
        assert coco_space.to_labels(data.category_ids).tolist() == list(data.category_ids)
        assert coco_space.to_category_ids(data.category_ids) == list(data.category_ids)


def test_other_mismatches_are_errors_that_list_the_keys(tmp_path):
    net = build(tmp_path, "small_cpu", 3)
    state = dict(net.state_dict())
    state["backbone.extra.weight"] = torch.zeros(1)
    del state["backbone.fpn.layer_blocks.0.0.weight"]
    state["rpn.head.conv.0.0.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(InstsegError) as error:
        load_pretrained(net, state, "weights.pth")
    message = str(error.value)
    for key in ["backbone.extra.weight", "backbone.fpn.layer_blocks.0.0.weight",
                "rpn.head.conv.0.0.weight"]:
        assert key in message


def test_plain_state_dict_file_loads(tmp_path):
    net = build(tmp_path, "small_cpu", 3)
    torch.save(net.state_dict(), tmp_path / "plain.pth")
    torch.save({"model": net.state_dict()}, tmp_path / "reference_script.pth")
    for name in ["plain.pth", "reference_script.pth"]:
        state = state_dict_of(read_torch_file(tmp_path / name), tmp_path / name)
        assert load_pretrained(build(tmp_path, "small_cpu", 3), state, name) == []


def test_offline_coco_weights_stop_with_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    weights = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    with pytest.raises(InstsegError) as error:
        published_state_dict(weights)
    message = str(error.value)
    assert weights.url in message
    expected_file = tmp_path / "empty_cache" / "hub" / "checkpoints" / weights.url.split("/")[-1]
    assert str(expected_file) in message


def test_offline_imagenet_backbone_weights_stop_with_one_clear_message(tmp_path, monkeypatch):
    from instseg.models.backbones import resnet_fpn

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(InstsegError, match=r"resnet18-.*\.pth"):
        resnet_fpn(arch="resnet18", weights="IMAGENET1K_V1")


def test_evaluate_from_weights_equals_evaluate_from_checkpoint(
    shapes_checkpoint, tiny_shapes, tmp_path
):
    from instseg.tasks.evaluate import evaluate

    from_checkpoint = evaluate(compose_config(
        "evaluate", [f"ckpt={shapes_checkpoint}"], tmp_path / "ckpt"))
    overrides = ["model=small_cpu", f"model.weights={shapes_checkpoint}",
                 "model.net.min_size=96", "model.net.max_size=96",
                 "data=shapes", *tiny_data_overrides(tiny_shapes)]
    from_weights = evaluate(compose_config("evaluate", overrides, tmp_path / "weights"))
    assert from_weights == from_checkpoint


def test_evaluate_without_checkpoint_or_model_says_what_it_needs(tmp_path):
    from instseg.tasks.evaluate import evaluate

    with pytest.raises(InstsegError, match="ckpt=PATH, or model="):
        evaluate(compose_config("evaluate", [], tmp_path))
