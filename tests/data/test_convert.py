"""instseg.data.convert: labelme, VOC and YOLO-seg to COCO instances json. Every output must
load in pycocotools and pass the project's checker without errors; bad records are reported
with their file and skipped. Real data: ../shared/data/coco128-seg (YOLO-seg labels and the
json converted from them) and ../shared/data/coco-sample/voc."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from instseg.data.convert import convert_labelme, convert_voc, convert_yolo, main
from instseg.data.validation import check_annotations
from instseg.structures.masks import to_rle
from instseg.utils.errors import InstsegError
from tests.conftest import ROOT, compose_config, shared_data


def assert_valid_coco(dataset: dict, image_dir: Path, tmp_path: Path,
                      crowd: bool = False) -> COCO:
    """Checker: no errors, no skipped annotation; pycocotools loads it; ids numbered 1..N;
    iscrowd 0 (`crowd`: 0 or 1)."""
    checked = check_annotations(dataset, "converted.json", image_dir)
    assert not checked.errors, [str(p) for p in checked.errors]
    assert all(p.kind == "no annotations" for p in checked.problems), checked.problems
    assert [i["id"] for i in dataset["images"]] == list(range(1, len(dataset["images"]) + 1))
    assert [i["file_name"] for i in dataset["images"]] == sorted(
        i["file_name"] for i in dataset["images"])
    assert [a["id"] for a in dataset["annotations"]] == list(
        range(1, len(dataset["annotations"]) + 1))
    for ann in dataset["annotations"]:
        image = dataset["images"][ann["image_id"] - 1]
        rle = to_rle(ann["segmentation"], image["height"], image["width"])
        assert ann["area"] == mask_utils.area(rle) > 0
        assert ann["iscrowd"] in ((0, 1) if crowd else (0,))
        assert ann["bbox"] == mask_utils.toBbox(rle).tolist()
    path = tmp_path / "converted.json"
    path.write_text(json.dumps(dataset))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def kinds(converted) -> Counter:
    return Counter(w.kind for w in converted.warnings)


# ------------------------------------------------------------------------------------ yolo
def coco128_names(tmp_path: Path) -> tuple[Path, Path, dict]:
    """(names file, category ids file, the json): COCO's 80 names in id order are YOLO's
    class order 0..79."""
    data = json.loads(shared_data("coco128-seg", "annotations",
                                  "instances_train2017.json").read_text())
    categories = sorted(data["categories"], key=lambda c: c["id"])
    names, ids = tmp_path / "names.txt", tmp_path / "ids.txt"
    names.write_text("\n".join(c["name"] for c in categories) + "\n")
    ids.write_text("\n".join(str(c["id"]) for c in categories) + "\n")
    return names, ids, data


def instances_by_class(dataset: dict, file_name: str) -> dict[int, list[dict]]:
    image = next(i for i in dataset["images"] if i["file_name"] == file_name)
    by_class: dict[int, list[dict]] = {}
    for ann in dataset["annotations"]:
        if ann["image_id"] == image["id"]:
            rle = to_rle(ann["segmentation"], image["height"], image["width"])
            by_class.setdefault(ann["category_id"], []).append(rle)
    return by_class


def test_yolo_coco128_reproduces_its_coco_json(tmp_path):
    root = shared_data("coco128-seg")
    names, ids, expected = coco128_names(tmp_path)
    converted = convert_yolo(root / "labels/train2017", root / "images/train2017", names, ids)
    dataset = converted.dataset
    assert_valid_coco(dataset, root / "images/train2017", tmp_path)
    assert dataset["categories"] == [{"id": c["id"], "name": c["name"]}
                                     for c in sorted(expected["categories"],
                                                     key=lambda c: c["id"])]
    assert sorted(i["file_name"] for i in dataset["images"]) == sorted(
        i["file_name"] for i in expected["images"])
    sizes = {i["file_name"]: (i["width"], i["height"]) for i in expected["images"]}
    assert all(sizes[i["file_name"]] == (i["width"], i["height"]) for i in dataset["images"])
    assert len(dataset["annotations"]) == len(expected["annotations"]) == 929
    for image in expected["images"]:
        ours = instances_by_class(dataset, image["file_name"])
        theirs = instances_by_class(expected, image["file_name"])
        assert {c: len(r) for c, r in ours.items()} == {c: len(r) for c, r in theirs.items()}
        for category, rles in theirs.items():
            ious = mask_utils.iou(rles, ours[category], [0] * len(ours[category]))
            assert np.asarray(ious).reshape(len(rles), -1).max(axis=1).min() >= 0.99, (
                image["file_name"], category)
    # 656, 659: labels without an image; 250, 508: images without labels (kept, no instances)
    reported = {(w.kind, Path(w.source).stem) for w in converted.warnings}
    assert reported == {("missing image", "000000000656"), ("missing image", "000000000659"),
                        ("no label file", "000000000250"), ("no label file", "000000000508")}


def test_yolo_reports_bad_lines_and_unmatched_files(tmp_path):
    labels, images = tmp_path / "labels", tmp_path / "images"
    labels.mkdir()
    images.mkdir()
    for name, size in (("a.jpg", (100, 50)), ("c.png", (20, 20))):
        Image.new("RGB", size).save(images / name)
    (labels / "a.txt").write_text(
        "1 0.1 0.1 0.5 0.1 0.5 0.9\n"  # good: class 1 = "dog"
        "\n"
        "7 0.1 0.1 0.5 0.1 0.5 0.9\n"  # class out of range
        "0 0.1 0.1 0.5 0.5\n"  # 2 points
        "0 0.5 0.5 0.2 0.2\n"  # a detection box line
        "0 0.1 x 0.5 0.1 0.5 0.9\n"  # not numbers
        "0 0.1 0.1 0.1 0.1 0.1 0.1\n"  # no pixel
        "0 0.2 0.2 0.6 0.2 0.6 0.6 0.2 0.6\n")  # good: "cat"
    (labels / "b.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.9\n")  # no image
    names = tmp_path / "data.yaml"  # an Ultralytics data yaml
    names.write_text("path: .\nnames:\n  0: cat\n  1: dog\n")
    converted = convert_yolo(labels, images, names)
    dataset = converted.dataset
    coco = assert_valid_coco(dataset, images, tmp_path)
    assert dataset["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(i["file_name"], i["width"], i["height"]) for i in dataset["images"]] == [
        ("a.jpg", 100, 50), ("c.png", 20, 20)]
    first, second = dataset["annotations"]
    assert first["category_id"] == 2 and first["segmentation"] == [[10, 5, 50, 5, 50, 45]]
    assert second["category_id"] == 1 and second["bbox"] == [20.0, 10.0, 40.0, 20.0]
    assert coco.getAnnIds(imgIds=[2]) == []
    by_source = {w.source.removeprefix(str(tmp_path)): w.kind for w in converted.warnings}
    assert by_source == {"/labels/a.txt:3": "class out of range", "/labels/a.txt:4":
                         "short polygon", "/labels/a.txt:5": "short polygon",
                         "/labels/a.txt:6": "bad line", "/labels/a.txt:7": "no pixels",
                         "/labels/b.txt": "missing image", "/images/c.png": "no label file"}
    assert "box line" in str(converted.warnings[2])
    assert converted.summary().startswith("2 images, 2 instances, 2 categories; 7 problems")


def test_cli_converts_coco128_and_refuses_bad_arguments(tmp_path, capsys):
    root = shared_data("coco128-seg")
    names, ids, _ = coco128_names(tmp_path)
    output = tmp_path / "out" / "train.json"
    done = subprocess.run(
        [sys.executable, "-m", "instseg.data.convert", "yolo", "--labels",
         str(root / "labels/train2017"), "--images", str(root / "images/train2017"),
         "--names", str(names), "--category-ids", str(ids), "-o", str(output)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "128 images, 929 instances, 80 categories; 4 problems reported" in done.stdout
    assert done.stderr.count("warning: ") == 4 and "000000000656.txt" in done.stderr
    assert len(json.loads(output.read_text())["annotations"]) == 929

    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as exit_:
        main(["voc", "--root", str(missing), "-o", str(output)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: VOC folder not found: {missing}\n"
    ids.write_text("1\n2\n")
    with pytest.raises(SystemExit) as exit_:
        main(["yolo", "--labels", str(root / "labels/train2017"), "--images",
              str(root / "images/train2017"), "--names", str(names), "--category-ids",
              str(ids), "-o", str(output)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {ids}: 2 category ids for 80 class names\n"
    with pytest.raises(SystemExit) as exit_:
        main(["yolo", "--labels", str(root)])  # argparse: usage and the missing options
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "the following arguments are required: --images, --names, -o/--output")


# ------------------------------------------------------------------------------------- voc
def test_voc_sample_one_instance_per_object_void_excluded(tmp_path):
    root = shared_data("coco-sample", "voc")
    converted = convert_voc(root)
    dataset = converted.dataset
    assert_valid_coco(dataset, root / "JPEGImages", tmp_path)
    assert converted.warnings == []
    assert [c["name"] for c in dataset["categories"]][:3] == ["aeroplane", "bicycle", "bird"]
    assert [c["id"] for c in dataset["categories"]] == list(range(1, 21))
    [image] = dataset["images"]  # only 2007_000063 has a SegmentationObject PNG
    assert (image["file_name"], image["width"], image["height"]) == ("2007_000063.jpg", 500, 375)
    objects = np.asarray(Image.open(root / "SegmentationObject/2007_000063.png"))
    classes = np.asarray(Image.open(root / "SegmentationClass/2007_000063.png"))
    object_ids = sorted(set(np.unique(objects).tolist()) - {0, 255})
    assert len(dataset["annotations"]) == len(object_ids) == 2
    for object_id, ann in zip(object_ids, dataset["annotations"], strict=True):
        assert isinstance(ann["segmentation"]["counts"], str)
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert np.array_equal(mask, objects == object_id)
        assert not (mask & (objects == 255)).any() and not (mask & (classes == 255)).any()
        assert set(np.unique(classes[mask]).tolist()) == {ann["category_id"]}
    assert [a["category_id"] for a in dataset["annotations"]] == [12, 9]  # dog, chair


def _palette_png(indices: np.ndarray, path: Path) -> None:
    image = Image.fromarray(indices.astype(np.uint8))  # L: putpalette makes it P, same indices
    image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)


def test_voc_reports_bad_records(tmp_path):
    for folder in ("JPEGImages", "SegmentationObject", "SegmentationClass"):
        (tmp_path / folder).mkdir()
    objects = np.zeros((30, 40), np.uint8)
    objects[2:10, 2:10], objects[12:20, 12:20], objects[25:28, 30:35] = 1, 2, 3
    objects[1, 1:11] = 255  # void boundary
    classes = np.where(objects == 1, 2, np.where(objects == 2, 5, 0)).astype(np.uint8)
    classes[objects == 255] = 255
    classes[2:4, 2:10] = 1  # a minority of object 1's pixels: class 2 wins
    for stem in ("a", "b", "c"):
        _palette_png(objects, tmp_path / f"SegmentationObject/{stem}.png")
    for stem in ("a", "c", "d"):
        Image.new("RGB", (40, 30)).save(tmp_path / f"JPEGImages/{stem}.jpg")
    _palette_png(classes, tmp_path / "SegmentationClass/a.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "SegmentationClass/c.png")  # not indices
    labels = tmp_path / "labels.txt"
    labels.write_text("background\ncat\ndog\n")
    converted = convert_voc(tmp_path, labels)
    dataset = converted.dataset
    assert_valid_coco(dataset, tmp_path / "JPEGImages", tmp_path)
    assert dataset["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    [image] = dataset["images"]
    [ann] = dataset["annotations"]
    assert image["file_name"] == "a.jpg" and ann["category_id"] == 2 and ann["area"] == 64
    assert {(Path(w.source).name, w.kind) for w in converted.warnings} == {
        ("a.png", "class out of range"),  # object 2: class 5, two names
        ("a.png", "no class"),  # object 3: background in SegmentationClass
        ("b.png", "missing image"), ("c.png", "not an index png")}


# --------------------------------------------------------------------------------- labelme
def _shape(label, points, group_id=None, shape_type="polygon") -> dict:
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type,
            "flags": {}}


def _labelme(path: Path, image_path: str, size: tuple[int, int], shapes: list[dict]) -> None:
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes,
                                "imagePath": image_path, "imageData": None,
                                "imageWidth": size[0], "imageHeight": size[1]}))


@pytest.fixture
def labelme_folder(tmp_path) -> Path:
    """labelme/{a,b,c}.json with their images in images/ (imagePath ../images/...)."""
    folder, images = tmp_path / "labelme", tmp_path / "images"
    folder.mkdir()
    images.mkdir()
    Image.new("RGB", (64, 48)).save(images / "a.png")
    Image.new("RGB", (80, 60)).save(images / "b.jpg")
    _labelme(folder / "a.json", "..\\images\\a.png", (64, 48), [  # written on Windows
        _shape("cat", [[2, 2], [20.004, 2], [20, 20]], group_id=1),
        _shape("cat", [[30, 30], [40, 30], [40, 40], [30, 40]], group_id=1),
        _shape("dog", [[60, 15], [50, 5]], shape_type="rectangle"),
        _shape("dog", [[1, 40], [10, 40], [5, 46]]),
        _shape("cat", [[1, 1], [5, 5]]),  # 2 points
        _shape("dog", [[30, 10], [35, 10]], shape_type="circle"),
    ])
    _labelme(folder / "b.json", "../images/b.jpg", (80, 60), [
        _shape("person", [[10, 10], [70, 10], [70, 50], [10, 50]], group_id=3)])
    (folder / "c.json").write_text("{not json")
    return folder


def test_labelme_groups_rectangles_and_reports_bad_shapes(labelme_folder, tmp_path):
    images = tmp_path / "images"
    converted = convert_labelme(labelme_folder, images=images)
    dataset = converted.dataset
    assert_valid_coco(dataset, images, tmp_path)
    assert [(i["file_name"], i["width"], i["height"]) for i in dataset["images"]] == [
        ("a.png", 64, 48), ("b.jpg", 80, 60)]
    assert [c["name"] for c in dataset["categories"]] == ["cat", "dog", "person"]
    cat, rectangle, dog, person = dataset["annotations"]
    assert cat["category_id"] == 1 and cat["segmentation"] == [
        [2, 2, 20.0, 2, 20, 20], [30, 30, 40, 30, 40, 40, 30, 40]]  # one object, 2 polygons
    assert rectangle["segmentation"] == [[50, 5, 60, 5, 60, 15, 50, 15]]
    assert rectangle["bbox"] == [50.0, 5.0, 10.0, 10.0] and rectangle["area"] == 100
    assert dog["category_id"] == rectangle["category_id"] == 2
    assert person["image_id"] == 2 and person["category_id"] == 3
    assert [(Path(w.source).name, w.kind) for w in converted.warnings] == [
        ("a.json", "short polygon"), ("a.json", "unsupported shape"),
        ("c.json", "unreadable file")]
    assert "shape 5 ('dog', circle)" in str(converted.warnings[1])


def test_labelme_labels_file_orders_categories_and_reports_unknown_labels(labelme_folder,
                                                                          tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\ndog\ncat\n")  # labelme's labels.txt
    converted = convert_labelme(labelme_folder, images=tmp_path / "images", labels=labels)
    assert converted.dataset["categories"] == [{"id": 1, "name": "dog"},
                                               {"id": 2, "name": "cat"}]
    assert [a["category_id"] for a in converted.dataset["annotations"]] == [2, 1, 1]
    unknown = [w for w in converted.warnings if w.kind == "unknown label"]
    assert len(unknown) == 1 and "b.json" in unknown[0].source and "'person'" in str(unknown[0])
    with pytest.raises(InstsegError, match="labelme folder not found"):
        convert_labelme(tmp_path / "nowhere")


@pytest.fixture
def labelme_example(tmp_path) -> tuple[Path, Path]:
    """(folder, labels.txt) laid out as labelme's examples/instance_segmentation: json files
    next to their jpgs (imagePath the bare name), `__ignore__` regions among the objects, a
    `_background_` shape, and labels.txt starting with `__ignore__` and `_background_`."""
    folder = tmp_path / "data_annotated"
    folder.mkdir()
    Image.new("RGB", (100, 80)).save(folder / "2011_000003.jpg")
    Image.new("RGB", (60, 40)).save(folder / "2011_000025.jpg")
    _labelme(folder / "2011_000003.json", "2011_000003.jpg", (100, 80), [
        _shape("person", [[10, 10], [40, 10], [40, 60], [10, 60]]),
        _shape("person", [[50, 10], [70, 10], [70, 30]], group_id=0),
        _shape("person", [[50, 40], [70, 40], [70, 60]], group_id=0),
        _shape("bottle", [[80, 5], [90, 25]], shape_type="rectangle"),
        _shape("__ignore__", [[5, 65], [95, 65], [95, 78], [5, 78]]),
    ])
    _labelme(folder / "2011_000025.json", "2011_000025.jpg", (60, 40), [
        _shape("bottle", [[5, 5], [20, 5], [20, 30], [5, 30]]),
        _shape("__ignore__", [[45, 2], [30, 12]], shape_type="rectangle"),
        _shape("__ignore__", [[30, 20], [40, 20], [40, 30], [30, 30]], group_id=4),
        _shape("__ignore__", [[45, 20], [55, 20], [55, 30], [45, 30]], group_id=4),
        _shape("_background_", [[0, 0], [60, 0], [60, 40], [0, 40]]),
    ])
    labels = tmp_path / "labels.txt"
    labels.write_text("__ignore__\n_background_\nperson\nbottle\nchair\n")
    return folder, labels


# Ignore regions of the example: (image id, polygons, area, bbox).
IGNORE_REGIONS = [
    (1, [[5, 65, 95, 65, 95, 78, 5, 78]], 1170, [5, 65, 90, 13]),
    (2, [[30, 2, 45, 2, 45, 12, 30, 12]], 150, [30, 2, 15, 10]),
    (2, [[30, 20, 40, 20, 40, 30, 30, 30], [45, 20, 55, 20, 55, 30, 45, 30]], 200,
     [30, 20, 25, 10]),
]


def test_labelme_reserved_labels_ignore_regions_are_crowd_not_categories(
        labelme_example, tmp_path, capsys):
    folder, labels = labelme_example
    for extra, names in (([], ["bottle", "person"]),
                         (["--labels", str(labels)], ["person", "bottle", "chair"])):
        output = tmp_path / "out.json"
        assert main(["labelme", str(folder), *extra, "-o", str(output)]) == 0
        printed = capsys.readouterr()
        dataset = json.loads(output.read_text())
        coco = assert_valid_coco(dataset, folder, tmp_path, crowd=True)
        assert [c["name"] for c in dataset["categories"]] == names
        category_ids = [c["id"] for c in dataset["categories"]]
        crowd = [a for a in dataset["annotations"] if a["iscrowd"]]
        assert len(crowd) == len(IGNORE_REGIONS) * len(names)
        for k, (image_id, polygons, area, bbox) in enumerate(IGNORE_REGIONS):
            copies = crowd[k * len(names):(k + 1) * len(names)]  # the region, every category
            assert [a["category_id"] for a in copies] == category_ids
            for ann in copies:
                assert ann["image_id"] == image_id and isinstance(ann["segmentation"], dict)
                assert (ann["area"], ann["bbox"]) == (area, bbox)
                expected = to_rle(polygons, *ann["segmentation"]["size"])
                assert np.array_equal(mask_utils.decode(ann["segmentation"]),
                                      mask_utils.decode(expected))
        assert sorted(coco.getAnnIds(iscrowd=False)) == [1, 2, 3, 4 + len(names)]
        # The only warning: the _background_ shape; nothing said missing from labels.txt.
        assert printed.err == (f"warning: {folder / '2011_000025.json'}: background label: "
                               "shape 4: '_background_' is a reserved label (background), "
                               "not an object: skipped\n")
        assert printed.out == (
            f"{output}: 2 images, 4 instances, 3 ignore regions ({3 * len(names)} iscrowd "
            f"annotations: one per category), {len(names)} categories; 1 problems reported: "
            "1 x background label\n")
    listed = convert_labelme(folder, labels=["__ignore__", "_background_", "person", "bottle",
                                             "chair"])
    assert listed.dataset == dataset  # a list of names drops the reserved ones too


def test_labelme_ignore_regions_absorb_detections_of_every_category(labelme_example,
                                                                    tmp_path):
    """COCOeval: perfect detections plus a 'person' and a 'bottle' detection inside an
    ignore region score AP 1: the region ignores both classes, not only one."""
    folder, labels = labelme_example
    dataset = convert_labelme(folder, labels=labels).dataset
    coco = assert_valid_coco(dataset, folder, tmp_path, crowd=True)
    detections = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.5,
                   "segmentation": to_rle(a["segmentation"], 80 if a["image_id"] == 1 else 40,
                                          100 if a["image_id"] == 1 else 60)}
                  for a in dataset["annotations"] if not a["iscrowd"]]
    inside = np.zeros((80, 100), np.uint8)
    inside[66:76, 10:30] = 1  # within image 1's ignore region (rows 65..77, columns 5..94)
    for category_id in (1, 2):  # person, bottle
        detections.append({"image_id": 1, "category_id": category_id, "score": 0.9,
                           "segmentation": mask_utils.encode(np.asfortranarray(inside))})
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(detections), "segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


# -------------------------------------------------------------------------------- training
def test_converted_voc_trains_and_evaluates(tmp_path):
    from instseg.tasks.evaluate import evaluate
    from instseg.tasks.train import train

    root = shared_data("coco-sample", "voc")
    annotations = tmp_path / "voc.json"
    annotations.write_text(json.dumps(convert_voc(root).dataset))
    paths = [f"data.{split}_{kind}={value}" for split in ("train", "val")
             for kind, value in (("images", root / "JPEGImages"),
                                 ("annotations", annotations))]
    cfg = compose_config("train", [
        "data=coco_format", *paths, "data.num_workers=0", "data.batch_size=2",
        "model.net.min_size=128", "model.net.max_size=128", "model.scheduler.warmup_steps=1",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
        "logger=csv",
    ], tmp_path / "run")
    metrics = train(cfg)
    assert 0.0 <= metrics["val/segm_mAP"] <= 1.0
    checkpoint = next((tmp_path / "run/checkpoints").glob("*.ckpt"))
    scored = evaluate(compose_config("evaluate", [f"ckpt={checkpoint}"], tmp_path / "eval"))
    assert 0.0 <= scored["val/segm_mAP"] <= 1.0
