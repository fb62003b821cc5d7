import json
import logging
import re

import pytest
import torch
from torchvision.ops import masks_to_boxes

from instseg.data.coco import CocoInstances
from instseg.data.datamodule import CocoDataModule
from instseg.data.transforms import evaluation_transforms, training_transforms
from instseg.utils.errors import InstsegError
from tests.conftest import shared_data


def _check_samples(dataset: CocoInstances, tolerance: float) -> int:
    """Every sample: masks decode at image size, boxes enclose masks, labels map back."""
    instances = 0
    for index in range(len(dataset)):
        image, target = dataset[index]
        _, height, width = image.shape
        masks, boxes, labels = target["masks"], target["boxes"], target["labels"]
        assert masks.shape == (len(labels), height, width) and masks.dtype == torch.uint8
        assert set(masks.unique().tolist()) <= {0, 1}
        from_masks = masks_to_boxes(masks) + torch.tensor([0, 0, 1, 1])  # pixel edges
        assert torch.allclose(boxes, from_masks, atol=tolerance), dataset.image_ids[index]
        anns = [a for a in dataset.coco.imgToAnns[target["image_id"]] if not a["iscrowd"]]
        assert dataset.categories.to_category_ids(labels) == [a["category_id"] for a in anns]
        instances += len(labels)
    return instances


def test_shapes_targets(tiny_shapes):
    dataset = CocoInstances(tiny_shapes / "train", tiny_shapes / "annotations/instances_train.json",
                            train=True, transforms=evaluation_transforms())
    assert _check_samples(dataset, tolerance=1e-4) > 0
    image, _ = dataset[0]
    assert image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1


def test_coco_sample_crowd_is_never_a_target_but_stays_in_ground_truth():
    root = shared_data("coco-sample")
    train = CocoInstances(root / "images", root / "annotations.json", train=True)
    # Real COCO polygons are rasterised, so boxes and masks agree to about a pixel.
    assert _check_samples(train, tolerance=2.0) == 35
    crowd = [a for a in train.coco.dataset["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"], dict)
    val = CocoInstances(root / "images", root / "annotations.json", train=False)
    assert len(val) == 6 and val[0][1] == {"image_id": val.image_ids[0]}
    assert len(val.coco.dataset["annotations"]) == 36


def test_coco128_seg_skips_unannotated_images_for_training_only():
    root = shared_data("coco128-seg")
    ann_file = root / "annotations/instances_train2017.json"
    train = CocoInstances(root / "images/train2017", ann_file, train=True)
    val = CocoInstances(root / "images/train2017", ann_file, train=False)
    assert len(val) == 128 and len(train) == 126
    assert {250, 508} <= set(val.image_ids) - set(train.image_ids)
    assert _check_samples(train, tolerance=2.0) == 929
    assert train.categories.num_classes == 81  # the json lists 80 categories (71 used)


def test_horizontal_flip_moves_boxes_with_masks(tiny_shapes):
    dataset = CocoInstances(tiny_shapes / "train", tiny_shapes / "annotations/instances_train.json",
                            train=True, transforms=training_transforms(hflip_prob=1.0))
    plain = CocoInstances(tiny_shapes / "train", tiny_shapes / "annotations/instances_train.json",
                          train=True)
    _, flipped = dataset[0]
    _, original = plain[0]
    assert torch.equal(flipped["masks"], original["masks"].flip(-1))
    assert _check_samples(dataset, tolerance=1e-4) > 0


def test_missing_files_are_named_with_what_belongs_there(tmp_path):
    datamodule = CocoDataModule(
        root=str(tmp_path), train_images="train2017",
        train_annotations="annotations/instances_train2017.json",
        val_images="val2017", val_annotations="annotations/instances_val2017.json",
    )
    with pytest.raises(InstsegError) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "annotations/instances_train2017.json") in message
    assert str(tmp_path / "val2017") in message and "expected a COCO instances json" in message


def test_bad_json_and_mismatched_image_are_named(tmp_path, tiny_shapes, caplog):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []')
    with pytest.raises(InstsegError, match="bad.json"):
        CocoInstances(tiny_shapes / "train", bad, train=False)
    data = json.loads((tiny_shapes / "annotations/instances_val.json").read_text())
    data["images"][0]["width"] = 50
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(data))
    dataset = CocoInstances(tiny_shapes / "val", wrong, train=False)
    with caplog.at_level(logging.WARNING):
        assert dataset[0] is None  # skipped, and named in the log
    assert re.search(r"000001.png \(image id 1\).*96x96", caplog.text)


def test_datamodule_batches_and_categories(tiny_shapes):
    datamodule = CocoDataModule(
        root=str(tiny_shapes), train_images="train",
        train_annotations="annotations/instances_train.json",
        val_images="val", val_annotations="annotations/instances_val.json",
        batch_size=3, num_workers=0,
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, targets, skipped = next(iter(datamodule.train_dataloader()))
    assert skipped == 0
    assert len(images) == len(targets) == 3 and "masks" in targets[0]
    images, targets, _ = next(iter(datamodule.val_dataloader()))
    assert [t["image_id"] for t in targets] == [1, 2, 3]
    assert datamodule.categories.names == ("circle", "rectangle", "triangle", "star")
