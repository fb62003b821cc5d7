"""The model configs: torchvision equivalence, one training step each, parts overridable."""

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
from torchvision.ops.misc import FrozenBatchNorm2d

from instseg.configs import model_config
from instseg.models.build import instantiate_module
from tests.conftest import CONFIG_DIR, compose_config

MODELS = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
HEAVY = {"r101_fpn", "x101_32x8d_fpn"}


def build(tmp_path, model: str, num_classes: int, *overrides: str):
    cfg = compose_config("train", [f"model={model}", *overrides], tmp_path)
    return instantiate_module(model_config(cfg, num_classes)).net


@pytest.mark.parametrize(("model", "reference"), [("r50_fpn", maskrcnn_resnet50_fpn),
                                                  ("r50_fpn_v2", maskrcnn_resnet50_fpn_v2)])
def test_equals_torchvision_builder(model, reference, tmp_path):
    ours = build(tmp_path, model, 91)
    theirs = reference(weights=None, weights_backbone=None)
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(their_state)
    assert all(ours_state[k].shape == their_state[k].shape for k in their_state)

    assert _settings(ours) == _settings(theirs)
    ours.load_state_dict(their_state, strict=True)
    for net in (ours, theirs):  # the same smaller settings on both, for time
        net.eval()
        net.transform.min_size, net.transform.max_size = (320,), 512
        net.rpn._pre_nms_top_n["testing"] = net.rpn._post_nms_top_n["testing"] = 200
        net.roi_heads.detections_per_img = 20
    image = torch.rand(3, 220, 260, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (mine,), (reference_output,) = ours([image]), theirs([image])
    assert len(mine["boxes"]) > 0
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(mine[key], reference_output[key]), key


def _settings(net) -> dict:
    """The hyperparameters a Mask R-CNN builder sets besides its modules' shapes."""
    rpn, heads, transform = net.rpn, net.roi_heads, net.transform
    return {"size": (transform.min_size, transform.max_size), "mean": transform.image_mean,
            "std": transform.image_std, "rpn_top_n": (rpn._pre_nms_top_n, rpn._post_nms_top_n),
            "rpn": (rpn.nms_thresh, rpn.score_thresh, rpn.min_size,
                    rpn.fg_bg_sampler.batch_size_per_image, rpn.fg_bg_sampler.positive_fraction,
                    rpn.proposal_matcher.high_threshold, rpn.proposal_matcher.low_threshold),
            "anchors": [[tuple(level) for level in option]  # lists from a config, or tuples
                        for option in (rpn.anchor_generator.sizes,
                                       rpn.anchor_generator.aspect_ratios)],
            "heads": (heads.score_thresh, heads.nms_thresh, heads.detections_per_img,
                      heads.fg_bg_sampler.batch_size_per_image,
                      heads.fg_bg_sampler.positive_fraction,
                      heads.proposal_matcher.high_threshold,
                      heads.proposal_matcher.low_threshold, heads.box_coder.weights)}


def _one_step_and_predict(net, size: int = 128) -> dict:
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:60, 20:70] = 1
    masks[1, 70:120, 60:110] = 1
    target = {"boxes": torch.tensor([[20.0, 10, 70, 60], [60, 70, 110, 120]]),
              "labels": torch.tensor([1, 2]), "masks": masks}
    net.train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    losses = net([image], [target])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    net.eval()
    with torch.no_grad():
        return net([image])[0]


@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=pytest.mark.slow) if m in HEAVY else m for m in MODELS]
)
def test_every_model_trains_a_step_and_predicts(model, tmp_path):
    net = build(tmp_path, model, 3, "model.net.min_size=128", "model.net.max_size=128",
                "model.net.box_batch_size_per_image=64", "model.net.rpn_post_nms_top_n_test=100",
                "model.net.box_detections_per_img=10")
    output = _one_step_and_predict(net)
    assert set(output) == {"boxes", "labels", "scores", "masks"}
    assert output["masks"].shape[1:] == (1, 128, 128)
    assert net.roi_heads.box_predictor.cls_score.out_features == 3
    assert net.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 3


def test_command_line_overrides_reach_the_parts(tmp_path):
    net = build(
        tmp_path, "r50_fpn", 5,
        "model.net.rpn_anchor_generator.sizes=[[16],[32],[64],[128],[256]]",
        "model.net.box_detections_per_img=7", "model.net.rpn_post_nms_top_n_test=500",
        "model.net.backbone.norm=frozen_bn", "model.net.backbone.trainable_layers=2",
        "model.net.min_size=600",
    )
    assert [list(s) for s in net.rpn.anchor_generator.sizes] == [[16], [32], [64], [128], [256]]
    assert net.roi_heads.detections_per_img == 7
    assert net.rpn._post_nms_top_n["testing"] == 500
    assert net.transform.min_size == (600,)
    assert isinstance(net.backbone.body.bn1, FrozenBatchNorm2d)
    body = net.backbone.body
    trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}


def test_group_norm_backbone(tmp_path):
    net = build(tmp_path, "r50_fpn", 3, "model.net.backbone.norm=gn")
    assert isinstance(net.backbone.body.layer1[0].bn1, torch.nn.GroupNorm)
