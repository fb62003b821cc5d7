"""Deterministic synthetic COCO-format dataset of coloured shapes, the quickstart's default data.

`generate_shapes(root, ...)` writes, under `root`:
    train/000000.png ...             RGB images, `image_size` x `image_size`
    val/000000.png ...
    annotations/instances_train.json COCO instances format: visible masks as compressed RLE,
    annotations/instances_val.json   `bbox` and `area` derived from those masks
    shapes.json                      the generation parameters, to decide whether to regenerate

Objects are painted in order, so later shapes occlude earlier ones; each annotation is the
*visible* part. Instances left with less than `min_visible_fraction` of their pixels are not
annotated (their pixels stay in the image, as an unlabelled occluded object would). The same
parameters always give the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from instseg.structures.masks import encode_mask, mask_area, mask_box

CATEGORIES = ("circle", "rectangle", "triangle", "star")
GENERATOR_VERSION = 1


def generate_shapes(
    root: str | os.PathLike,
    num_train: int = 800,
    num_val: int = 100,
    image_size: int = 160,
    max_objects: int = 5,
    seed: int = 0,
    min_visible_fraction: float = 0.3,
) -> Path:
    """Write the dataset under `root` unless the same parameters are already there."""
    root = Path(root)
    params = dict(
        version=GENERATOR_VERSION, num_train=num_train, num_val=num_val, image_size=image_size,
        max_objects=max_objects, seed=seed, min_visible_fraction=min_visible_fraction,
    )
    stamp = root / "shapes.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent ranks and killed runs never
    # leave a half-written dataset behind.
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    rng = np.random.default_rng(seed)
    for split, count in (("train", num_train), ("val", num_val)):
        _write_split(tmp, split, count, image_size, max_objects, min_visible_fraction, rng)
    (tmp / "shapes.json").write_text(json.dumps(params, indent=1))
    if root.exists():
        shutil.rmtree(root, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first with the same parameters
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _write_split(root, split, count, size, max_objects, min_visible_fraction, rng) -> None:
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        file_name = f"{image_id:06d}.png"
        pixels, instances = _render_image(size, max_objects, min_visible_fraction, rng)
        Image.fromarray(pixels).save(root / split / file_name)
        images.append(dict(id=image_id, file_name=file_name, width=size, height=size))
        for category_id, mask in instances:
            annotations.append(_annotation(len(annotations) + 1, image_id, category_id, mask))
    categories = [dict(id=i, name=n, supercategory="shape") for i, n in enumerate(CATEGORIES, 1)]
    dataset = dict(images=images, annotations=annotations, categories=categories)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    rle = encode_mask(mask)
    return dict(
        id=ann_id, image_id=image_id, category_id=category_id, iscrowd=0,
        segmentation=rle, area=mask_area(rle), bbox=mask_box(rle),
    )


def _render_image(size, max_objects, min_visible_fraction, rng):
    """Return the RGB image and [(category_id, visible uint8 mask)] for its annotated shapes."""
    image = _background(size, rng)
    full_masks, visible_masks, category_ids = [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        category_id = int(rng.integers(1, len(CATEGORIES) + 1))
        mask = _shape_mask(CATEGORIES[category_id - 1], size, rng)
        if mask.sum() < 20:
            continue
        for visible in visible_masks:
            visible &= ~mask  # the new shape occludes everything painted before it
        image = _paint(image, mask, rng)
        full_masks.append(mask)
        visible_masks.append(mask.copy())
        category_ids.append(category_id)
    instances = [
        (cat, visible.astype(np.uint8))
        for cat, full, visible in zip(category_ids, full_masks, visible_masks, strict=True)
        if visible.sum() >= max(20, min_visible_fraction * full.sum())
    ]
    return image, instances


def _background(size, rng) -> np.ndarray:
    """A random two-colour gradient with noise and a few faint stripes."""
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    image = start + (end - start) * t[..., None]
    period = rng.uniform(6, 30)
    phase = (xx * np.cos(angle + 1) + yy * np.sin(angle + 1)) * size / period
    stripes = 12 * np.sin(2 * math.pi * phase)
    image += stripes[..., None] + rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _paint(image: np.ndarray, mask: np.ndarray, rng) -> np.ndarray:
    """Fill `mask` with a random colour, shaded and noisy so colour alone is not the class."""
    colour = rng.uniform(0, 255, 3)
    shade = np.linspace(-25, 25, image.shape[0])[:, None, None] * rng.choice([-1, 1])
    fill = np.clip(colour + shade + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    out = image.copy()
    out[mask] = fill[mask]
    return out


def _shape_mask(name: str, size: int, rng) -> np.ndarray:
    radius = rng.uniform(0.08, 0.28) * size
    cx, cy = rng.uniform(radius * 0.5, size - radius * 0.5, 2)
    rotation = rng.uniform(0, 2 * math.pi)
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if name == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    elif name == "rectangle":
        aspect = rng.uniform(0.45, 1.0)
        half = [(radius, radius * aspect), (-radius, radius * aspect),
                (-radius, -radius * aspect), (radius, -radius * aspect)]
        draw.polygon(_rotate(half, rotation, cx, cy), fill=1)
    elif name == "triangle":
        points = [(radius * math.cos(a), radius * math.sin(a)) for a in (0, 2.094, 4.189)]
        draw.polygon(_rotate(points, rotation, cx, cy), fill=1)
    elif name == "star":
        points = [
            ((radius if k % 2 == 0 else radius * 0.45) * math.cos(k * math.pi / 5),
             (radius if k % 2 == 0 else radius * 0.45) * math.sin(k * math.pi / 5))
            for k in range(10)
        ]
        draw.polygon(_rotate(points, rotation, cx, cy), fill=1)
    else:
        raise ValueError(f"unknown shape {name!r}")
    return np.asarray(canvas, dtype=bool)


def _rotate(points, angle, cx, cy):
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]
