"""One test per row of the bad-data table in docs/data.md: each corrupts a copy of
../shared/data/coco-sample, checks that the checker (`check_split`, what
`instseg-check-data` runs) reports it with file / image id / annotation id, and
that the training dataset skips it with a count, repairs it, or stops with the message."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instseg.data.categories import CategoryMap
from instseg.data.coco import CocoInstances, collate, load_checked
from instseg.data.validation import CheckedAnnotations, Problem, check_split
from instseg.evaluation.coco import CocoEvaluator
from instseg.structures.masks import to_rle
from instseg.utils.errors import InstsegError
from tests.conftest import compose_config, shared_data

# coco-sample: 6 COCO val2017 photos; 000000000089.jpg (id 89) has no annotation.
IMAGE = 128372  # 000000128372.jpg, 640x427, 16 annotations


@pytest.fixture
def sample(tmp_path) -> Path:
    """A writable copy of coco-sample: images/ and annotations.json."""
    source = shared_data("coco-sample")
    shutil.copytree(source / "images", tmp_path / "images")
    shutil.copy(source / "annotations.json", tmp_path / "annotations.json")
    return tmp_path


def edit(root: Path, change) -> dict:
    """Apply `change(data)` to root/annotations.json; return the new data."""
    path = root / "annotations.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def check(root: Path, **options) -> CheckedAnnotations:
    return check_split(root / "annotations.json", root / "images", **options)


def found(checked: CheckedAnnotations, kind: str) -> list[Problem]:
    return [p for p in checked.problems if p.kind == kind]


def train_set(root: Path, **options) -> CocoInstances:
    return CocoInstances(root / "images", root / "annotations.json", train=True, **options)


def image_file(root: Path, image_id: int) -> Path:
    return root / "images" / f"{image_id:012d}.jpg"


def annotation_ids(dataset: CocoInstances, image_id: int) -> list[int]:
    return [a["id"] for a in dataset.annotations.get(image_id, [])]


def first_annotation(data: dict, image_id: int = IMAGE) -> dict:
    return next(a for a in data["annotations"] if a["image_id"] == image_id and not a["iscrowd"])


# --------------------------------------------------------------------------- image files
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_image_is_skipped_when_read(sample, damage, caplog):
    path = image_file(sample, IMAGE)
    content = path.read_bytes()
    path.write_bytes(b"not an image" if damage == "garbage" else content[: len(content) // 2])
    [problem] = found(check(sample), "unreadable image")
    assert problem.image_id == IMAGE and problem.source == str(path)

    dataset = train_set(sample)
    with caplog.at_level(logging.WARNING):
        sample_ = dataset[dataset.image_ids.index(IMAGE)]
    assert sample_ is None and str(path) in caplog.text
    readable = dataset[dataset.image_ids.index(IMAGE) + 1]
    batch = collate([readable, sample_])
    assert batch.skipped == 1 and len(batch.images) == 1


def test_missing_image_file_is_skipped(sample):
    image_file(sample, IMAGE).unlink()
    [problem] = found(check(sample, full=False), "missing image file")
    assert problem.image_id == IMAGE
    assert IMAGE not in train_set(sample).image_ids
    val = CocoInstances(sample / "images", sample / "annotations.json", train=False)
    assert IMAGE not in val.image_ids and len(val) == 5


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16"])
def test_grayscale_rgba_cmyk_palette_and_16_bit_images_are_read_as_8_bit_rgb(sample, mode):
    path = image_file(sample, IMAGE)
    original = Image.open(path).convert("RGB")
    converted = original.convert("L") if mode == "I;16" else original.convert(mode)
    if mode == "I;16":
        converted = Image.fromarray(np.asarray(converted).astype(np.uint16) * 257)
    suffix = ".jpg" if mode in ("L", "CMYK") else ".png"
    new_path = path.with_suffix(suffix) if suffix == ".jpg" else path.with_suffix(".png")
    path.unlink()
    converted.save(new_path)
    edit(sample, lambda d: [i.update(file_name=new_path.name) for i in d["images"]
                            if i["id"] == IMAGE])
    [problem] = found(check(sample), "converted colour")
    assert problem.image_id == IMAGE and mode.split(";")[0] in problem.detail

    dataset = train_set(sample)
    image, _ = dataset[dataset.image_ids.index(IMAGE)]
    assert image.dtype == torch.uint8 and image.shape == (3, 427, 640)
    expected = np.asarray(Image.open(new_path).convert("RGB") if mode != "I;16"
                          else converted.convert("L").convert("RGB"))
    if mode == "I;16":
        expected = np.asarray(original.convert("L").convert("RGB"))
    difference = np.abs(image.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert difference.mean() < 1.0  # decoders may round differently, never by more


def test_exif_orientation_is_not_applied(sample):
    path = image_file(sample, IMAGE)
    original = Image.open(path)
    exif = original.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    original.save(path, exif=exif, quality=95)
    [problem] = found(check(sample), "exif orientation")
    assert problem.image_id == IMAGE

    dataset = train_set(sample)
    image, target = dataset[dataset.image_ids.index(IMAGE)]
    assert image.shape == (3, 427, 640)  # as stored: rotating would make it 640 high
    stored = np.asarray(Image.open(path).convert("RGB"))  # Pillow does not rotate either
    assert np.abs(image.permute(1, 2, 0).numpy().astype(int) - stored).mean() < 1.0
    assert target["masks"].shape[-2:] == (427, 640)


def test_image_of_another_size_than_the_json_says_is_skipped(sample, caplog):
    edit(sample, lambda d: [i.update(width=427, height=640) for i in d["images"]
                            if i["id"] == IMAGE])
    [problem] = found(check(sample), "size mismatch")
    assert "swapped" in problem.detail  # the hint for EXIF-rotated labelling
    dataset = train_set(sample)
    with caplog.at_level(logging.WARNING):
        assert dataset[dataset.image_ids.index(IMAGE)] is None
    assert "640x427" in caplog.text


def test_image_much_larger_than_the_training_size_is_downscaled_with_its_targets(sample):
    """A 8000x5338 photo: targets are rasterised at the downscaled size, never at full size
    (50 full-size masks would take 2 GB as uint8 and 8 GB once the model makes them float)."""
    factor = 12.5
    path = image_file(sample, IMAGE)
    Image.open(path).resize((8000, 5338)).save(path, quality=80)

    def scale(data):
        for image in data["images"]:
            if image["id"] == IMAGE:
                image.update(width=8000, height=5338)
        for ann in data["annotations"]:
            if ann["image_id"] == IMAGE and not ann["iscrowd"]:
                ann["bbox"] = [v * factor for v in ann["bbox"]]
                ann["segmentation"] = [[v * factor for v in p] for p in ann["segmentation"]]
                ann["area"] *= factor**2

    edit(sample, scale)
    [problem] = found(check(sample), "large image")
    assert problem.image_id == IMAGE

    dataset = train_set(sample)  # default max_image_side: 4096
    image, target = dataset[dataset.image_ids.index(IMAGE)]
    assert image.shape == (3, 2733, 4096)
    assert target["masks"].shape[-2:] == (2733, 4096)
    small = train_set(sample, max_image_side=640)  # back to the stored 640x427: compare
    _, reference = small[small.image_ids.index(IMAGE)]
    assert target["masks"].shape[0] == reference["masks"].shape[0]
    torch.testing.assert_close(target["boxes"] * 640 / 4096, reference["boxes"], atol=0.5,
                               rtol=0)


# -------------------------------------------------------------------------- json records
def test_unreadable_json_or_missing_top_level_key_stops(sample):
    (sample / "annotations.json").write_text('{"images": [')
    assert found(check(sample), "unreadable json")
    with pytest.raises(InstsegError, match="annotations.json: unreadable json"):
        train_set(sample)
    (sample / "annotations.json").write_text('{"images": [], "categories": []}')
    [problem] = found(check(sample), "missing key")
    assert "'annotations'" in problem.detail
    with pytest.raises(InstsegError, match="no top-level 'annotations'"):
        train_set(sample)


def test_records_missing_required_keys_stop_with_their_ids(sample):
    def damage(data):
        del first_annotation(data)["bbox"]
        del data["images"][1]["height"]

    data = edit(sample, damage)
    problems = found(check(sample), "missing key")
    ann_id = first_annotation(data)["id"]
    assert {(p.image_id, p.annotation_id) for p in problems} == {
        (IMAGE, ann_id), (data["images"][1]["id"], None)}
    with pytest.raises(InstsegError, match=rf"annotation {ann_id}: missing key: "
                                           r"annotations\[\d+\] has no 'bbox'"):
        train_set(sample)


def test_fields_of_the_wrong_type_stop_with_their_ids(sample):
    def damage(data):
        first_annotation(data)["bbox"] = "10,10,20,20"
        first_annotation(data, 464689)["category_id"] = 1.0
        data["images"][2]["id"] = str(data["images"][2]["id"])

    edit(sample, damage)
    problems = found(check(sample), "wrong type")
    assert len(problems) == 3
    assert any("'bbox'] = '10,10,20,20' is not [x, y, width, height]" in p.detail
               for p in problems)
    with pytest.raises(InstsegError, match="3 error"):
        train_set(sample)


def test_duplicate_image_ids_stop(sample):
    edit(sample, lambda d: d["images"][1].update(id=d["images"][0]["id"]))
    [problem] = found(check(sample), "duplicate image id")
    assert "has the id of" in problem.detail
    with pytest.raises(InstsegError, match="duplicate image id"):
        train_set(sample)


def test_duplicate_annotation_ids_stop(sample):
    edit(sample, lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]))
    assert found(check(sample), "duplicate annotation id")
    with pytest.raises(InstsegError, match="duplicate annotation id"):
        train_set(sample)


@pytest.mark.parametrize("field,kind", [("image_id", "unknown image id"),
                                        ("category_id", "unknown category id")])
def test_annotation_with_unknown_image_or_category_id_is_skipped(sample, field, kind, caplog):
    data = edit(sample, lambda d: first_annotation(d).update({field: 999_999}))
    ann_id = next(a["id"] for a in data["annotations"] if a[field] == 999_999)
    [problem] = found(check(sample), kind)
    assert problem.annotation_id == ann_id
    with caplog.at_level(logging.WARNING):
        dataset = train_set(sample)
    assert f"skipped 1 x {kind}" in caplog.text
    assert all(ann_id not in annotation_ids(dataset, i) for i in dataset.image_ids)
    assert ann_id not in dataset.coco.anns  # nor in the evaluation ground truth


@pytest.mark.parametrize("box", [[10, 10, 0, 20], [10, 10, 20, -5], [10, 10, 0.5, 30]])
def test_zero_negative_or_sub_pixel_size_box_is_skipped(sample, box):
    data = edit(sample, lambda d: first_annotation(d).update(bbox=box))
    ann_id = first_annotation(data)["id"]
    [problem] = found(check(sample), "degenerate box")
    assert problem.annotation_id == ann_id
    assert ann_id not in annotation_ids(train_set(sample), IMAGE)


def test_box_partly_outside_is_clipped_and_wholly_outside_is_skipped(sample):
    def damage(data):
        anns = [a for a in data["annotations"] if a["image_id"] == IMAGE and not a["iscrowd"]]
        anns[0]["bbox"] = [600.0, 400.0, 100.0, 50.0]  # the image is 640x427
        anns[1]["bbox"] = [700.0, 10.0, 30.0, 30.0]

    data = edit(sample, damage)
    anns = [a for a in data["annotations"] if a["image_id"] == IMAGE and not a["iscrowd"]]
    checked = check(sample)
    assert [p.annotation_id for p in found(checked, "box partly outside image")] == [anns[0]["id"]]
    assert [p.annotation_id for p in found(checked, "box outside image")] == [anns[1]["id"]]
    dataset = train_set(sample)
    assert anns[1]["id"] not in annotation_ids(dataset, IMAGE)
    _, target = dataset[dataset.image_ids.index(IMAGE)]
    index = annotation_ids(dataset, IMAGE).index(anns[0]["id"])
    assert target["boxes"][index].tolist() == [600.0, 400.0, 640.0, 427.0]


def test_polygons_of_fewer_than_3_points_are_dropped(sample):
    def damage(data):
        anns = [a for a in data["annotations"] if a["image_id"] == IMAGE and not a["iscrowd"]]
        anns[0]["segmentation"] = [*anns[0]["segmentation"], [1, 1, 5, 5]]  # one 2-point part
        anns[1]["segmentation"] = [[1, 1, 5, 5], [7, 7]]  # nothing usable left

    data = edit(sample, damage)
    anns = [a for a in data["annotations"] if a["image_id"] == IMAGE and not a["iscrowd"]]
    checked = check(sample)
    assert [p.annotation_id for p in found(checked, "short polygon part")] == [anns[0]["id"]]
    assert [p.annotation_id for p in found(checked, "short polygons only")] == [anns[1]["id"]]
    dataset = train_set(sample)
    assert annotation_ids(dataset, IMAGE)[0] == anns[0]["id"]
    assert anns[1]["id"] not in annotation_ids(dataset, IMAGE)
    kept = dataset.coco.anns[anns[0]["id"]]["segmentation"]  # the ground truth, repaired
    assert kept == anns[0]["segmentation"][:-1]


@pytest.mark.parametrize("segmentation", [[], {"size": [427, 640], "counts": ""}])
def test_empty_segmentation_is_skipped(sample, segmentation):
    data = edit(sample, lambda d: first_annotation(d).update(segmentation=segmentation))
    ann_id = first_annotation(data)["id"]
    [problem] = found(check(sample), "empty segmentation")
    assert problem.annotation_id == ann_id
    assert ann_id not in annotation_ids(train_set(sample), IMAGE)


def test_missing_area_is_computed_from_the_segmentation(sample):
    data = edit(sample, lambda d: first_annotation(d).pop("area"))
    ann = first_annotation(data)
    [problem] = found(check(sample), "missing area")
    assert problem.annotation_id == ann["id"]
    coco = load_checked(sample / "annotations.json").coco
    original = first_annotation(json.loads((shared_data("coco-sample") / "annotations.json")
                                           .read_text()))
    assert coco.anns[ann["id"]]["area"] == pytest.approx(original["area"], rel=0.02)


def test_image_with_only_crowd_regions_is_not_trained_on_but_evaluated(sample):
    def damage(data):
        for ann in data["annotations"]:
            if ann["image_id"] == IMAGE:
                ann["iscrowd"] = 1
                ann["segmentation"] = to_rle(ann["segmentation"], 427, 640) | {
                    "counts": to_rle(ann["segmentation"], 427, 640)["counts"].decode()}

    edit(sample, damage)
    [problem] = found(check(sample), "only crowd regions")
    assert problem.image_id == IMAGE
    assert IMAGE not in train_set(sample).image_ids
    val = CocoInstances(sample / "images", sample / "annotations.json", train=False)
    assert IMAGE in val.image_ids and val.coco.getAnnIds(imgIds=[IMAGE], iscrowd=True)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_non_contiguous_and_very_large_category_ids(sample, backend):
    """Ids x 10^12: contiguous labels inside the model, the json's ids in the results; the
    ground truth scored as detections gives AP 1."""
    def renumber(data):
        for category in data["categories"]:
            category["id"] = category["id"] * 10**12 + 7
        for ann in data["annotations"]:
            ann["category_id"] = ann["category_id"] * 10**12 + 7

    edit(sample, renumber)
    assert not check(sample, full=False).problems[1:]  # only image 89's "no annotations"
    dataset = train_set(sample)
    labels = torch.cat([dataset[i][1]["labels"] for i in range(len(dataset))])
    assert labels.min() >= 1 and labels.max() <= len(dataset.categories.category_ids)
    categories = CategoryMap.from_coco_categories(dataset.checked.categories)
    results = []
    for ann in dataset.coco.dataset["annotations"]:
        info = dataset.coco.imgs[ann["image_id"]]
        rle = to_rle(ann["segmentation"], info["height"], info["width"])
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "bbox": ann["bbox"], "score": 1.0,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()
                                         if isinstance(rle["counts"], bytes)
                                         else rle["counts"]}})
    results = [r for r, a in zip(results, dataset.coco.dataset["annotations"], strict=True)
               if not a["iscrowd"]]
    evaluator = CocoEvaluator(dataset.coco, categories, backend=backend, verbose=False)
    metrics, _, _ = evaluator.score(sorted(dataset.coco.imgs), results)
    assert metrics["segm_mAP"] == pytest.approx(1.0) and metrics["bbox_mAP"] == pytest.approx(1.0)


# ------------------------------------------------------------- training and the command
def _damage_many(root: Path) -> None:
    """A corrupt image, a missing file, grayscale and CMYK files, an EXIF tag, bad boxes,
    an unknown category, a short polygon: every recoverable kind at once."""
    image_file(root, 404249).write_bytes(b"\xff\xd8 corrupt")
    image_file(root, 194216).unlink()
    Image.open(image_file(root, 343934)).convert("L").save(image_file(root, 343934))
    Image.open(image_file(root, 464689)).convert("CMYK").save(image_file(root, 464689))
    exif = Image.open(image_file(root, IMAGE)).getexif()
    exif[0x0112] = 8
    Image.open(image_file(root, IMAGE)).save(image_file(root, IMAGE), exif=exif)

    def damage(data):
        anns = [a for a in data["annotations"] if a["image_id"] == IMAGE]
        anns[0]["bbox"] = [10, 10, 0, 5]
        anns[1]["category_id"] = 999
        anns[2]["bbox"] = [600.0, 400.0, 100.0, 50.0]
        anns[3]["segmentation"].append([1, 1, 2, 2])

    edit(root, damage)


def _train_config(root: Path, output_dir: Path):

    paths = [f"data.{split}_{kind}={root / name}" for split in ("train", "val")
             for kind, name in (("images", "images"), ("annotations", "annotations.json"))]
    return compose_config("train", [
        "data=coco_format", *paths, "data.num_workers=0", "data.batch_size=2",
        "model.net.min_size=128", "model.net.max_size=128", "model.scheduler.warmup_steps=1",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
        "logger=csv",
    ], output_dir)


@pytest.mark.parametrize("batch_size", [2, 1])  # 1: the corrupt image's batch is left empty
def test_training_runs_through_every_recoverable_fault_and_counts_them(sample, tmp_path,
                                                                       caplog, batch_size):
    from instseg.tasks.train import train

    _damage_many(sample)
    cfg = _train_config(sample, tmp_path / "run")
    cfg.data.batch_size = batch_size
    with caplog.at_level(logging.INFO):
        metrics = train(cfg)
    assert metrics["train/skipped_images"] == 1  # the corrupt 404249 (194216 has no file)
    assert "000000404249.jpg" in caplog.text and "skipped 1 x missing image file" in caplog.text
    for kind in ("degenerate box", "unknown category id", "box partly outside image",
                 "short polygon part"):
        assert f"1 x {kind}" in caplog.text
    assert 0.0 <= metrics["val/segm_mAP"] <= 1.0


def test_training_stops_on_json_errors_before_building_a_model(sample, tmp_path):
    from instseg.tasks.train import train

    edit(sample, lambda d: d["images"][1].update(id=d["images"][0]["id"]))
    with pytest.raises(InstsegError, match=r"1 error\(s\).*\n.*duplicate image id"):
        train(_train_config(sample, tmp_path / "run"))


def test_check_command_reports_every_problem_and_exits_1_on_errors(sample, tmp_path):
    import os
    import subprocess
    import sys

    _damage_many(sample)
    command = [os.path.join(os.path.dirname(sys.executable), "instseg-check-data"),
               f"annotations={sample / 'annotations.json'}", f"images={sample / 'images'}",
               f"hydra.run.dir={tmp_path / 'report'}"]
    env = {**os.environ, "COLUMNS": "250"}  # rich wraps table cells at the console width
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr  # skips and fixes only
    report = json.loads((tmp_path / "report/check_report.json").read_text())
    kinds = {p["kind"] for p in report}
    assert kinds == {"unreadable image", "missing image file", "converted colour",
                     "exif orientation", "degenerate box", "unknown category id",
                     "box partly outside image", "short polygon part", "no annotations"}
    assert "unreadable image" in done.stdout and "000000404249.jpg" in done.stdout
    # The command exits with exit_status(check_dataset(cfg), cfg.strict): both in process.
    from instseg.tasks.check import check_dataset, exit_status

    files = [f"annotations={sample / 'annotations.json'}", f"images={sample / 'images'}"]
    problems = check_dataset(compose_config("check", files, tmp_path / "again"))
    assert (exit_status(problems, strict=False), exit_status(problems, strict=True)) == (0, 1)
    edit(sample, lambda d: d["images"][1].update(id=d["images"][0]["id"]))
    problems = check_dataset(compose_config("check", files, tmp_path / "errors"))
    assert exit_status(problems, strict=False) == 1
    assert "duplicate image id" in {p.kind for p in problems}


def test_image_without_annotations_is_not_trained_on_but_evaluated(sample):
    [problem] = check(sample).problems  # coco-sample's image 89 has no annotation
    assert (problem.kind, problem.image_id) == ("no annotations", 89)
    assert 89 not in train_set(sample).image_ids
    assert 89 in CocoInstances(sample / "images", sample / "annotations.json",
                               train=False).image_ids


def test_rle_of_another_size_than_its_image_is_skipped(sample):
    def damage(data):
        ann = first_annotation(data)
        rle = to_rle(ann["segmentation"], 427, 640)
        ann["segmentation"] = {"size": [480, 640], "counts": rle["counts"].decode()}

    data = edit(sample, damage)
    [problem] = found(check(sample), "mask size mismatch")
    assert problem.annotation_id == first_annotation(data)["id"]
    assert problem.annotation_id not in annotation_ids(train_set(sample), IMAGE)


def test_train_and_val_json_with_different_categories_stop(sample, tmp_path):
    from instseg.data.datamodule import CocoDataModule

    val = json.loads((sample / "annotations.json").read_text())
    val["categories"] = val["categories"][:-1]
    (sample / "val.json").write_text(json.dumps(val))
    datamodule = CocoDataModule("images", "annotations.json", "images", "val.json",
                                root=str(sample), num_workers=0)
    datamodule.prepare_data()
    with pytest.raises(InstsegError, match="different categories"):
        datamodule.setup("fit")


def test_every_kind_of_problem_is_in_the_readme_table():
    from instseg.data.validation import KINDS

    page = (Path(__file__).resolve().parents[2] / "docs" / "data.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| ")]
    for kind in KINDS:
        assert any(f"`{kind}`" in row for row in rows), kind
