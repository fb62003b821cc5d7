"""The dataset browser (instseg.tasks.browse) and statistics (instseg.tasks.stats) on real COCO
data: overlays, side by side predictions, TensorBoard images, numbers against counts made
directly from the json, plots, and both commands end to end."""

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from instseg.data.coco import load_checked
from instseg.data.images import read_rgb
from instseg.tasks.browse import (
    choose_images,
    draw_ground_truth,
    read_predictions,
    render_ground_truth,
    write_tensorboard,
)
from instseg.tasks.stats import (
    dataset_statistics,
    plot_statistics,
    read_image_sizes,
)
from instseg.utils.errors import InstsegError
from tests.conftest import shared_data

IDS = [9, 25, 30]


@pytest.fixture(scope="module")
def coco128():
    """(json path, image folder, checked COCO) of coco128-seg."""
    root = shared_data("coco128-seg")
    annotations = root / "annotations" / "instances_train2017.json"
    images = root / "images" / "train2017"
    return annotations, images, load_checked(annotations, images).coco


def _raw(coco, images, image_id):
    return read_rgb(images / coco.imgs[image_id]["file_name"])


def _png(path):
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)


def _changed(a, b):
    """bool [H, W]: where two uint8 [3, H, W] images differ."""
    return (a.int() - b.int()).abs().sum(0) > 0


def _first_mask(coco, image_id):
    ann = max(coco.imgToAnns[image_id], key=lambda a: a["area"])
    return torch.from_numpy(coco.annToMask(ann)).bool()


# ------------------------------------------------------------------------------ browser
def test_browser_writes_an_overlay_per_chosen_id(coco128, tmp_path):
    _, images, coco = coco128
    pngs = render_ground_truth(coco, images, IDS, tmp_path)
    assert [p.name for p in pngs] == [f"{i}_{i:012d}.png" for i in IDS]
    for image_id, png in zip(IDS, pngs, strict=True):
        raw, overlay = _raw(coco, images, image_id), _png(png)
        assert overlay.shape == raw.shape
        mask = _first_mask(coco, image_id)
        assert _changed(overlay, raw)[mask].float().mean() > 0.9  # the mask is coloured


def test_browser_renders_a_seeded_sample(coco128, tmp_path):
    _, images, coco = coco128
    sample = choose_images(coco, sample=5, seed=3)
    assert sample == choose_images(coco, sample=5, seed=3) == sorted(sample)
    assert len(set(sample)) == 5 and set(sample) <= set(coco.imgs)
    assert sample != choose_images(coco, sample=5, seed=4)
    assert choose_images(coco, sample=None) == sorted(coco.imgs)
    assert len(choose_images(coco)) == 16  # the default sample
    pngs = render_ground_truth(coco, images, sample, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in pngs)
    assert len(pngs) == 5


def test_unknown_ids_are_one_error_naming_them(coco128):
    coco = coco128[2]
    with pytest.raises(InstsegError, match=r"unknown image id\(s\) \[12345678, 87654321\]"):
        choose_images(coco, ids=[9, 12345678, 25, 87654321])


def _predictions_from_ground_truth(coco, image_ids, score):
    """COCO results records of the ground truth: RLE masks, one polygon record per image."""
    records = []
    for image_id in image_ids:
        for k, ann in enumerate(coco.imgToAnns[image_id]):
            if k == 0:  # polygons as they are in the json
                segmentation = ann["segmentation"]
            else:
                rle = mask_utils.encode(np.asfortranarray(coco.annToMask(ann)))
                segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            records.append({"image_id": image_id, "category_id": ann["category_id"],
                            "bbox": ann["bbox"], "score": score, "segmentation": segmentation})
    return records


def test_predictions_are_drawn_beside_the_ground_truth_above_the_threshold(coco128, tmp_path):
    _, images, coco = coco128
    results = tmp_path / "coco_instances_results.json"
    results.write_text(json.dumps(_predictions_from_ground_truth(coco, [9], 0.9)
                                  + _predictions_from_ground_truth(coco, [25], 0.2)))
    predictions = read_predictions(results)
    pngs = render_ground_truth(coco, images, [9, 25, 30], tmp_path / "side",
                               predictions=predictions, score_threshold=0.5)
    alone = render_ground_truth(coco, images, [9, 25, 30], tmp_path / "alone")
    for image_id, png, ground_truth in zip([9, 25, 30], pngs, alone, strict=True):
        raw, both = _raw(coco, images, image_id), _png(png)
        width = raw.shape[-1]
        assert both.shape == (3, raw.shape[1], 2 * width)
        assert torch.equal(both[:, :, :width], _png(ground_truth))  # left: the ground truth
        right = both[:, :, width:]
        if image_id == 9:  # scores 0.9: drawn
            assert _changed(right, raw)[_first_mask(coco, 9)].float().mean() > 0.9
        else:  # 25: every score under the threshold; 30: no predictions
            assert torch.equal(right, raw)


