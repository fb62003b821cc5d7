"""Inference: instseg's Predictor against calling torchvision's Mask R-CNN directly, on the
same CPU, in one run, with the outputs compared.

    python benchmarks/bench_inference.py [--ckpt PATH] [--sizes 320 512 800] [--runs 5]
                                         [--compile] [--device cuda]
                                         [--precisions 32-true 16-mixed] [--stages]

plain:  `net.eval()`, `with torch.no_grad(): net([image])` (torchvision pastes every mask at
        full resolution as float)
ours:   `Predictor(net, ..., score_threshold=0).predict([image])` (channels_last, RoI pooling
        on all threads, masks pasted straight into RLE and returned as bool masks; with
        --compile also torch.compile of the convolutional parts)
Each size: median of --runs timed runs after one warm-up run (and, with --compile, the
compilation, timed separately); on CUDA each run ends with a synchronize. --precisions adds
rows of autocast inference (Predictor precision=16-mixed / bf16-mixed) against the same fp32
plain run: their outputs are expected to differ by more than the fp32 tolerances.
Outputs: same number of detections and labels, boxes and
scores within 1e-3, every binary mask (> 0.5) with IoU >= 0.99 against the plain one.

--stages: then the seconds of each stage of ours (median of --runs), to see where the time goes.

Model: the checkpoint's (--ckpt) or, without one,
torchvision's maskrcnn_resnet50_fpn with seeded random weights (timings are those of the
architecture; its near-tied random scores may be ordered differently by rounding, which the
comparison then reports). Images: the coco-sample photos from ../shared/data (640 px).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from instseg.data.categories import CategoryMap  # noqa: E402
from instseg.data.images import read_rgb  # noqa: E402
from instseg.demo.predictor import Predictor  # noqa: E402
from instseg.evaluation.paste import paste_masks_to_rles  # noqa: E402
from instseg.models.inference import optimize_for_inference  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "coco-sample" / "images"
TOLERANCE, MIN_IOU = 1e-3, 0.99


def load_model(ckpt: str | None):
    """(net, categories) of the checkpoint, or torchvision's R50-FPN with seeded weights."""
    if ckpt:
        from instseg.pipeline import module_from_checkpoint

        module, categories, _ = module_from_checkpoint(ckpt)
        return module.net.eval(), categories
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    net = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    return net.eval(), CategoryMap(tuple(range(1, 91)), tuple(f"class {i}" for i in range(1, 91)))


def set_size(net, size: int) -> None:
    net.transform.min_size = (size,)
    net.transform.max_size = round(size * 1333 / 800)


