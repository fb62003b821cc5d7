"""Inference: instseg's Predictor against calling torchvision's Mask R-CNN directly, on the
same CPU, in one run, with the outputs compared.

    python benchmarks/bench_inference.py [--ckpt PATH] [--sizes 320 512 800] [--runs 5]
                                         [--compile] [--device cuda]
                                         [--precisions 32-true 16-mixed] [--stages]
                                         [--convolutions]
                                         [--backends compile onnxruntime openvino torchscript]

plain:  `net.eval()`, `with torch.no_grad(): net([image])` (torchvision pastes every mask at
        full resolution as float), in a Python process of its own, as a user runs it.
ours:   `Predictor(net, ..., score_threshold=0).predict([image])` in a process of its own:
        instseg.inference.optimize.optimize_for_inference (BatchNorm folded, Winograd 3x3
        convolutions, channels_last, sparse-matrix RoIAlign, glibc reusing freed memory),
        mask logits of the kept class only, masks pasted straight to bool; with --compile
        also torch.compile of the convolutional parts.
plain, reused memory (CPU only): plain again, in a process where instseg.utils.memory's
        allocator setting was made first, to show how much of the ratio that setting is.
Each path: one warm-up run (and, with --compile, the compilation, timed separately), then the
median of --runs timed runs; on CUDA each run ends with a synchronize. --precisions adds rows
of autocast inference (Predictor precision=16-mixed / bf16-mixed) against the same fp32
plain run: their outputs are expected to differ by more than the fp32 tolerances.
Outputs of the last run compared: same number of detections and labels, boxes and scores
within 1e-3, every binary mask (> 0.5) with IoU >= 0.99 against the plain one.

--backends: rows for other ways to run the same net, each against the same plain run:
compile (ours with torch.compile of the convolutional parts), and onnxruntime, openvino
(fp32) and torchscript running the file instseg-export writes for each size (dynamic; masks
pasted outside the graph by instseg's paste, as ours), all in one process of their own. An
exported file takes one image per call, so with --images 2 or more its detections are
compared with a batched plain run, which pads every image to the batch's size and so
detects differently: compare them at --images 1.

--stages: then the seconds of each stage of ours (median of --runs), to see where the time goes.
--convolutions: 3x3 convolutions of R50-FPN's shapes, oneDNN's direct ones against
instseg.inference.winograd, to see where Winograd pays.

Model: the checkpoint's (--ckpt) or, without one,
torchvision's maskrcnn_resnet50_fpn with seeded random weights (timings are those of the
architecture; its untrained heads give near-tied scores and mask probabilities near 0.5,
which rounding changes, so the comparison is only meaningful on a trained model).
Images: the coco-sample photos from ../shared/data (640 px).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from _common import SHARED_DATA, HelpFormatter

from instseg.data.categories import CategoryMap
from instseg.data.images import read_rgb
from instseg.inference.optimize import optimize_for_inference
from instseg.inference.predictor import Predictor
from instseg.inference.winograd import WinogradConv2d
from instseg.models.forward import labelled_mask_logits
from instseg.structures.masks import paste_masks_to_binary
from instseg.utils.memory import reuse_freed_memory

SAMPLE = SHARED_DATA / "coco-sample" / "images"
TOLERANCE, MIN_IOU = 1e-3, 0.99
EXPORTED = {"onnxruntime": "onnx", "openvino": "onnx", "torchscript": "torchscript"}


def load_model(ckpt: str | None):
    """(net, categories) of the checkpoint, or torchvision's R50-FPN with seeded weights."""
    if ckpt:
        from instseg.checkpoints.build import module_from_checkpoint

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
        if len(expected["scores"]) != len(got["scores"]):
            worst["count_equal"] = False
            continue
        ids = categories.to_category_ids(expected["labels"])
        worst["labels_equal"] &= ids == got["category_ids"].tolist()
        if not len(got["scores"]):
            continue
        worst["box"] = max(worst["box"], (expected["boxes"] - got["boxes"]).abs().max().item())
        worst["score"] = max(worst["score"],
                             (expected["scores"] - got["scores"]).abs().max().item())
        binary, other = expected["masks"], got["masks"]
        inter = (binary & other).flatten(1).sum(1).double()
        union = (binary | other).flatten(1).sum(1).double()
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


def timed_runs(run, runs: int) -> dict:
    """{"first": seconds of the warm-up run, "seconds": median of `runs`, "outputs": last}."""
    start = time.perf_counter()
    run()  # warm-up (and compilation)
    first = time.perf_counter() - start
    return {"first": first, "seconds": median_seconds(run, runs), "outputs": run()}


