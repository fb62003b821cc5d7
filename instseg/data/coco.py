"""COCO instances json + image folder as a torch Dataset for torchvision's Mask R-CNN.

A sample is `(image, target)`, or None when its image cannot be used (see below):
    image   tv_tensors.Image, uint8 [3, H, W] RGB as stored (never rotated by EXIF tags)
    target  with annotations: "boxes"  tv_tensors.BoundingBoxes XYXY float32 [N, 4]
                              "masks"  tv_tensors.Mask uint8 [N, H, W] in {0, 1}
                              "labels" int64 [N], contiguous labels 1..K (see CategoryMap)
            always:           "image_id" int, the COCO image id
The json is checked when the dataset is built (`instseg.data.validation`, the cheap part):
errors stop with a message naming the records; skipped annotations and images are counted
and logged once. Crowd regions (`iscrowd=1`) never become targets; they stay in the
evaluation ground truth. An image that turns out unreadable, or not of the json's size, when
read is logged and its sample is None: `collate` drops it and counts it in `Batch.skipped`.
Training images whose longer side exceeds `max_image_side` are downscaled with their
targets (masks are rasterised at the smaller size, so a huge photo cannot exhaust memory).
LVIS-format jsons load as they are (validation's `complete_lvis_records`: file names from
`coco_url`, annotations without `iscrowd`); their extra fields (`neg_category_ids`,
`frequency`, ...) stay in the evaluation ground truth, which `instseg.evaluation.lvis` scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from instseg.data.categories import CategoryMap
from instseg.data.images import UnreadableImage, read_rgb
from instseg.data.validation import (
    FIXED,
    SKIP,
    CheckedAnnotations,
    check_annotations,
    raise_on_errors,
    read_annotation_json,
)
from instseg.structures.masks import decode_mask, to_rle
from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)
MAX_IMAGE_SIDE = 4096


def load_checked(annotation_file: str | Path,
                 image_dir: str | Path | None = None) -> CheckedAnnotations:
    """Read and check an instances json (and that `image_dir` holds its images): errors raise
    InstsegError naming the records, skipped and fixed records are logged once per kind.
    LVIS-format records are completed first
    (`instseg.data.validation.annotations.complete_lvis_records`)."""
    data = read_annotation_json(annotation_file)
    checked = check_annotations(data, annotation_file, image_dir)
    raise_on_errors(checked)
    log_problems(checked)
    return checked


def load_coco(annotation_file: str | Path) -> COCO:
    """pycocotools' COCO of a checked json's evaluation ground truth."""
    return load_checked(annotation_file).coco


def log_problems(checked: CheckedAnnotations, examples: int = 3) -> None:
    """One log line per kind of skipped or fixed record, with a few examples."""
    by_kind: dict[str, list] = {}
    for problem in checked.problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    for kind, found in by_kind.items():
        severity = found[0].severity
        if severity in (SKIP, FIXED):
            shown = "; ".join(p.brief() for p in found[:examples])
            level = logging.WARNING if severity == SKIP else logging.INFO
            log.log(level, "%s: %s %d x %s (e.g. %s)", checked.source,
                    "skipped" if severity == SKIP else "fixed", len(found), kind, shown)


class CocoInstances(Dataset):
    """Images of `image_dir` annotated by `annotation_file`.

    `train=True` keeps only images with at least one usable non-crowd annotation and returns
    full targets; `train=False` keeps every image whose file exists and returns only the image
    id, since the evaluator reads the ground truth from the (checked) annotation file.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        train: bool,
        transforms: Callable | None = None,
        checked: CheckedAnnotations | None = None,
        categories: CategoryMap | None = None,
        max_image_side: int = MAX_IMAGE_SIDE,
        crowd_regions: bool = False,
    ) -> None:
        """`checked`: the already checked `annotation_file` (with `image_dir`), to share one
        copy with an evaluator; `categories`: the model's label space (default: the json's);
        `crowd_regions`: training targets also carry the image's crowd regions (iscrowd=1)
        as "crowd_masks" uint8 [K, H, W], moved by the augmentations with the image (the
        model does not train on them; instseg-browse draws them)."""
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.image_dir.is_dir():
            raise InstsegError(
                f"image directory not found: {self.image_dir} (expected the images named by "
                f"'file_name' in {self.annotation_file})"
            )
        self.checked = checked or load_checked(annotation_file, image_dir)
        self.coco = self.checked.coco
        self.categories = categories or CategoryMap.from_coco_categories(
            self.checked.categories
        )
        self.train = train
        self.transforms = transforms
        self.max_image_side = max_image_side
        self.crowd_regions = crowd_regions
        self.annotations = self.checked.train_annotations if train else {}
        missing = self.checked.skipped_images()
        ids = sorted(i for i in self.checked.images if i not in missing)
        self.image_ids = [i for i in ids if i in self.annotations] if train else ids

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]):
        """key: an index, or (draw seed, index) from `EpochSampler`: then the transforms'
        random draws come from a generator seeded by both, not from the global RNG, so that
        augmentation does not depend on what else used the RNG (exact resume)."""
        draw_seed, index = key if isinstance(key, tuple) else (None, key)
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        try:
            image = self._read_image(info)
        except UnreadableImage as error:
            log.warning("skipped image: %s", error)
            return None
        target = {"image_id": image_id}
        if draw_seed is not None:  # batch-level augmentation (copy-paste) seeds from it
            target["sample_seed"] = _sample_seed(draw_seed, index)
        if self.train:
            image = self._downscaled(image)
            target.update(self._targets(image_id, info, tuple(image.shape[-2:])))
        if self.transforms is not None:
            with _seeded_rng(draw_seed, index):
                image, target = self.transforms(image, target)
        return image, target

    def _read_image(self, info: dict) -> tv_tensors.Image:
        path = self.image_dir / info["file_name"]
        pixels = read_rgb(path)
        if tuple(pixels.shape[-2:]) != (info["height"], info["width"]):
            raise UnreadableImage(
                f"{path} (image id {info['id']}): image is {pixels.shape[-1]}x{pixels.shape[-2]} "
                f"but {self.annotation_file} says {info['width']}x{info['height']}"
            )
        return tv_tensors.Image(pixels)

    def _downscaled(self, image: tv_tensors.Image) -> tv_tensors.Image:
        height, width = image.shape[-2:]
        scale = self.max_image_side / max(height, width)
        if scale >= 1:
            return image
        size = [max(1, round(height * scale)), max(1, round(width * scale))]
        return tv_tensors.Image(F.resize(image.as_subclass(torch.Tensor), size, antialias=True))

    def _targets(self, image_id: int, info: dict, size: tuple[int, int]) -> dict:
        """Boxes, masks and labels of the image's usable annotations at `size` (the stored
        size, or smaller when the image was downscaled)."""
        anns = self.annotations[image_id]
        scale_y, scale_x = size[0] / info["height"], size[1] / info["width"]
        masks = torch.stack([_rasterise(a, info, size, scale_x, scale_y) for a in anns])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        boxes *= torch.tensor([scale_x, scale_y, scale_x, scale_y])
        targets = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
            "masks": tv_tensors.Mask(masks),
            "labels": self.categories.to_labels([a["category_id"] for a in anns]),
        }
        if self.crowd_regions:
            crowd = [a for a in self.coco.imgToAnns.get(image_id, []) if a.get("iscrowd", 0)]
            regions = [_rasterise(a, info, size, scale_x, scale_y) for a in crowd]
            targets["crowd_masks"] = tv_tensors.Mask(
                torch.stack(regions) if regions else torch.zeros((0, *size), dtype=torch.uint8))
        return targets


