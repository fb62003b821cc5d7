import json

import numpy as np
from pycocotools import mask as mask_utils

from instseg.data.synthetic import CATEGORIES, generate_shapes


def test_generation_is_deterministic_and_reused(tmp_path):
    first = generate_shapes(tmp_path / "a", num_train=6, num_val=3, image_size=64, seed=3)
    second = generate_shapes(tmp_path / "b", num_train=6, num_val=3, image_size=64, seed=3)
    for rel in ["annotations/instances_train.json", "train/000001.png", "val/000003.png"]:
        assert (first / rel).read_bytes() == (second / rel).read_bytes()
    stamp_time = (first / "shapes.json").stat().st_mtime_ns
    generate_shapes(tmp_path / "a", num_train=6, num_val=3, image_size=64, seed=3)
    assert (first / "shapes.json").stat().st_mtime_ns == stamp_time  # reused, not rewritten
    other = generate_shapes(tmp_path / "a", num_train=6, num_val=3, image_size=64, seed=4)
    assert (other / "train/000001.png").read_bytes() != (second / "train/000001.png").read_bytes()


def test_annotations_are_visible_masks_with_matching_boxes(tiny_shapes):
    data = json.loads((tiny_shapes / "annotations/instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(CATEGORIES)
    assert data["annotations"], "the generator produced no instances"
    overlapping_images = 0
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        mask = mask_utils.decode(ann["segmentation"])
        assert mask.shape == (96, 96) and mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        by_image.setdefault(ann["image_id"], []).append(mask)
    for masks in by_image.values():
        stacked = np.stack(masks)
        assert stacked.sum(0).max() <= 1, "visible masks of one image must not overlap"
        overlapping_images += len(masks) > 1
    assert overlapping_images > 0