def run_plain(net, images, size: int, args) -> dict:
    plain_net = copy.deepcopy(net).to(args.device)
    set_size(plain_net, size)
    on_device = [image.to(args.device) for image in images]

    def run():
        with torch.no_grad():
            return [{k: v.cpu() for k, v in out.items()} for out in plain_net(on_device)]
    result = timed_runs(synchronized(run, args.device), args.runs)
    # thresholded for the comparison only, after the timing
    result["outputs"] = [dict(o, masks=o["masks"][:, 0] > 0.5) for o in result["outputs"]]
    return result


def run_ours(net, categories, images, size: int, args, precision: str,
             compile: bool = False) -> dict:
    predictor = Predictor(copy.deepcopy(net), categories, score_threshold=0.0, min_size=size,
                          max_size=round(size * 1333 / 800), device=args.device,
                          compile=args.compile or compile, precision=precision)
    return run_predictor(predictor, images, args)


def run_exported(net, categories, images, size: int, args, folder: Path) -> dict:
    """Every exported backend of args.backends on the net exported at `size`."""
    from instseg.export import export

    exported_net = copy.deepcopy(net)
    set_size(exported_net, size)
    results = {}
    for export_format, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        wanted = [b for b in args.backends if EXPORTED.get(b) == export_format]
        if not wanted:
            continue
        start = time.perf_counter()
        path = export(exported_net, categories, folder / f"model-{size}{suffix}", export_format)
        print(f"exported {export_format} at {size} px in {time.perf_counter() - start:.0f} s",
              flush=True)
        for backend in wanted:
            results[size, backend] = run_predictor(
                Predictor.from_exported(path, backend, score_threshold=0.0), images, args)
    return results


def run_predictor(predictor: Predictor, images, args) -> dict:
    def run():
        return [{"boxes": i.boxes, "scores": i.scores, "category_ids": i.category_ids,
                 "masks": i.masks} for i in predictor.predict(images)]
    return timed_runs(synchronized(run, args.device), args.runs)


def worker(args) -> None:
    """One path (args.worker) at every size, in this process; results, keyed by size (and
    precision), and the model's categories to args.out."""
    if args.worker == "plain-reused-memory":
        reuse_freed_memory()
    net, categories = load_model(args.ckpt)
    images = load_images(args)
    results = {"categories": categories}
    for size in args.sizes:
        if args.worker == "ours":
            for precision in args.precisions:
                results[size, precision] = run_ours(net, categories, images, size, args,
                                                    precision)
            if "compile" in args.backends:
                results[size, "compile"] = run_ours(net, categories, images, size, args,
                                                    "32-true", compile=True)
        elif args.worker == "exported":
            results |= run_exported(net, categories, images, size, args,
                                    Path(args.out).parent)
        else:
            results[size] = run_plain(net, images, size, args)
    torch.save(results, args.out)
    if args.stages and args.worker == "ours" and args.device == "cpu":
        for size in args.sizes:
            stages = stage_seconds(net, images[0], size, args.runs)
            print(f"stages of ours at {size} px (s): " + ", ".join(
                f"{name} {seconds:.3f}" for name, seconds in stages.items()), flush=True)


def in_subprocess(role: str, argv: list[str], folder: Path) -> dict:
    out = folder / f"{role}.pt"
    subprocess.run([sys.executable, __file__, *argv, "--worker", role, "--out", str(out)],
                   check=True)
    return torch.load(out, weights_only=False)