def test_predictions_file_errors_name_the_file(tmp_path):
    with pytest.raises(InstsegError, match="predictions file not found"):
        read_predictions(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.5}]))
    with pytest.raises(InstsegError, match=r"record \[0\] has no segmentation"):
        read_predictions(bad)


def test_tensorboard_event_file_holds_one_image_per_png(coco128, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, images, coco = coco128
    pngs = render_ground_truth(coco, images, IDS, tmp_path)
    event_file = write_tensorboard(pngs, tmp_path)
    assert event_file.parent == tmp_path and event_file.stat().st_size > 0
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == sorted(f"browse/{p.stem}" for p in pngs)
    [image] = events.Images(f"browse/{pngs[0].stem}")
    assert (image.width, image.height) == Image.open(pngs[0]).size


def test_unreadable_images_are_reported_and_skipped(coco128, tmp_path):
    _, images, coco = coco128
    folder = tmp_path / "images"
    folder.mkdir()
    for image_id in (9, 25):
        name = coco.imgs[image_id]["file_name"]
        (folder / name).write_bytes((images / name).read_bytes())
    truncated = folder / coco.imgs[25]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:2000])
    skipped = {}
    pngs = render_ground_truth(coco, folder, [9, 25, 30], tmp_path / "out", skipped=skipped)
    assert [p.name for p in pngs] == ["9_000000000009.png"]
    assert set(skipped) == {25, 30}
    assert "000000000025.jpg" in skipped[25] and "no such image file" in skipped[30]


def test_crowd_regions_are_hatched():
    coco = COCO()
    square = np.zeros((64, 64), dtype=np.uint8)
    square[10:50, 10:50] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    coco.dataset = {
        "images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 64}],
        "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 1,
                         "area": 1600.0, "bbox": [10, 10, 40, 40],
                         "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}}],
    }
    coco.createIndex()
    image = torch.full((3, 64, 64), 128, dtype=torch.uint8)
    changed = _changed(draw_ground_truth(image, coco.imgToAnns[1], coco), image)
    inside = changed[30:48, 12:48]  # below the label, inside the box's lines
    diagonal = (torch.arange(30, 48)[:, None] + torch.arange(12, 48)[None, :]) % 8 < 4
    assert inside[diagonal].all() and not inside[~diagonal].any()  # stripes, not a fill


# --------------------------------------------------------------------------- statistics
def test_augmented_training_images_show_the_augment_config(coco128, tmp_path):
    """browse augmented=true augment=[lsj,copy_paste]: the training images on the LSJ canvas
    with their (pasted) instances drawn; crowd regions (coco-sample) hatched on it too."""
    from instseg.tasks.browse import browse
    from tests.conftest import compose_config

    annotations, images, _ = coco128
    data = ["data=coco_format", f"data.train_images={images}",
            f"data.train_annotations={annotations}", f"data.val_images={images}",
            f"data.val_annotations={annotations}"]
    cfg = compose_config("browse", [*data, "augmented=true", "augment=[lsj,copy_paste]",
                                    "data.train_transforms.crop_size=[320,320]",
                                    f"ids={IDS + [250]}", f"output_dir={tmp_path}"], tmp_path)
    pngs = browse(cfg)
    assert [p.name.split("_")[0] for p in pngs] == ["9", "25", "30"]  # 250: no annotation
    for png in pngs:
        assert Image.open(png).size == (320, 320)
    again = browse(cfg)  # the same (seed, index) draws
    assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
               for a, b in zip(pngs, again, strict=True))
    crowd_root = shared_data("coco-sample")
    crowd_data = ["data=coco_format", *[f"data.{k}={crowd_root / v}" for k, v in (
        ("train_images", "images"), ("train_annotations", "annotations.json"),
        ("val_images", "images"), ("val_annotations", "annotations.json"))]]
    crowd_image = next(a["image_id"] for a in load_checked(
        crowd_root / "annotations.json").coco.dataset["annotations"] if a["iscrowd"])
    flipped = browse(compose_config("browse", [*crowd_data, "augmented=true",
                                               f"ids=[{crowd_image}]",
                                               f"output_dir={tmp_path / 'crowd'}"], tmp_path))
    assert len(flipped) == 1
    with pytest.raises(InstsegError, match="augmented=true needs data"):
        browse(compose_config("browse", ["augmented=true", f"annotations={annotations}",
                                         f"images={images}"], tmp_path))


