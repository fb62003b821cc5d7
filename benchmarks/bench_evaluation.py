"""COCO mask evaluation: instseg's path against the torchvision-reference approach, one run.

    python benchmarks/bench_evaluation.py [--images 5000] [--detections 100]
        [--parts paste evaluation] [--paste-images N]

Generates a COCO-like ground truth (640x480-ish images, ~7 objects each) and, per image,
Mask R-CNN-like raw detections (boxes, scores, labels, 28x28 mask probabilities).

Pasting (`--parts paste`), in this process on the first --paste-images images: the mask
pasting of each image's detections straight to RLEs, the baseline below (one image-sized
canvas per image, each mask written into it and the whole canvas encoded by pycocotools)
against `instseg.structures.masks.paste_masks_to_rles`, the two alternating image by image
on the same detections. Prints the seconds of each, ms per image (median), the ratio, and
whether every RLE is byte-identical.

Evaluation (`--parts evaluation`), each path in its own process (so peak memory is its own):
  reference  torchvision's references/detection way: paste_masks_in_image to full-resolution
             float masks, threshold, RLE-encode each, then one pycocotools COCOeval per task
  instseg    CocoEvaluator, as validation and evaluate.py run it: paste_masks_to_rles (same
             arithmetic, straight to RLE), compact per-image storage, faster-coco-eval in
             memory-bounded slices (instseg.evaluation.cocoeval)
Prints seconds (conversion + evaluation, data generation excluded), peak RSS and the RSS
before evaluating, the time ratio, and whether the 12 stats of both tasks are identical.

Exits non-zero if an RLE or a stat differs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import HelpFormatter
from pycocotools import mask as mask_utils
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks

SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (512, 512)]
NUM_CATEGORIES = 20


def make_ground_truth(num_images: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        height, width = SIZES[image_id % len(SIZES)]
        images.append({"id": image_id, "width": width, "height": height,
                       "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 15))):  # ~7 objects per image, as in COCO
            mask = _ellipse(height, width, rng)
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                "category_id": int(rng.integers(1, NUM_CATEGORIES + 1)),
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
            })
    categories = [{"id": i, "name": f"class{i}"} for i in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _ellipse(height, width, rng) -> np.ndarray:
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(4, height / 4), rng.uniform(4, width / 4)
    yy, xx = np.ogrid[:height, :width]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)


def raw_detections(gt: dict, image: dict, count: int) -> dict[str, torch.Tensor]:
    """Deterministic per image: half the boxes near ground truth objects, the rest random."""
    generator = torch.Generator().manual_seed(image["id"])
    height, width = image["height"], image["width"]
    objects = gt["by_image"].get(image["id"], [])
    boxes = []
    labels = torch.randint(1, NUM_CATEGORIES + 1, (count,), generator=generator)
    for k in range(count):
        if objects and k < count // 2:
            x, y, w, h = objects[k % len(objects)]["bbox"]
            if k < len(objects):  # one detection per object with its true class
                labels[k] = objects[k]["category_id"]
            jitter = torch.randn(4, generator=generator) * 0.1
            boxes.append([x + w * jitter[0], y + h * jitter[1],
                          x + w * (1 + jitter[2]), y + h * (1 + jitter[3])])
        else:
            x, y = torch.rand(2, generator=generator) * torch.tensor([width, height])
            w, h = torch.rand(2, generator=generator) * 200 + 4
            boxes.append([x, y, x + w, y + h])
    boxes = torch.tensor(boxes, dtype=torch.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    grid = torch.linspace(-1, 1, 28)
    blob = 1 - (grid[None, :] ** 2 + grid[:, None] ** 2)  # a centred soft ellipse
    noise = torch.rand(count, 1, 28, 28, generator=generator) * 0.6 - 0.3
    return {
        "boxes": boxes, "scores": torch.rand(count, generator=generator),
        "labels": labels,  # categories are 1..20, so label = category id
        "mask_probs": (blob + noise).clamp(0, 1), "image_size": (height, width),
    }


def run_path(path: str, gt_file: Path, count: int) -> dict:
    from instseg.data.categories import CategoryMap
    from instseg.data.coco import load_coco

    coco = load_coco(gt_file)
    gt = coco.dataset | {"by_image": coco.imgToAnns}
    categories = CategoryMap.from_coco_categories(gt["categories"])
    run = _run_reference if path == "reference" else _run_instseg
    from torchvision.models.detection import roi_heads  # noqa: F401

    import instseg.evaluation.coco  # noqa: F401  (both paths' imports in the baseline)

    base_mb = _current_rss_mb()  # torch, torchvision, the ground truth: before evaluating
    seconds, stats = run(coco, gt, categories, count)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "seconds": seconds, "base_mb": base_mb, "peak_mb": peak_mb,
            "stats": stats}


def _current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _run_reference(coco, gt, categories, count):
    seconds, bbox_records, segm_records = 0.0, [], []
    for image in gt["images"]:
        detections = raw_detections(gt, image, count)
        start = time.perf_counter()
        boxed, masked = _reference_records(image["id"], detections, categories)
        bbox_records += boxed
        segm_records += masked
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    stats = {"bbox": _pycocotools_stats(coco, bbox_records, "bbox"),
             "segm": _pycocotools_stats(coco, segm_records, "segm")}
    return seconds + time.perf_counter() - start, stats


def _pycocotools_stats(coco, records, iou_type) -> list[float]:
    """One COCOeval over all records, as torchvision's reference scripts run it."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco, coco.loadRes(records), iouType=iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


