"""`instseg-browse`: look at a dataset's ground truth, and at predictions next to
it, as overlay PNGs (conf/browse.yaml).

    instseg-browse annotations=JSON images=DIR [ids=[9,25]] [sample=16] [seed=0]
        [predictions=RESULTS_JSON] [score_threshold=0.5] [tensorboard=true] [output_dir=DIR]
    instseg-browse data=<config> [data.root=...] [split=val] ...

Contract:
    choose_images(coco, ids, sample, seed) -> image ids: `ids` in the order given (InstsegError
        naming every id the json does not have), else a seeded random `sample` of the json's
        images (None: all of them), sorted by id.
    read_predictions(path) -> {image_id: [record]}: a COCO results json (a list of records with
        image_id, category_id, score, segmentation as RLE or polygons, bbox [x, y, w, h]
        optional), as evaluate.py writes coco_instances_results.json.
    render_ground_truth(coco, image_dir, image_ids, output_dir, predictions=None, ...)
        -> the PNGs written, one per image, `<image id>_<file stem>.png`: the image with its
        ground truth (category-coloured masks, boxes and class names); with `predictions`, the
        ground truth (left) and the predictions scoring >= score_threshold (right, with
        scores, drawn by instseg.inference.render.draw_detections) side by side, twice the width.
        Crowd regions (iscrowd=1) are drawn hatched (diagonal stripes in their category's
        colour) with a thin box labelled "<name> (crowd)", so that they are not mistaken for
        instances. Images that cannot be read, or whose size is not the json's, are logged and
        skipped (`skipped`, when given a dict, gets {image id: reason}).
    render_augmented(dataset, image_ids, output_dir, seed, copy_paste=None, alpha=0.5)
        -> the PNGs written, `<image id>_<file stem>_augmented.png`: each training image as
        the training pipeline gives it (`dataset`: a CocoInstances with the data config's
        train transforms and crowd_regions=True; each sample as epoch 0 of a run seeded `seed`
        augments it; copy_paste, if given, applied to the images as one batch), with
        its targets drawn (masks, boxes, class names; crowd regions hatched).
    write_tensorboard(pngs, log_dir) -> the event file: every PNG as an image, tag
        "browse/<png stem>".
The shim writes into output_dir (default: <run dir>/browse) and prints a table of the images.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image
from pycocotools.coco import COCO
from rich.console import Console
from rich.table import Table
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from instseg.data.coco import CocoInstances, collate, load_checked
from instseg.data.images import UnreadableImage, read_rgb
from instseg.data.samplers import EpochSampler
from instseg.inference.render import category_color, draw_detections, label_font
from instseg.structures.detections import Detections
from instseg.tasks.check import dataset_split
from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)

HATCH_PERIOD = 8  # pixels between crowd stripes


# ------------------------------------------------------------------------------ inputs
def choose_images(coco: COCO, ids: Iterable[int] | int | None = None, sample: int | None = 16,
                  seed: int = 0) -> list[int]:
    """`ids` if given (all known), else a random `sample` (None: every image), sorted."""
    known = sorted(coco.imgs)
    if ids is not None:
        ids = [int(ids)] if isinstance(ids, int | str) else [int(i) for i in ids]
        unknown = [i for i in ids if i not in coco.imgs]
        if unknown:
            raise InstsegError(f"unknown image id(s) {unknown}: not in the json's 'images' "
                               f"({len(known)} images, ids {known[0]}..{known[-1]})"
                               if known else f"unknown image id(s) {unknown}: no images")
        return list(dict.fromkeys(ids))  # in the order asked, once each
    if sample is None or sample >= len(known):
        return known
    return sorted(random.Random(seed).sample(known, sample))


def read_predictions(path: str | Path) -> dict[int, list[dict]]:
    """A COCO results json grouped by image id; InstsegError naming a malformed record."""
    expected = "a COCO results json, as evaluate.py writes coco_instances_results.json"
    if not Path(path).is_file():
        raise InstsegError(f"predictions file not found: {path} (expected {expected})")
    try:
        records = json.loads(Path(path).read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InstsegError(f"{path}: unreadable json ({error}); expected {expected}") from error
    if not isinstance(records, list):
        raise InstsegError(f"{path}: not a list of records; expected {expected}")
    grouped: dict[int, list[dict]] = {}
    for i, record in enumerate(records):
        missing = [key for key in ("image_id", "category_id", "score", "segmentation")
                   if not isinstance(record, dict) or key not in record]
        if missing:
            raise InstsegError(f"{path}: record [{i}] has no {', '.join(missing)} (needed to "
                               "draw a prediction)")
        grouped.setdefault(int(record["image_id"]), []).append(record)
    return grouped


# ---------------------------------------------------------------------------- drawing
def draw_ground_truth(image: torch.Tensor, annotations: list[dict], coco: COCO,
                      alpha: float = 0.5) -> torch.Tensor:
    """uint8 [3, H, W]: a copy of `image` with the annotations (see the module docstring)."""
    height, width = image.shape[-2:]
    regular = [a for a in annotations if not a.get("iscrowd", 0)]
    crowd = [a for a in annotations if a.get("iscrowd", 0)]
    overlay = image.clone()
    if regular:
        overlay = draw_segmentation_masks(overlay, _masks(coco, regular), alpha=alpha,
                                          colors=_colors(regular))
    if crowd:
        hatched = _masks(coco, crowd) & _hatch(height, width)
        overlay = draw_segmentation_masks(overlay, hatched, alpha=0.8, colors=_colors(crowd))
    for group, suffix, line in ((regular, "", 2), (crowd, " (crowd)", 1)):
        if group:
            overlay = _draw_boxes(overlay, group, coco, suffix, line)
    return overlay


def _masks(coco: COCO, annotations: list[dict]) -> torch.Tensor:
    return torch.from_numpy(np.stack([coco.annToMask(a) for a in annotations])).bool()


def _colors(annotations: list[dict]) -> list[tuple[int, int, int]]:
    return [category_color(a["category_id"]) for a in annotations]


def _hatch(height: int, width: int) -> torch.Tensor:
    """Diagonal stripes: True on half of every HATCH_PERIOD pixels along x + y."""
    diagonal = torch.arange(height)[:, None] + torch.arange(width)[None, :]
    return (diagonal % HATCH_PERIOD) < HATCH_PERIOD // 2


def _draw_boxes(image: torch.Tensor, annotations: list[dict], coco: COCO, suffix: str,
                line: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    # the json's boxes are not clipped (only training's copies are)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    labels = [coco.cats[a["category_id"]]["name"] + suffix for a in annotations]
    font = label_font()  # render.py's label font, so that both panels read alike
    return draw_bounding_boxes(image, boxes, labels=labels, colors=_colors(annotations),
                               width=line, font=font,
                               font_size=max(12, height // 45) if font else None)


def prediction_detections(records: list[dict], coco: COCO, height: int, width: int,
                          score_threshold: float) -> Detections:
    """The records scoring >= score_threshold as `Detections`, best first (masks decoded at
    H x W); records whose RLE is of another size than the image are logged and left out."""
    kept = []
    for record in sorted(records, key=lambda r: r["score"], reverse=True):
        if record["score"] < score_threshold:
            continue
        segmentation = record["segmentation"]  # polygons are drawn at the image's size
        if isinstance(segmentation, dict) and list(segmentation["size"]) != [height, width]:
            log.warning("image %s: a prediction's mask is %s, the image %dx%d: not drawn",
                        record["image_id"], segmentation["size"], height, width)
            continue
        kept.append(record)
    names = [coco.cats[c]["name"] if c in coco.cats else f"category {c}"
             for c in (int(r["category_id"]) for r in kept)]
    return Detections.from_records(kept, height, width, class_names=names)


# ---------------------------------------------------------------------------- outputs
def render_ground_truth(coco: COCO, image_dir: str | Path, image_ids: Iterable[int],
                        output_dir: str | Path, predictions: dict[int, list[dict]] | None = None,
                        score_threshold: float = 0.5, alpha: float = 0.5,
                        skipped: dict[int, str] | None = None) -> list[Path]:
    """One overlay PNG per readable image (see the module docstring); the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in image_ids:
        info = coco.imgs[image_id]
        try:
            pixels = _read_as_in_json(Path(image_dir) / info["file_name"], info)
        except UnreadableImage as error:
            log.warning("image %d skipped: %s", image_id, error)
            if skipped is not None:
                skipped[image_id] = str(error)
            continue
        panel = draw_ground_truth(pixels, coco.imgToAnns.get(image_id, []), coco, alpha)
        if predictions is not None:
            detections = prediction_detections(predictions.get(image_id, []), coco,
                                               info["height"], info["width"], score_threshold)
            panel = torch.cat([panel, draw_detections(pixels, detections, alpha)], dim=2)
        path = output_dir / f"{image_id}_{Path(info['file_name']).stem}.png"
        Image.fromarray(panel.permute(1, 2, 0).numpy()).save(path)
        written.append(path)
    return written


