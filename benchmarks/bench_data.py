"""Data loading: the DataModule's images/s with 0, 1 and 2 workers against the rate at which
the model consumes images, and torchvision's JPEG decoder against Pillow's, in one run.

    python benchmarks/bench_data.py [--coco-sample] [--model small_cpu] [--workers 0 1 2]
                                    [--batches 40] [--steps 16] [--repeats 3] [OVERRIDE ...]

Data: the shapes set of conf/data/shapes.yaml (800 + 100 generated 160 px PNGs, batch 4,
val batch 8; generated into a temporary directory) and, with --coco-sample, a CocoDataModule
over ../shared/data/coco128-seg (128 photos of 640 px, their json as both train and val
split; conf/data/coco_format.yaml: batch 2, aspect-ratio grouping). Model: conf/model/
<--model> at its configured size (small_cpu: ResNet-18 FPN, images resized to 160 px),
seeded random weights, as train.py builds it for that data.

Per dataset and worker count (images/s = images / seconds over the timed batches or steps):
  loader        train_dataloader() (and val_dataloader()) alone, no model: --batches
                batches timed after 3 warm-up batches (worker start-up excluded), median of
                --repeats such spans
  training      the model alone: plain training steps (zero_grad, forward, backward, clip
                10, optimizer step; --steps after 2 warm-up) from freshly seeded weights on the
                loader's first batches, held in memory
  with loader   right after, the same steps from the same weights on the same batches (their
                order and augmentation depend on the seed only), fetched from the loader:
                fetch + step timed; on 2 cores the workers and the model's threads share
                the CPUs, which the loader-alone rate does not show
Per dataset, once: inference (`predict_unpasted` as validation calls it, under
inference_mode, on val batches in memory; mask pasting and COCO scoring not included). With
seeded random weights the number of detections, and so the mask head's work, is not a
trained model's (shapes: most of the 50 allowed per image; coco128-seg: fewer).
Decoders: every coco128-seg JPEG decoded by `torchvision.io.decode_image(path,
ImageReadMode.RGB)` (what instseg.data.images.read_rgb calls) and by
`np.asarray(PIL.Image.open(path).convert("RGB"))`: ms per image (median of --repeats
passes) and whether the pixels are identical.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from _common import (
    SHARED_DATA,
    HelpFormatter,
    compose_config,
    endless,
    plain_training_step,
    quiet_lightning,
)
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from instseg.models.forward import predict_unpasted
from instseg.tasks.common import build_module

COCO128 = SHARED_DATA / "coco128-seg"
LOADER_WARMUP, STEP_WARMUP = 3, 2


def train_config(work: Path, model: str, data: list[str]) -> DictConfig:
    """conf/train.yaml with `model` and the data overrides, writing under `work`."""
    return compose_config("train", [f"model={model}", *data], work, work / "run")


def coco128_overrides() -> list[str]:
    """data=coco_format over coco128-seg, its one json as both splits."""
    images = COCO128 / "images" / "train2017"
    annotations = COCO128 / "annotations" / "instances_train2017.json"
    return ["data=coco_format", f"data.train_images={images}",
            f"data.train_annotations={annotations}", f"data.val_images={images}",
            f"data.val_annotations={annotations}"]


def datamodule_with(cfg: DictConfig, workers: int):
    """The configured datamodule with `workers` loader processes, set up for fit."""
    datamodule = instantiate(cfg.data, num_workers=workers)
    datamodule.setup("fit")
    return datamodule


def loader_rate(loader, batches: int, repeats: int) -> float:
    """Median images/s over `repeats` spans of `batches` batches, after a warm-up."""
    stream = endless(loader)
    for _ in range(LOADER_WARMUP):
        next(stream)
    rates = []
    for _ in range(repeats):
        images = 0
        start = time.perf_counter()
        for _ in range(batches):
            images += len(next(stream).images)
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates)


def fresh_model(cfg: DictConfig, datamodule):
    """(net in train mode, its trainable params, the config's optimizer), seeded weights."""
    pl.seed_everything(cfg.seed, verbose=False)
    module, _ = build_module(cfg, datamodule)
    params = [p for p in module.net.parameters() if p.requires_grad]
    return module.net.train(), params, module.build_optimizer(params)


def timed_steps(step, batches, steps: int) -> tuple[float, list]:
    """(images/s, results) of `steps` calls of `step`, each on next(batches) (the fetch is
    timed too), after a warm-up; results: what every call returned, warm-up included."""
    results = [step(next(batches)) for _ in range(STEP_WARMUP)]
    images, seconds = 0, 0.0
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batches)
        results.append(step(batch))
        seconds += time.perf_counter() - start
        images += len(batch.images)
    return images / seconds, results


