"""Every training augmentation on real photos (coco128-seg, coco-sample): boxes stay on their
masks, no instance disappears without being counted, crowd regions move with their image,
and a sample's augmentation is a function of (seed, epoch, index)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import masks_to_boxes
from torchvision.transforms.v2 import functional as F

from instseg.data.coco import CocoInstances, collate
from instseg.data.copy_paste import CopyPaste
from instseg.data.transforms import training_transforms
from instseg.models.build import instantiate_module
from tests.conftest import shared_data

CANVAS = [512, 512]  # a smaller canvas than the recipes' 1024, for time; same code
AUGMENTATIONS = {
    "flip": dict(hflip_prob=1.0),
    "lsj": dict(scale_jitter={"target_size": CANVAS, "scale_range": [0.1, 2.0]},
                crop_size=CANVAS),
    "lsj_small_scales": dict(scale_jitter={"target_size": CANVAS, "scale_range": [0.05, 0.1]},
                             crop_size=CANVAS, min_pixels=20),
    "photometric": dict(photometric={"p": 1.0}),
    "lsj_photometric_flip": dict(scale_jitter={"target_size": CANVAS}, crop_size=CANVAS,
                                 photometric={}, hflip_prob=0.5),
}
SAMPLES = range(0, 126, 18)  # 7 photos of coco128-seg's 126 with annotations
# COCO's boxes are its polygons' extents, the masks their rasterisation: within 2 px.
ANNOTATION_TOLERANCE = 2.0


def _coco128(**options) -> CocoInstances:
    root = shared_data("coco128-seg")
    return CocoInstances(root / "images/train2017",
                         root / "annotations/instances_train2017.json", train=True, **options)


def _extents(masks: torch.Tensor) -> torch.Tensor:
    """[x0, y0, x1, y1] of each mask's pixels, x1 / y1 after the last pixel."""
    return masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1]) if len(masks) else \
        torch.zeros((0, 4))


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_boxes_stay_on_masks_and_every_dropped_instance_is_counted(name):
    options = AUGMENTATIONS[name]
    plain, augmented = _coco128(), _coco128(transforms=training_transforms(**options))
    geometric = "crop_size" in options
    dropped = 0
    for index in SAMPLES:
        image, target = augmented[(11, index)]
        _, before = plain[index]
        masks, boxes = target["masks"], target["boxes"]
        assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
        assert masks.shape[1:] == image.shape[1:] and len(masks) == len(boxes)
        assert (masks.flatten(1).sum(1) >= options.get("min_pixels", 1)).all()
        if geometric:  # boxes are their masks' extents again
            assert torch.equal(boxes, _extents(masks))
            assert tuple(image.shape[1:]) == tuple(CANVAS)
        else:
            assert torch.allclose(boxes, _extents(masks), atol=ANNOTATION_TOLERANCE)
        count = target.get("dropped_instances", 0)
        assert len(target["labels"]) + count == len(before["labels"])
        dropped += count
    if name == "lsj_small_scales":
        assert dropped > 0  # tiny scales lose instances: they are counted


@pytest.mark.parametrize("name", ["lsj", "lsj_photometric_flip"])
def test_a_samples_augmentation_is_a_function_of_seed_epoch_and_index(name):
    dataset = _coco128(transforms=training_transforms(**AUGMENTATIONS[name]))
    first, again = dataset[(5, 3)], dataset[(5, 3)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["masks"], again[1]["masks"])
    torch.manual_seed(0)  # the global generator plays no part
    assert torch.equal(dataset[(5, 3)][0], first[0])
    other_epoch = dataset[(6, 3)]  # another (seed, epoch): another draw
    assert not torch.equal(other_epoch[0], first[0])


def test_crowd_regions_follow_their_image():
    root = shared_data("coco-sample")
    crowd_image = next(a["image_id"] for a in CocoInstances(
        root / "images", root / "annotations.json", train=True).coco.dataset["annotations"]
        if a["iscrowd"])

    def sample(**options):
        dataset = CocoInstances(root / "images", root / "annotations.json", train=True,
                                crowd_regions=True, transforms=training_transforms(**options))
        return dataset[(2, dataset.image_ids.index(crowd_image))]

    (_, still), (_, flipped) = sample(hflip_prob=0.0), sample(hflip_prob=1.0)
    assert len(still["crowd_masks"]) == 1 and still["crowd_masks"].sum() > 0
    assert torch.equal(flipped["crowd_masks"], still["crowd_masks"].flip(-1))
    image, jittered = sample(scale_jitter={"target_size": CANVAS, "scale_range": [0.5, 0.5]},
                             crop_size=CANVAS)
    assert jittered["crowd_masks"].shape == (1, *image.shape[1:])
    # Half the size that fits the canvas (the photo is wholly on it): the pixels scale by
    # the factor squared, to rounding.
    height, width = still["crowd_masks"].shape[1:]
    factor = 0.5 * min(CANVAS[0] / height, CANVAS[1] / width)
    ratio = jittered["crowd_masks"].sum() / still["crowd_masks"].sum()
    assert ratio == pytest.approx(factor**2, rel=0.05)