def _read_as_in_json(path: Path, info: dict) -> torch.Tensor:
    pixels = read_rgb(path)
    height, width = pixels.shape[-2:]
    if (width, height) != (info["width"], info["height"]):  # masks would not fit
        raise UnreadableImage(f"{path}: image is {width}x{height}, the json says "
                              f"{info['width']}x{info['height']}")
    return pixels


def write_tensorboard(pngs: Iterable[Path], log_dir: str | Path) -> Path:
    """Every PNG as one TensorBoard image (tag "browse/<stem>"); returns the event file."""
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked

    before = set(Path(log_dir).glob("events.out.tfevents.*"))
    writer = SummaryWriter(log_dir=str(log_dir))
    for png in pngs:
        writer.add_image(f"browse/{Path(png).stem}", read_rgb(png), dataformats="CHW")
    writer.close()
    [event_file] = set(Path(log_dir).glob("events.out.tfevents.*")) - before
    return event_file


def render_augmented(dataset: CocoInstances, image_ids: list[int], output_dir: str | Path,
                     seed: int, copy_paste: Callable | None = None,
                     alpha: float = 0.5) -> list[Path]:
    """One PNG per training image of `image_ids` as augmented (see the module docstring)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    indices = [dataset.image_ids.index(i) for i in image_ids if i in dataset.image_ids]
    # The draw seed of epoch 0 of a run seeded `seed` (EpochSampler's): its augmentation.
    draw_seed, _ = next(iter(EpochSampler(1, seed)))
    batch = collate([dataset[(draw_seed, index)] for index in indices], copy_paste=copy_paste)
    names = dict(zip(dataset.categories.category_ids, dataset.categories.names, strict=True))
    written = []
    for image, target in zip(batch.images, batch.targets, strict=True):
        pixels = (image * 255).round().to(torch.uint8)
        category_ids = dataset.categories.to_category_ids(target["labels"])
        detections = Detections(target["boxes"], torch.ones(len(category_ids)),
                                torch.tensor(category_ids, dtype=torch.int64),
                                class_names=[names[c] for c in category_ids],
                                masks=target["masks"].bool())
        panel = draw_detections(pixels, detections, alpha, scores=False)
        crowd = target.get("crowd_masks")
        if crowd is not None and len(crowd):
            panel = draw_segmentation_masks(panel, crowd.bool() & _hatch(*pixels.shape[-2:]),
                                            alpha=0.8, colors="white")
        info = dataset.coco.imgs[target["image_id"]]
        path = output_dir / f"{target['image_id']}_{Path(info['file_name']).stem}_augmented.png"
        Image.fromarray(panel.permute(1, 2, 0).numpy()).save(path)
        written.append(path)
    return written


# -------------------------------------------------------------------------------- shim
def browse(cfg: DictConfig) -> list[Path]:
    """The command: choose, render, optionally log to TensorBoard, print a table."""
    if cfg.get("augmented"):
        return _browse_augmented(cfg)
    annotation_file, image_dir = dataset_split(cfg)
    coco = load_checked(annotation_file, image_dir).coco
    image_ids = choose_images(coco, cfg.ids, cfg.sample, cfg.seed)
    predictions = read_predictions(cfg.predictions) if cfg.predictions else None
    output_dir = Path(cfg.output_dir)
    skipped: dict[int, str] = {}
    pngs = render_ground_truth(coco, image_dir, image_ids, output_dir, predictions,
                               cfg.score_threshold, cfg.alpha, skipped)
    console = Console()
    strangers = sorted(set(predictions or {}) - set(coco.imgs))
    if strangers:  # e.g. results of another split: nothing of theirs can be drawn
        console.print(f"[yellow]{len(strangers)} image id(s) of {cfg.predictions} are not in "
                      f"{annotation_file} (e.g. {strangers[:5]}): not drawn")
    console.print(_image_table(coco, image_ids, pngs, predictions, cfg.score_threshold,
                               skipped))
    if cfg.tensorboard:
        event_file = write_tensorboard(pngs, output_dir)
        console.print(f"TensorBoard: tensorboard --logdir {output_dir} ({event_file.name})")
    console.print(f"{len(pngs)} of {len(image_ids)} images rendered into {output_dir}"
                  + (f"; {len(skipped)} skipped (unreadable)" if skipped else ""))
    return pngs


def _browse_augmented(cfg: DictConfig) -> list[Path]:
    """augmented=true: the training split of data=<config> through its augmentations."""
    if cfg.get("data") is None or "_target_" not in cfg.data:
        raise InstsegError("augmented=true needs data=<config> (and augment=<option>): the "
                           "augmentations are the data config's training transforms")
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    paths = datamodule.paths
    dataset = CocoInstances(paths["train_images"], paths["train_annotations"], train=True,
                            transforms=datamodule.train_transforms, crowd_regions=True,
                            max_image_side=datamodule.max_image_side)
    image_ids = choose_images(dataset.coco, cfg.ids, cfg.sample, cfg.seed)
    pngs = render_augmented(dataset, image_ids, cfg.output_dir, cfg.seed,
                            datamodule.copy_paste, cfg.alpha)
    console = Console()
    left_out = len(image_ids) - len(pngs)
    console.print(f"{len(pngs)} augmented training images rendered into {cfg.output_dir}"
                  + (f"; {left_out} chosen images are not trained on (no usable annotation)"
                     if left_out else ""))
    if cfg.tensorboard:
        event_file = write_tensorboard(pngs, cfg.output_dir)
        console.print(f"TensorBoard: tensorboard --logdir {cfg.output_dir} ({event_file.name})")
    return pngs


def _image_table(coco: COCO, image_ids: list[int], pngs: list[Path],
                 predictions: dict[int, list[dict]] | None, score_threshold: float,
                 skipped: dict[int, str]) -> Table:
    table = Table(title_justify="left")
    columns = ["image id", "file", "instances", "crowd"]
    if predictions is not None:
        columns.append(f"predictions >= {score_threshold:g}")
    for column in [*columns, "written"]:
        table.add_column(column, overflow="fold")
    by_id = {int(p.name.split("_", 1)[0]): p for p in pngs}
    for image_id in image_ids:
        annotations = coco.imgToAnns.get(image_id, [])
        crowd = sum(1 for a in annotations if a.get("iscrowd", 0))
        row = [str(image_id), coco.imgs[image_id]["file_name"], str(len(annotations) - crowd),
               str(crowd)]
        if predictions is not None:
            row.append(str(sum(r["score"] >= score_threshold
                               for r in predictions.get(image_id, []))))
        written = by_id.get(image_id)
        row.append(written.name if written else f"skipped: {skipped.get(image_id, '?')}")
        table.add_row(*row)
    return table