def test_statistics_match_counts_made_from_the_json(coco128):
    annotation_file, images, coco = coco128
    data = json.loads(annotation_file.read_text())
    stats = dataset_statistics(coco)
    anns = data["annotations"]
    assert (stats["images"], stats["annotations"], stats["crowd_regions"]) == (128, 929, 0)
    per_class = Counter(a["category_id"] for a in anns)
    assert stats["categories_used"] == len(per_class) == 71
    assert {c["id"]: c["instances"] for c in stats["classes"]} == per_class
    images_with = {cid: len({a["image_id"] for a in anns if a["category_id"] == cid})
                   for cid in per_class}
    assert {c["id"]: c["images"] for c in stats["classes"]} == images_with
    assert sum(c["share"] for c in stats["classes"]) == pytest.approx(1, abs=1e-4)
    assert len(stats["unused_categories"]) == 80 - 71

    per_image = stats["instances_per_image"]
    assert per_image["images_without_instances"] == [250, 508]
    counts = Counter(a["image_id"] for a in anns)
    assert per_image["max"] == max(counts.values()) and per_image["min"] == 0
    assert per_image["mean"] == pytest.approx(929 / 128, abs=1e-4)
    assert sum(per_image["histogram"].values()) == 128

    def size(area):
        return "small" if area < 32 * 32 else "medium" if area < 96 * 96 else "large"

    direct = Counter(size(a["area"]) for a in anns)
    assert stats["object_sizes"]["instances"] == {k: direct[k] for k in
                                                  ("small", "medium", "large")}
    for c in stats["classes"]:
        mine = Counter(size(a["area"]) for a in anns if a["category_id"] == c["id"])
        assert (c["small"], c["medium"], c["large"]) == (mine["small"], mine["medium"],
                                                         mine["large"])

    sizes = Counter((i["width"], i["height"]) for i in data["images"])
    assert {(d["width"], d["height"]): d["images"]
            for d in stats["image_sizes"]["distinct"]} == sizes
    ratios = [w / h for w, h in sizes.elements()]
    assert stats["image_sizes"]["aspect_ratio"]["max"] == pytest.approx(max(ratios), abs=1e-4)
    assert stats["image_sizes"]["landscape"] == sum(r > 1 for r in ratios)
    measured, problems = read_image_sizes(coco, images)
    assert problems == {} and len(measured) == 128


def test_crowd_regions_are_counted_apart_from_instances():
    root = shared_data("coco-sample")
    stats = dataset_statistics(load_checked(root / "annotations.json").coco)
    assert (stats["annotations"], stats["crowd_regions"]) == (35, 1)
    assert sum(stats["object_sizes"]["crowd_regions"].values()) == 1
    assert sum(stats["object_sizes"]["instances"].values()) == 35
    assert sum(c["crowd"] for c in stats["classes"]) == 1
    assert sum(c["instances"] for c in stats["classes"]) == 35


def test_plots_are_written_and_not_blank(coco128, tmp_path):
    plots = plot_statistics(dataset_statistics(coco128[2]), tmp_path)
    assert [p.name for p in plots] == ["class_counts.png", "instances_per_image.png",
                                       "object_sizes.png", "image_sizes.png"]
    for plot in plots:
        with Image.open(plot) as image:
            assert min(image.size) >= 300
            extrema = image.convert("L").getextrema()
            assert extrema[0] < extrema[1]  # something is drawn


# ----------------------------------------------------------------------------- commands
def _run(command, *overrides):
    env = {**os.environ, "COLUMNS": "200"}  # rich wraps table cells at the console width
    script = os.path.join(os.path.dirname(sys.executable), command)
    return subprocess.run([script, *overrides], capture_output=True, text=True, timeout=300,
                          env=env)


@pytest.mark.slow
def test_browse_command(coco128, tmp_path):
    annotations, images, coco = coco128
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_predictions_from_ground_truth(coco, [9], 0.8)))
    done = _run("instseg-browse", f"annotations={annotations}", f"images={images}",
                "ids=[9,25]", f"predictions={results}", "tensorboard=true",
                f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "run" / "browse"
    assert sorted(p.name for p in written.glob("*.png")) == ["25_000000000025.png",
                                                             "9_000000000009.png"]
    assert list(written.glob("events.out.tfevents.*"))
    assert "9_000000000009.png" in done.stdout
    unknown = _run("instseg-browse", f"annotations={annotations}",
                         f"images={images}", "ids=[9,424242]", f"hydra.run.dir={tmp_path}/x")
    assert unknown.returncode == 1 and "424242" in unknown.stderr


@pytest.mark.slow
def test_stats_command(coco128, tmp_path):
    annotations, images, _ = coco128
    done = _run("instseg-stats", f"annotations={annotations}", f"images={images}",
                f"hydra.run.dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["annotations"], stats["categories_used"]) == (929, 71)
    assert stats["image_files"]["read"] == 128 and not stats["image_files"]["problems"]
    for name in ("class_counts", "instances_per_image", "object_sizes", "image_sizes"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert "person" in done.stdout and "929" in done.stdout