def test_copy_paste_moves_instances_between_the_images_of_a_batch():
    jitter = dict(scale_jitter={"target_size": CANVAS}, crop_size=CANVAS)
    dataset = _coco128(transforms=training_transforms(**jitter))
    samples = [dataset[(3, index)] for index in (0, 9, 18, 27)]
    before = collate(samples)
    batch = collate(samples, copy_paste=CopyPaste())
    again = collate(samples, copy_paste=CopyPaste())
    pasted = 0
    for k, (image, target) in enumerate(zip(batch.images, batch.targets, strict=True)):
        original = before.targets[k]
        assert torch.equal(image, again.images[k])  # seeded by the samples' seeds
        assert torch.equal(target["boxes"], _extents(target["masks"]))
        assert (target["masks"].flatten(1).sum(1) >= 1).all()
        count = target.get("pasted_instances", 0)
        assert len(target["labels"]) == (len(original["labels"]) + count
                                         - target.get("dropped_instances", 0))
        if count:  # the pasted instances are the next image's, over this one
            region = target["masks"][-count:].amax(0).bool()
            source = before.targets[(k + 1) % 4]["labels"]
            assert set(target["labels"][-count:].tolist()) <= set(source.tolist())
            own = target["masks"][:len(target["masks"]) - count]
            assert not (own.bool() & region).any()  # pasted pixels cover the image's own
            assert not torch.equal(image, before.images[k])
        pasted += count
    assert pasted > 0
    reseeded = [(image, dict(target, sample_seed=target["sample_seed"] + 1))
                for image, target in samples]
    assert any(not torch.equal(a, b) for a, b in zip(
        collate(reseeded, copy_paste=CopyPaste()).images, batch.images, strict=True))


def test_multiscale_is_the_models_resize_drawn_per_training_image(tmp_path):
    """model.net.min_size as a list (conf/augment/multiscale.yaml): each training image's
    shortest side is one of them, drawn from torch's generator (restored on resume); boxes
    and masks are resized with it; evaluation uses the last size."""
    from tests.conftest import compose_config

    cfg = compose_config("train", ["augment=multiscale"], tmp_path)
    assert list(cfg.model.net.min_size) == [640, 672, 704, 736, 768, 800]
    sizes = [96, 112, 128]
    module = instantiate_module(_small_model(tmp_path, sizes))
    transform = module.net.transform.train()
    image, target = _coco128()[0]
    image = F.to_dtype(image, torch.float32, scale=True)
    drawn, boxes_ok = set(), True
    torch.manual_seed(4)
    for _ in range(12):
        batch, targets = transform([image], [dict(target)])
        shortest = min(batch.image_sizes[0])
        drawn.add(shortest)
        resized = targets[0]
        (height, width), (new_height, new_width) = image.shape[1:], batch.image_sizes[0]
        scale = torch.tensor([new_width / width, new_height / height] * 2)
        boxes_ok &= torch.allclose(resized["boxes"], target["boxes"] * scale, atol=1e-3)
        assert resized["masks"].shape[-2:] == batch.image_sizes[0]
        # Boxes and nearest-resized masks keep the annotations' agreement, scaled.
        assert torch.allclose(resized["boxes"], _extents(resized["masks"]),
                              atol=ANNOTATION_TOLERANCE * float(scale.max()) + 1)
    assert drawn <= set(sizes) and len(drawn) > 1 and boxes_ok
    torch.manual_seed(4)
    first = [min(transform([image], [dict(target)])[0].image_sizes[0]) for _ in range(12)]
    torch.manual_seed(4)
    assert first == [min(transform([image], [dict(target)])[0].image_sizes[0])
                     for _ in range(12)]
    batch, _ = transform.eval()([image])
    assert min(batch.image_sizes[0]) == sizes[-1]


def _small_model(tmp_path, sizes: list[int]) -> dict:
    from instseg.configs import model_config
    from tests.conftest import compose_config

    cfg = compose_config("train", [f"model.net.min_size={sizes}", "model.net.max_size=400"],
                         tmp_path)
    return model_config(cfg, num_classes=81)