def _rasterise(ann: dict, info: dict, size: tuple[int, int], scale_x: float,
               scale_y: float) -> torch.Tensor:
    """uint8 [H, W] mask of a cleaned annotation at `size`; polygons are scaled before
    rasterising (no full-size mask of a downscaled image is ever made)."""
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        scaled = [[v * (scale_x if i % 2 == 0 else scale_y) for i, v in enumerate(polygon)]
                  for polygon in segmentation]
        return decode_mask(to_rle(scaled, *size), torch.uint8)
    mask = decode_mask(to_rle(segmentation, info["height"], info["width"]), torch.uint8)
    if tuple(mask.shape) != size:
        mask = F.resize(mask[None], list(size), interpolation=F.InterpolationMode.NEAREST)[0]
    return mask


@contextmanager
def _seeded_rng(draw_seed: int | None, index: int):
    if draw_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_sample_seed(draw_seed, index))
        yield


def _sample_seed(draw_seed: int, index: int) -> int:
    return (draw_seed * 1_000_003 + index) % 2**63


class Batch(NamedTuple):
    """A collated batch: lists of images and targets, as torchvision detection models take
    them, and how many samples of it were dropped (unreadable images)."""

    images: list
    targets: list
    skipped: int = 0


def collate(samples, copy_paste: Callable | None = None) -> Batch:
    """The readable samples as a Batch; `copy_paste(images, targets)` mixes them if given
    (instseg.data.copy_paste.CopyPaste, training only)."""
    kept = [sample for sample in samples if sample is not None]
    images = [image for image, _ in kept]
    targets = [target for _, target in kept]
    if copy_paste is not None:
        images, targets = copy_paste(images, targets)
    return Batch(images, targets, len(samples) - len(kept))


def batch_size(batch: Batch) -> int:
    """Images in a collated batch (for Lightning's ThroughputMonitor)."""
    return len(batch.images)
