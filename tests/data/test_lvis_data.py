"""LVIS-format jsons as training and validation data: file names from coco_url, no iscrowd,
the LVIS fields kept for evaluation, repeat-factor sampling in the datamodule."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from instseg.data.coco import CocoInstances, load_checked
from instseg.data.datamodule import CocoDataModule
from instseg.data.samplers import RepeatFactorSampler
from instseg.data.validation import complete_lvis_records
from instseg.evaluation.lvis import is_lvis
from instseg.utils.errors import InstsegError
from tests.conftest import shared_data


def _lvis_root(tmp_path) -> tuple:
    """An LVIS v1-like root: annotations/lvis_v1_train.json (coco128 in LVIS's format) and
    train2017/ (a link to coco128's images)."""
    source = shared_data("coco128-seg")
    coco = json.loads((source / "annotations/instances_train2017.json").read_text())
    for image in coco["images"]:
        name = image.pop("file_name")
        image["coco_url"] = f"http://images.cocodataset.org/train2017/{name}"
        image["neg_category_ids"], image["not_exhaustive_category_ids"] = [], []
    for ann in coco["annotations"]:
        del ann["iscrowd"]
    for index, category in enumerate(coco["categories"]):
        category["frequency"] = "rcf"[index % 3]
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "lvis_v1_train.json"
    path.write_text(json.dumps(coco))
    (tmp_path / "train2017").symlink_to(source / "images" / "train2017")
    return path, coco


def test_lvis_json_loads_with_file_names_from_coco_url_and_no_iscrowd(tmp_path):
    path, lvis = _lvis_root(tmp_path)
    dataset = CocoInstances(tmp_path, path, train=True)
    assert len(dataset) == len({a["image_id"] for a in lvis["annotations"]}) == 126
    image, target = dataset[0]
    info = dataset.coco.imgs[target["image_id"]]
    assert info["file_name"] == "train2017/" + info["coco_url"].rsplit("/", 1)[1]
    assert tuple(image.shape[-2:]) == (info["height"], info["width"])
    assert len(target["boxes"]) == len(target["masks"]) > 0
    # every annotation is a training target (none read as a crowd region) ...
    assert sum(len(v) for v in dataset.annotations.values()) == len(lvis["annotations"])
    # ... and the evaluation ground truth keeps LVIS's fields
    assert is_lvis(dataset.coco)
    assert all(a["iscrowd"] == 0 for a in dataset.coco.dataset["annotations"])


def test_lvis_image_without_file_name_or_coco_url_stops_naming_file_and_image(tmp_path):
    path, lvis = _lvis_root(tmp_path)
    del lvis["images"][5]["coco_url"]
    path.write_text(json.dumps(lvis))
    image_id = lvis["images"][5]["id"]
    with pytest.raises(InstsegError, match=rf"{path} image {image_id}: missing key: "
                                           r"images\[5\] has no 'file_name'"):
        load_checked(path, tmp_path)
    # a json's own file names are kept
    data = {"images": [{"id": 1, "file_name": "a.jpg", "coco_url": "http://h/x/b.jpg"}],
            "annotations": [{"id": 1, "iscrowd": 1}], "categories": []}
    assert complete_lvis_records(data)["images"][0]["file_name"] == "a.jpg"
    assert data["annotations"][0]["iscrowd"] == 1


def test_datamodule_samples_by_repeat_factor(tmp_path):
    path, lvis = _lvis_root(tmp_path)
    module = CocoDataModule(train_images=".", train_annotations=str(path.relative_to(tmp_path)),
                            val_images=".", val_annotations=str(path.relative_to(tmp_path)),
                            root=str(tmp_path), batch_size=4, num_workers=0,
                            repeat_factor_threshold=0.05)
    module.setup("fit")
    loader = module.train_dataloader()
    sampler = loader.batch_sampler.sampler
    assert isinstance(sampler, RepeatFactorSampler)
    images = module.train_set.image_ids
    # the images of the category in fewest images have the largest factor
    per_category = Counter(c for i in images for c in
                           {a["category_id"] for a in module.train_set.annotations[i]})
    rarest = min(per_category, key=per_category.get)
    with_rarest = [k for k, i in enumerate(images)
                   if any(a["category_id"] == rarest for a in module.train_set.annotations[i])]
    assert sampler.factors[with_rarest[0]] == pytest.approx(
        (0.05 / (per_category[rarest] / len(images))) ** 0.5)
    assert len(sampler) > len(images) and len(loader) == -(-len(sampler) // 4)
    batch = next(iter(loader))
    assert len(batch.images) == 4 and all(isinstance(i, torch.Tensor) for i in batch.images)
    with pytest.raises(InstsegError, match="repeat_factor_threshold"):
        CocoDataModule(".", "a.json", ".", "b.json", repeat_factor_threshold=0)


def test_check_data_reads_an_lvis_json_as_training_does(tmp_path):
    """instseg-check-data on an LVIS json and its COCO image folders: the same file names from
    coco_url, no crowd regions, and only the problems coco128 has (2 images without
    instances)."""
    from instseg.tasks.check import check_dataset
    from tests.conftest import compose_config

    root = tmp_path / "lvis"
    root.mkdir()
    path, _ = _lvis_root(root)
    cfg = compose_config("check", [f"annotations={path}", f"images={root}", "full=false"],
                         tmp_path / "run")
    problems = check_dataset(cfg)
    assert [(p.kind, p.image_id) for p in problems] == [("no annotations", 250),
                                                        ("no annotations", 508)]
    assert "train2017/000000000250.jpg" in problems[0].detail