def median_seconds(run, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare(plain: list[dict], ours: list, categories: CategoryMap) -> dict:
    """Worst differences over all images; `match` by the issue's tolerances."""
    worst = {"count_equal": True, "labels_equal": True, "box": 0.0, "score": 0.0, "iou": 1.0}
    for expected, got in zip(plain, ours, strict=True):
        if len(expected["scores"]) != len(got):
            worst["count_equal"] = False
            continue
        ids = categories.to_category_ids(expected["labels"])
        worst["labels_equal"] &= ids == got.category_ids.tolist()
        if not len(got):
            continue
        worst["box"] = max(worst["box"], (expected["boxes"] - got.boxes).abs().max().item())
        worst["score"] = max(worst["score"], (expected["scores"] - got.scores).abs().max().item())
        binary = expected["masks"][:, 0] > 0.5
        inter = (binary & got.masks).flatten(1).sum(1).double()
        union = (binary | got.masks).flatten(1).sum(1).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        worst["iou"] = min(worst["iou"], iou.min().item())
    worst["match"] = (worst["count_equal"] and worst["labels_equal"] and worst["box"] <= TOLERANCE
                      and worst["score"] <= TOLERANCE and worst["iou"] >= MIN_IOU)
    return worst


def synchronized(run, device: str):
    """`run`, waiting for the GPU's queued work before returning (timings include it)."""
    def call():
        result = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return result
    return call


def bench_size(net, categories, images, size: int, args, precision: str) -> dict:
    plain_net = copy.deepcopy(net).to(args.device)
    set_size(plain_net, size)
    on_device = [image.to(args.device) for image in images]

    def run_plain():
        with torch.no_grad():
            return [{k: v.cpu() for k, v in out.items()} for out in plain_net(on_device)]

    predictor = Predictor(copy.deepcopy(net), categories, score_threshold=0.0, min_size=size,
                          max_size=round(size * 1333 / 800), device=args.device,
                          compile=args.compile, precision=precision)
    plain = synchronized(run_plain, args.device)
    ours = synchronized(lambda: predictor.predict(images), args.device)
    start = time.perf_counter()
    ours()  # warm-up (and compilation)
    row = {"size": size, "precision": precision, "first_ours": time.perf_counter() - start}
    plain()  # warm-up
    row["plain"] = median_seconds(plain, args.runs)
    row["ours"] = median_seconds(ours, args.runs)
    row.update(compare(plain(), ours(), categories))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="an instseg checkpoint (default: R50-FPN, seeded weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 512, 800])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=int, default=1, help="coco-sample photos per call")
    parser.add_argument("--image-dir", type=Path, default=SAMPLE,
                        help="where the photos are (default: ../shared/data/coco-sample)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (ours)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precisions", nargs="+", default=["32-true"],
                        help="ours: 32-true, 16-mixed, bf16-mixed (autocast)")
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage of ours (CPU)")
    args = parser.parse_args()
    net, categories = load_model(args.ckpt)
    files = sorted(args.image_dir.glob("*.jpg"))[: args.images]
    images = [read_rgb(f).float() / 255 for f in files]
    print(f"model: {args.ckpt or 'torchvision maskrcnn_resnet50_fpn (seeded random weights)'}; "
          f"{len(images)} image(s) {[tuple(i.shape[-2:]) for i in images]}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"compile={args.compile}; device {describe(args.device)}")
    header = (f"{'size':>5} {'ours precision':>14} {'plain s':>8} {'ours s':>8} {'ratio':>6} "
              f"{'dets':>5} {'max|dbox|':>10} {'max|dscore|':>11} {'min IoU':>8} "
              f"{'match':>6} {'1st ours s':>10}")
    print(header)
    for size in args.sizes:
        for precision in args.precisions:
            row = bench_size(net, categories, images, size, args, precision)
            print_row(row)
    if args.stages and args.device == "cpu":
        for size in args.sizes:
            stages = stage_seconds(net, images[0], size, args.runs)
            print(f"stages of ours at {size} px (s): " + ", ".join(
                f"{name} {seconds:.3f}" for name, seconds in stages.items()))


@torch.inference_mode()
def stage_seconds(net, image: torch.Tensor, size: int, runs: int) -> dict[str, float]:
    """Median seconds per stage of the optimised net on one image (predict_unpasted's steps,
    with the RoI heads' inference spelled out)."""
    net = optimize_for_inference(copy.deepcopy(net))
    set_size(net, size)
    heads, times = net.roi_heads, {}

    def timed(name, function, *args):
        start = time.perf_counter()
        result = function(*args)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    def box_head(pooled):
        return heads.box_predictor(heads.box_head(pooled))

    def mask_head(pooled):
        return heads.mask_predictor(heads.mask_head(pooled)).sigmoid()

    for _ in range(runs + 1):  # the first is a warm-up
        batch, _ = timed("transform", net.transform, [image])
        pixels = batch.tensors.contiguous(memory_format=torch.channels_last)
        features = timed("backbone + FPN", net.backbone, pixels)
        proposals, _ = timed("RPN", net.rpn, batch, features)
        features = {k: v.contiguous() for k, v in features.items()}
        sizes = batch.image_sizes
        pooled = timed("box RoI pooling", heads.box_roi_pool, features, proposals, sizes)
        logits, deltas = timed("box head", box_head, pooled)
        boxes, _, _ = timed("box post-processing", heads.postprocess_detections, logits, deltas,
                            proposals, sizes)
        pooled = timed("mask RoI pooling", heads.mask_roi_pool, features, boxes, sizes)
        probs = timed("mask head", mask_head, pooled)
        timed("paste to RLE", paste_masks_to_rles, probs[:, :1], boxes[0], sizes[0])
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def describe(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def print_row(row: dict) -> None:
    print(f"{row['size']:>5} {row['precision']:>14} {row['plain']:>8.3f} {row['ours']:>8.3f} "
          f"{row['plain'] / row['ours']:>5.2f}x "
          f"{'=' if row['count_equal'] else '!=':>5} {row['box']:>10.2e} "
          f"{row['score']:>11.2e} {row['iou']:>8.4f} {str(row['match']):>6} "
          f"{row['first_ours']:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