def _run_instseg(coco, gt, categories, count):
    """What validation and evaluate.py do: CocoEvaluator.process per image, then score."""
    from instseg.evaluation.coco import STAT_NAMES, CocoEvaluator

    evaluator = CocoEvaluator(coco, categories, backend="faster_coco_eval", verbose=False)
    seconds = 0.0
    for image in gt["images"]:
        detections = raw_detections(gt, image, count)
        start = time.perf_counter()
        evaluator.process([image["id"]], [detections])
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    metrics, _, _ = evaluator.score(evaluator.image_ids, evaluator.detections)
    stats = {t: [metrics[f"{t}_{n}"] for n in STAT_NAMES] for t in ("bbox", "segm")}
    return seconds + time.perf_counter() - start, stats


def _reference_records(image_id, detections, categories):
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    boxes = detections["boxes"]
    masks = paste_masks_in_image(detections["mask_probs"], boxes, detections["image_size"])
    masks = masks > 0.5
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = detections["scores"].tolist()
    ids = categories.to_category_ids(detections["labels"])
    rles = [mask_utils.encode(np.array(m[0, :, :, None], dtype=np.uint8, order="F"))[0]
            for m in masks.numpy()]
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    boxed = [{"image_id": image_id, "category_id": c, "bbox": b, "score": s}
             for c, b, s in zip(ids, xywh, scores, strict=True)]
    masked = [{"image_id": image_id, "category_id": c, "segmentation": r, "score": s}
              for c, r, s in zip(ids, rles, scores, strict=True)]
    return boxed, masked


def baseline_paste_masks_to_rles(mask_probs, boxes, image_size, threshold=0.5, padding=1):
    """The pasting that paste_masks_to_rles is measured against: per detection, the
    thresholded box-sized patch written into one reused image-sized Fortran canvas and the
    whole canvas encoded by pycocotools."""
    height, width = image_size
    canvas = np.zeros((height, width), dtype=np.uint8, order="F")
    rles = []
    if len(mask_probs) == 0:
        return rles
    masks, scale = expand_masks(mask_probs, padding=padding)
    boxes = expand_boxes(boxes, scale).to(dtype=torch.int64).tolist()
    for mask, (x0, y0, x1, y1) in zip(masks[:, 0], boxes, strict=True):
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        patch = F.interpolate(mask[None, None], size=(h, w), mode="bilinear",
                              align_corners=False)[0, 0]
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = max(min(x1 + 1, width), left), max(min(y1 + 1, height), top)
        region = patch[top - y0:bottom - y0, left - x0:right - x0] > threshold
        canvas[top:bottom, left:right] = region.numpy()
        rle = mask_utils.encode(canvas)
        rles.append({"size": [int(v) for v in rle["size"]],
                     "counts": rle["counts"].decode("ascii")})
        canvas[top:bottom, left:right] = 0
    return rles


