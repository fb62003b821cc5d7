"""Training loader throughput with each augmentation, next to the flip-only loader, in one run.

    python benchmarks/bench_augment.py [--images 64] [--workers 0 1] [--batch 2] [--repeats 3]
                                       [--canvas 1024] [--gpu-rates 25 50 100]

Data: ../shared/data/coco128-seg (126 annotated COCO photos of 640 px, their polygons
rasterised at full size). The loader is CocoDataModule's training loader (EpochSampler,
seeded per-sample augmentation, collate), batch --batch, over the first --images photos.
Rows (conf/augment/ names; the canvas of lsj is --canvas, the recipes' 1024):
  flip           training_transforms(hflip_prob=0.5): the baseline
  multiscale     the same loader: the shortest side is drawn in the model's resize
  lsj            ScaleJitter to the canvas (0.1-2.0), crop / pad, flip, boxes from masks
  copy_paste     flip, then simple copy-paste within each batch
  lsj+copy_paste
  photometric    flip and RandomPhotometricDistort
Per row and worker count: images/s (median of --repeats passes over the images; with
workers, the first batch's start-up is excluded) and the ratio to flip-only at the same
worker count, measured in this run.

Then one sample's stages in the main process (median ms over the photos, flip-only):
reading and decoding the JPEG, rasterising the polygons to full-size masks (with boxes and
labels), the flip, and the whole sample; the sample's bytes (image, masks); and, from the
whole sample's rate, how many loader cores keep up with a GPU training --gpu-rates images/s
with that augmentation (the 0-worker rate of each row: one core's).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from _common import SHARED_DATA, HelpFormatter

from instseg.data.coco import CocoInstances
from instseg.data.copy_paste import CopyPaste
from instseg.data.datamodule import CocoDataModule
from instseg.data.transforms import training_transforms


def pipelines(canvas: int) -> dict[str, dict]:
    lsj = dict(scale_jitter={"target_size": [canvas, canvas], "scale_range": [0.1, 2.0]},
               crop_size=[canvas, canvas], hflip_prob=0.5)
    return {
        "flip": dict(transforms=dict(hflip_prob=0.5)),
        "multiscale": dict(transforms=dict(hflip_prob=0.5)),
        "lsj": dict(transforms=lsj),
        "copy_paste": dict(transforms=dict(hflip_prob=0.5), copy_paste=True),
        "lsj+copy_paste": dict(transforms=lsj, copy_paste=True),
        "photometric": dict(transforms=dict(hflip_prob=0.5, photometric={})),
    }


def loader_rate(pipeline: dict, workers: int, args) -> float:
    """Images/s of the training loader over the first --images photos (median of passes)."""
    root = SHARED_DATA / "coco128-seg"
    images, annotations = root / "images/train2017", root / "annotations/instances_train2017.json"
    datamodule = CocoDataModule(
        str(images), str(annotations), str(images), str(annotations), batch_size=args.batch,
        num_workers=workers, train_transforms=training_transforms(**pipeline["transforms"]),
        copy_paste=CopyPaste() if pipeline.get("copy_paste") else None)
    datamodule.setup("fit")
    datamodule.train_set.image_ids = datamodule.train_set.image_ids[:args.images]
    torch.manual_seed(0)
    loader = datamodule.train_dataloader()
    rates = []
    for _ in range(args.repeats):
        iterator = iter(loader)
        first = next(iterator)  # worker start-up and the first batch: not timed
        count, start = 0, time.perf_counter()
        for batch in iterator:
            count += len(batch.images)
        elapsed = time.perf_counter() - start
        rates.append(count / elapsed if elapsed else float("nan"))
        del first
    return statistics.median(rates)


STAGES = ("decoding", "polygons to masks", "flipping", "whole sample")


def stage_ms(args) -> dict[str, float]:
    """Median ms per photo of each stage of a flip-only training sample (main process)."""
    root = SHARED_DATA / "coco128-seg"
    flip = training_transforms(hflip_prob=0.5)
    dataset = CocoInstances(root / "images/train2017",
                            root / "annotations/instances_train2017.json", train=True,
                            transforms=flip)
    times: dict[str, list[float]] = {name: [] for name in STAGES}
    sizes = {"image": [], "masks": []}
    for index in range(min(args.images, len(dataset))):
        image_id = dataset.image_ids[index]
        info = dataset.coco.imgs[image_id]
        start = time.perf_counter()
        image = dataset._read_image(info)
        decoded = time.perf_counter()
        target = dataset._targets(image_id, info, tuple(image.shape[-2:]))
        rasterised = time.perf_counter()
        flip(image, target)
        flipped = time.perf_counter()
        dataset[(0, index)]
        whole = time.perf_counter()
        for name, seconds in zip(times, (decoded - start, rasterised - decoded,
                                         flipped - rasterised, whole - flipped), strict=True):
            times[name].append(seconds * 1e3)
        sizes["image"].append(image.numel())
        sizes["masks"].append(target["masks"].numel())
    stages = {name: statistics.median(ms) for name, ms in times.items()}
    stages |= {f"{name} MB": statistics.mean(b) / 1e6 for name, b in sizes.items()}
    return stages


def print_stages(stages: dict[str, float], rows: dict, args) -> None:
    print(f"\none flip-only sample in the main process (median ms over {args.images} photos):")
    for name in STAGES:
        print(f"  {name:18s}{stages[name]:8.2f} ms")
    print(f"  bytes per sample (uint8): image {stages['image MB']:.2f} MB, masks "
          f"{stages['masks MB']:.2f} MB (mean)")
    if 0 not in args.workers:
        return
    print("loader cores for a GPU training at " + ", ".join(map(str, args.gpu_rates))
          + " images/s (one core's rate: the 0-worker column):")
    for name, by_workers in rows.items():
        cores = ", ".join(str(math.ceil(rate / by_workers[0])) for rate in args.gpu_rates)
        print(f"  {name + ':':17s}{cores}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--canvas", type=int, default=1024)
    parser.add_argument("--gpu-rates", type=int, nargs="+", default=[25, 50, 100])
    args = parser.parse_args()
    rows = {name: {w: loader_rate(p, w, args) for w in args.workers}
            for name, p in pipelines(args.canvas).items()}
    print(f"coco128-seg, {args.images} photos, batch {args.batch}, lsj canvas {args.canvas}, "
          f"torch threads {torch.get_num_threads()}")
    header = "".join(f"  {w} workers img/s  vs flip" for w in args.workers)
    print(f"{'augmentation':16s}{header}")
    for name, by_workers in rows.items():
        cells = "".join(f"  {by_workers[w]:14.1f}  {by_workers[w] / rows['flip'][w]:6.2f}x"
                        for w in args.workers)
        print(f"{name:16s}{cells}")
    print_stages(stage_ms(args), rows, args)


if __name__ == "__main__":
    main()