def load_images(args) -> list[torch.Tensor]:
    files = sorted(args.image_dir.glob("*.jpg"))[: args.images]
    return [read_rgb(f).float() / 255 for f in files]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--ckpt", help="an instseg checkpoint (unset: R50-FPN, seeded weights)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 512, 800],
                        help="shorter image side (model.transform.min_size)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path (median)")
    parser.add_argument("--images", type=int, default=1, help="coco-sample photos per call")
    parser.add_argument("--image-dir", type=Path, default=SAMPLE,
                        help="where the photos are")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (ours)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="both paths")
    parser.add_argument("--precisions", nargs="+", default=["32-true"],
                        help="ours: 32-true, 16-mixed, bf16-mixed (autocast)")
    parser.add_argument("--stages", action="store_true",
                        help="also time each stage of ours (CPU)")
    parser.add_argument("--convolutions", action="store_true",
                        help="also time direct vs Winograd 3x3 convolutions (CPU)")
    parser.add_argument("--backends", nargs="+", default=[], choices=["compile", *EXPORTED],
                        help="rows for torch.compile and exported runtimes (CPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.worker:
        return worker(args)
    images = load_images(args)
    print(f"model: {args.ckpt or 'torchvision maskrcnn_resnet50_fpn (seeded random weights)'}; "
          f"{len(images)} image(s) {[tuple(i.shape[-2:]) for i in images]}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"compile={args.compile}; device {describe(args.device)}", flush=True)
    roles = ["plain", "ours"] + (["plain-reused-memory"] if args.device == "cpu" else [])
    roles += ["exported"] if set(args.backends) & set(EXPORTED) else []
    with tempfile.TemporaryDirectory() as folder:
        results = {role: in_subprocess(role, argv, Path(folder)) for role in roles}
    categories = results["ours"]["categories"]
    print(f"{'size':>5} {'ours / runtime':>14} {'plain s':>8} {'ours s':>8} {'ratio':>6} "
          f"{'dets':>5} {'max|dbox|':>10} {'max|dscore|':>11} {'min IoU':>8} "
          f"{'match':>6} {'1st ours s':>10} {'plain, reused memory s':>22} "
          f"{'ratio vs it':>11}")
    for size in args.sizes:
        plain = results["plain"][size]
        reused = results.get("plain-reused-memory", {}).get(size)
        paths = [*args.precisions, *(b for b in args.backends if b == "compile")]
        rows = [(path, results["ours"][size, path]) for path in paths]
        rows += [(b, results["exported"][size, b]) for b in args.backends if b in EXPORTED]
        for precision, ours in rows:
            row = {"size": size, "precision": precision, "plain": plain["seconds"],
                   "ours": ours["seconds"], "first_ours": ours["first"],
                   "reused": reused and reused["seconds"]}
            row.update(compare(plain["outputs"], ours["outputs"], categories))
            print_row(row)
    if args.convolutions:
        print_convolutions()


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

    def mask_head(pooled, labels):
        return labelled_mask_logits(heads.mask_predictor, heads.mask_head(pooled),
                                     labels).sigmoid()

    for _ in range(runs + 1):  # the first is a warm-up
        batch, _ = timed("transform", net.transform, [image])
        pixels = batch.tensors.contiguous(memory_format=torch.channels_last)
        features = timed("backbone + FPN", net.backbone, pixels)
        proposals, _ = timed("RPN", net.rpn, batch, features)
        sizes = batch.image_sizes
        pooled = timed("box RoI pooling", heads.box_roi_pool, features, proposals, sizes)
        logits, deltas = timed("box head", box_head, pooled)
        boxes, _, labels = timed("box post-processing", heads.postprocess_detections, logits,
                                 deltas, proposals, sizes)
        pooled = timed("mask RoI pooling", heads.mask_roi_pool, features, boxes, sizes)
        probs = timed("mask head", mask_head, pooled, labels[0])
        timed("paste to bool", paste_masks_to_binary, probs, boxes[0], sizes[0])
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def describe(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def print_row(row: dict) -> None:
    reused, vs_reused = "", ""
    if row["reused"] is not None:  # the allocator setting's share taken out
        reused, vs_reused = f"{row['reused']:.3f}", f"{row['reused'] / row['ours']:.2f}x"
    print(f"{row['size']:>5} {row['precision']:>14} {row['plain']:>8.3f} {row['ours']:>8.3f} "
          f"{row['plain'] / row['ours']:>5.2f}x "
          f"{'=' if row['count_equal'] else '!=':>5} {row['box']:>10.2e} "
          f"{row['score']:>11.2e} {row['iou']:>8.4f} {str(row['match']):>6} "
          f"{row['first_ours']:>10.1f} "
          f"{reused:>22} {vs_reused:>11}", flush=True)


# 3x3/stride 1 convolutions of R50-FPN at 800 px and of its mask head: (channels, H, W, batch)
CONVOLUTIONS = [(64, 200, 272, 1), (128, 100, 136, 1), (256, 50, 68, 1), (512, 25, 34, 1),
                (256, 200, 272, 1), (256, 100, 136, 1), (256, 14, 14, 100)]


@torch.inference_mode()
def print_convolutions() -> None:
    """oneDNN's direct convolution (channels_last, as optimize_for_inference leaves the
    others) against WinogradConv2d on the same input, median of 7 runs each."""
    reuse_freed_memory()  # as in the Predictor's process
    print(f"{'channels':>8} {'H x W':>9} {'batch':>5} {'direct s':>9} {'winograd s':>10} "
          f"{'ratio':>6} {'max rel diff':>12}")
    torch.manual_seed(0)
    for channels, height, width, batch in CONVOLUTIONS:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
        conv.to(memory_format=torch.channels_last)
        x = torch.randn(batch, channels, height, width).contiguous(
            memory_format=torch.channels_last)
        winograd = WinogradConv2d.from_conv(conv)
        direct_s = median_seconds(partial(conv, x), 7)
        winograd_s = median_seconds(partial(winograd, x), 7)
        expected = conv(x)
        diff = ((winograd(x) - expected).abs().max() / expected.abs().max()).item()
        print(f"{channels:>8} {f'{height}x{width}':>9} {batch:>5} {direct_s:>9.4f} "
              f"{winograd_s:>10.4f} {direct_s / winograd_s:>5.2f}x {diff:>12.1e}", flush=True)


if __name__ == "__main__":
    main()