def compare_pasting(gt: dict, num_images: int, count: int) -> bool:
    """Times the baseline and paste_masks_to_rles on the same detections of the first
    `num_images` images, alternating which goes first; prints the times and whether every RLE
    is identical, which it returns."""
    from instseg.structures.masks import paste_masks_to_rles

    by_image = {}
    for annotation in gt["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    gt = gt | {"by_image": by_image}
    methods = {"baseline": baseline_paste_masks_to_rles, "paste_masks_to_rles":
               paste_masks_to_rles}
    seconds = {name: [] for name in methods}
    different = masks = 0
    warm_up = raw_detections(gt, gt["images"][0], count)
    for method in methods.values():  # first calls' one-off costs (lazy imports, allocators)
        method(warm_up["mask_probs"], warm_up["boxes"], warm_up["image_size"])
    for index, image in enumerate(gt["images"][:num_images]):
        detections = raw_detections(gt, image, count)
        args = detections["mask_probs"], detections["boxes"], detections["image_size"]
        rles = {}
        for name in (list(methods) if index % 2 == 0 else list(methods)[::-1]):
            start = time.perf_counter()
            rles[name] = methods[name](*args)
            seconds[name].append(time.perf_counter() - start)
        masks += len(rles["baseline"])
        different += sum(a != b for a, b in zip(rles["baseline"], rles["paste_masks_to_rles"],
                                                strict=True))
        different += abs(len(rles["baseline"]) - len(rles["paste_masks_to_rles"]))
    print(f"pasting, {num_images} images x {count} detections (threads: "
          f"{torch.get_num_threads()})")
    print(f"{'method':<42}{'seconds':>10}{'ms/image (median)':>20}")
    for name, times in seconds.items():
        print(f"{name:<42}{sum(times):>10.2f}{np.median(times) * 1e3:>20.2f}")
    base, ours = (seconds[name] for name in methods)
    print(f"pasting speed-up: {sum(base) / sum(ours):.2f}x "
          f"(median per image {np.median(base) / np.median(ours):.2f}x)")
    print(f"RLEs identical: {different == 0} ({masks - different} of {masks})")
    return different == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--images", type=int, default=5000, help="generated images")
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0, help="of the generated data")
    parser.add_argument("--parts", nargs="+", choices=["paste", "evaluation"],
                        default=["paste", "evaluation"], help="what to compare")
    parser.add_argument("--paste-images", type=int, default=0,
                        help="images of the pasting comparison, the first of --images (0: all)")
    parser.add_argument("--path", choices=["reference", "instseg"], help=argparse.SUPPRESS)
    parser.add_argument("--gt", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.path:  # a child process: one path, result as json on stdout
        print(json.dumps(run_path(args.path, args.gt, args.detections)))
        return

    gt = make_ground_truth(args.images, args.seed)
    identical = True
    if "paste" in args.parts:
        paste_images = min(args.paste_images or args.images, args.images)
        identical = compare_pasting(gt, paste_images, args.detections)
    if "evaluation" in args.parts:
        if "paste" in args.parts:
            print()
        identical = evaluate(gt, args) and identical
    if not identical:
        sys.exit(1)


def evaluate(gt: dict, args: argparse.Namespace) -> bool:
    """Both paths, each in its own process, on `gt`; prints their table and returns whether
    their 12 bbox and segm stats are identical."""
    with tempfile.TemporaryDirectory() as tmp:
        gt_file = Path(tmp) / "gt.json"
        gt_file.write_text(json.dumps(gt))
        results = {}
        for path in ("reference", "instseg"):
            out = subprocess.run(
                [sys.executable, __file__, "--path", path, "--gt", str(gt_file),
                 "--detections", str(args.detections)],
                capture_output=True, text=True, check=True,
            ).stdout
            results[path] = json.loads(out.strip().splitlines()[-1])
    reference, ours = results["reference"], results["instseg"]
    print(f"{args.images} images x {args.detections} detections, bbox + segm")
    print(f"{'path':<42}{'seconds':>10}{'peak RSS MB':>14}{'of which before':>17}")
    for name, result in (("reference (paste float + pycocotools)", reference),
                         ("instseg (paste to RLE + faster-coco-eval)", ours)):
        print(f"{name:<42}{result['seconds']:>10.1f}{result['peak_mb']:>14.0f}"
              f"{result['base_mb']:>17.0f}")
    print("(before: RSS after imports and loading the ground truth, before evaluating)")
    print(f"speed-up: {reference['seconds'] / ours['seconds']:.1f}x")
    difference = max(
        np.abs(np.subtract(reference["stats"][t], ours["stats"][t])).max() for t in ("bbox", "segm")
    )
    identical = difference <= 1e-12
    print(f"12 stats of bbox and segm equal to 1e-12: {identical} "
          f"(largest difference {difference:.1e})")
    print(f"segm stats: {[round(v, 4) for v in ours['stats']['segm']]}")
    return identical


if __name__ == "__main__":
    main()