def first_batches(loader, steps: int) -> list:
    """The warm-up and timed batches of a loader, held in memory."""
    return list(itertools.islice(endless(loader), STEP_WARMUP + steps))


def training_rate(cfg: DictConfig, datamodule, batches, steps: int) -> tuple[float, list]:
    """(images/s, losses) of plain training steps of a freshly seeded model over `batches`
    (a list in memory, or a loader's stream: then its fetching is timed too)."""
    net, params, optimizer = fresh_model(cfg, datamodule)
    clip = cfg.trainer.gradient_clip_val
    return timed_steps(
        lambda b: plain_training_step(net, params, optimizer, b.images, b.targets, clip).item(),
        iter(batches), steps)


def inference_rate(cfg: DictConfig, datamodule, steps: int) -> float:
    """images/s of the freshly seeded model's inference, as validation runs it, on val
    batches held in memory."""
    batches = first_batches(datamodule.val_dataloader(), steps)
    net = fresh_model(cfg, datamodule)[0].eval()

    def infer(batch):
        with torch.inference_mode():
            predict_unpasted(net, batch.images)

    return timed_steps(infer, iter(batches), steps)[0]


def bench_dataset(name: str, cfg: DictConfig, args) -> None:
    """The loader/model table of one dataset. Per worker count, the model's training alone
    and fed by the loader run back to back on the same batches (the order and augmentation
    are functions of the seed, whatever the workers) from the same seeded weights."""
    instantiate(cfg.data).prepare_data()  # generates shapes, checks the files
    # train_dataloader() seeds its order and augmentation with torch.initial_seed(): the
    # config's seed for every loader here, as in training.
    pl.seed_everything(cfg.seed, verbose=False)
    base = datamodule_with(cfg, 0)
    in_memory = first_batches(base.train_dataloader(), args.steps)
    inference = inference_rate(cfg, base, args.steps)
    print(describe(name, cfg, base, args.model))
    print(f"model inference alone (val batches in memory): {inference:.1f} images/s")
    print(f"{'workers':<8}{'train loader':>13}{'training':>10}{'ratio':>8}{'with loader':>13}"
          f"{'vs alone':>9}{'same':>6}{'val loader':>12}{'ratio':>8}   (images/s)")
    ratios = []
    for workers in args.workers:
        datamodule = datamodule_with(cfg, workers)
        train_rate = loader_rate(datamodule.train_dataloader(), args.batches, args.repeats)
        val_rate = loader_rate(datamodule.val_dataloader(), args.batches, args.repeats)
        alone, losses = training_rate(cfg, base, in_memory, args.steps)
        fed, fed_losses = training_rate(cfg, datamodule, endless(datamodule.train_dataloader()),
                                        args.steps)
        ratios += [train_rate / alone, val_rate / inference]
        print(f"{workers:<8}{train_rate:>13.1f}{alone:>10.1f}{train_rate / alone:>7.1f}x"
              f"{fed:>13.1f}{(fed / alone - 1) * 100:>8.1f}%"
              f"{'yes' if fed_losses == losses else 'NO':>6}{val_rate:>12.1f}"
              f"{val_rate / inference:>7.1f}x", flush=True)
        del datamodule  # its persistent workers exit
    verdict = ("never the bottleneck (loader/model > 1 everywhere)" if min(ratios) > 1
               else "the bottleneck where loader/model < 1")
    print(f"loader alone vs model alone: {verdict}")
    print("(train loader, val loader: the loader alone, no model running, all CPUs its own; "
          "training: the model alone on the same batches in memory; ratio: loader / model; "
          "with loader: the training steps fed by that loader, loader and model sharing the "
          "CPUs; vs alone: its change from the training column; same: both runs had "
          "identical losses at every step, i.e. did the same work)")


