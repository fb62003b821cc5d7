"""COCO instances json + image folder as a torch Dataset for torchvision's Mask R-CNN.

A sample is `(image, target)`:
    image   tv_tensors.Image, uint8 [3, H, W] RGB as stored (never rotated by EXIF tags)
    target  with annotations: "boxes"  tv_tensors.BoundingBoxes XYXY float32 [N, 4]
                              "masks"  tv_tensors.Mask uint8 [N, H, W] in {0, 1}
                              "labels" int64 [N], contiguous labels 1..K (see CategoryMap)
            always:           "image_id" int, the COCO image id
Crowd regions (`iscrowd=1`) never become targets; they stay in the evaluation ground truth,
which is the annotation file itself. Annotations whose box has no area or whose segmentation
is empty are skipped, counted and logged once when the dataset is built.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from instseg.data.categories import CategoryMap
from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)


def load_coco(annotation_file: str | Path) -> COCO:
    """Load an instances json with pycocotools, with a clear error for missing or bad files."""
    path = Path(annotation_file)
    if not path.is_file():
        raise InstsegError(
            f"annotation file not found: {path} (expected a COCO instances json with "
            "'images', 'annotations' and 'categories')"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco = COCO(str(path))
    except Exception as error:  # json syntax or a missing top-level key
        raise InstsegError(f"{path}: not a readable COCO instances json ({error!r})") from error
    for key in ("images", "annotations", "categories"):
        if key not in coco.dataset:
            raise InstsegError(f"{path}: missing the top-level key {key!r}")
    return coco


class CocoInstances(Dataset):
    """Images of `image_dir` annotated by `annotation_file`.

    `train=True` keeps only images with at least one usable non-crowd annotation and returns
    full targets; `train=False` keeps every image and returns only the image id, since the
    evaluator reads the ground truth from the annotation file.
    """

    def __init__(
        self,
        image_dir: str | Path,
        annotation_file: str | Path,
        train: bool,
        transforms: Callable | None = None,
        coco: COCO | None = None,
        categories: CategoryMap | None = None,
    ) -> None:
        """`coco`: the already loaded `annotation_file`, to share one copy with an evaluator;
        `categories`: the model's label space (default: the json's categories)."""
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        if not self.image_dir.is_dir():
            raise InstsegError(
                f"image directory not found: {self.image_dir} (expected the images named by "
                f"'file_name' in {self.annotation_file})"
            )
        self.coco = coco if coco is not None else load_coco(annotation_file)
        self.categories = categories or CategoryMap.from_coco_categories(
            self.coco.dataset["categories"]
        )
        self.train = train
        self.transforms = transforms
        self.annotations = self._usable_annotations() if train else {}
        ids = sorted(self.coco.imgs)
        self.image_ids = [i for i in ids if self.annotations.get(i)] if train else ids
        if train and len(self.image_ids) < len(ids):
            log.info("%s: %d of %d images have no usable annotation and are not trained on",
                     self.annotation_file, len(ids) - len(self.image_ids), len(ids))

    def _usable_annotations(self) -> dict[int, list[dict]]:
        usable: dict[int, list[dict]] = {}
        skipped: Counter[str] = Counter()
        for ann in self.coco.dataset["annotations"]:
            if ann.get("iscrowd", 0):
                continue
            _, _, w, h = ann["bbox"]
            if w < 1 or h < 1:
                skipped["box narrower or lower than one pixel"] += 1
            elif not ann.get("segmentation"):
                skipped["empty segmentation"] += 1
            else:
                usable.setdefault(ann["image_id"], []).append(ann)
        for reason, count in skipped.items():
            log.warning("%s: skipped %d annotations: %s", self.annotation_file, count, reason)
        return usable

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, key: int | tuple[int, int]):
        """key: an index, or (draw seed, index) from `EpochSampler`: then the transforms'
        random draws come from a generator seeded by both, not from the global RNG, so that
        augmentation does not depend on what else used the RNG (exact resume)."""
        draw_seed, index = key if isinstance(key, tuple) else (None, key)
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        image = self._read_image(info)
        target = {"image_id": image_id}
        if self.train:
            target.update(self._targets(image_id, info))
        if self.transforms is not None:
            with _seeded_rng(draw_seed, index):
                image, target = self.transforms(image, target)
        return image, target

    def _read_image(self, info: dict) -> tv_tensors.Image:
        path = self.image_dir / info["file_name"]
        try:
            # decode_image ignores EXIF orientation unless asked: COCO refers to stored pixels.
            pixels = decode_image(str(path), mode=ImageReadMode.RGB)
        except (RuntimeError, OSError) as error:
            message = f"{path} (image id {info['id']}): cannot read image: {error}"
            raise InstsegError(message) from error
        if tuple(pixels.shape[-2:]) != (info["height"], info["width"]):
            raise InstsegError(
                f"{path} (image id {info['id']}): image is {pixels.shape[-1]}x{pixels.shape[-2]} "
                f"but {self.annotation_file} says {info['width']}x{info['height']}"
            )
        return tv_tensors.Image(pixels)

    def _targets(self, image_id: int, info: dict) -> dict:
        anns = self.annotations[image_id]
        size = (info["height"], info["width"])
        masks = torch.stack([torch.from_numpy(self.coco.annToMask(a)) for a in anns])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        return {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size),
            "masks": tv_tensors.Mask(masks),
            "labels": self.categories.to_labels([a["category_id"] for a in anns]),
        }


@contextmanager
def _seeded_rng(draw_seed: int | None, index: int):
    if draw_seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((draw_seed * 1_000_003 + index) % 2**63)
        yield


def collate(batch):
    """Lists of images and targets, as torchvision detection models take them."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def batch_size(batch) -> int:
    """Images in a collated batch (for Lightning's ThroughputMonitor)."""
    return len(batch[0])