def describe(name: str, cfg: DictConfig, datamodule, model: str) -> str:
    """One line: the data, batch sizes and model."""
    net = cfg.model.net
    return (f"== {name}: {len(datamodule.train_set)} train images (with usable annotations) / "
            f"{len(datamodule.val_set)} val, batch {datamodule.batch_size} (val "
            f"{datamodule.val_batch_size}); model {model} (images resized to min_size "
            f"{net.min_size}, max_size {net.max_size}), seeded random weights")


def bench_decoders(repeats: int) -> None:
    """ms per image of torchvision's and Pillow's decoders on coco128-seg, and pixel check."""
    files = sorted((COCO128 / "images" / "train2017").glob("*.jpg"))
    if not files:
        print(f"== decoders: no JPEGs under {COCO128} (skipped)")
        return
    decoders = {
        "torchvision.io.decode_image (read_rgb)":
            lambda f: decode_image(str(f), mode=ImageReadMode.RGB),
        'PIL Image.open().convert("RGB")':
            lambda f: np.asarray(Image.open(f).convert("RGB")),
    }
    print(f"== decoders: {len(files)} coco128-seg JPEGs, ms per image (median of {repeats} "
          "passes over all files, file read included)")
    for name, decode in decoders.items():
        decode(files[0])  # warm-up
        passes = []
        for _ in range(repeats):
            start = time.perf_counter()
            for path in files:
                decode(path)
            passes.append((time.perf_counter() - start) / len(files))
        print(f"  {name:<42}{statistics.median(passes) * 1e3:>7.2f}")
    compare_pixels(files, *decoders.values())


def compare_pixels(files: list[Path], torchvision_decode, pil_decode) -> None:
    """Identical images count and the largest per-pixel difference."""
    identical, largest, mean = 0, 0, []
    for path in files:
        ours = torchvision_decode(path).permute(1, 2, 0).numpy().astype(np.int16)
        theirs = pil_decode(path).astype(np.int16)
        if ours.shape != theirs.shape:
            print(f"  {path.name}: shapes differ {ours.shape} vs {theirs.shape}")
            continue
        difference = np.abs(ours - theirs)
        identical += int(not difference.any())
        largest = max(largest, int(difference.max()))
        mean.append(float(difference.mean()))
    print(f"  pixels: {identical}/{len(files)} images identical; max |difference| {largest}, "
          f"mean |difference| {statistics.fmean(mean):.4f} (0-255 scale)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--coco-sample", action="store_true",
                        help=f"also a CocoDataModule over {COCO128}")
    parser.add_argument("--model", default="small_cpu", help="conf/model/<name>")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="loader worker counts")
    parser.add_argument("--batches", type=int, default=40, help="batches per loader span")
    parser.add_argument("--steps", type=int, default=16, help="timed model steps")
    parser.add_argument("--repeats", type=int, default=3, help="loader spans, decoder passes")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides for the shapes run, e.g. data.num_train=200")
    args = parser.parse_args()
    quiet_lightning()
    # The json check's notes (coco128-seg: 2 images without usable annotations), logged by
    # every datamodule built here: the train image counts printed below show them.
    logging.getLogger("instseg.data").setLevel(logging.ERROR)
    print(f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}; loader workers share these CPUs with the model's threads; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp:
        work = Path(tmp)
        bench_dataset("shapes", train_config(work, args.model, ["data=shapes", *args.overrides]),
                      args)
        if args.coco_sample:
            bench_dataset("coco128-seg", train_config(work, args.model, coco128_overrides()),
                          args)
    bench_decoders(args.repeats)
    print(f"load average {os.getloadavg()[0]:.2f} at the end (1 min; this run adds about 1 "
          "to 2: more means another process shared the CPUs)")


if __name__ == "__main__":
    main()
