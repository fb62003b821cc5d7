"""Overlays of instances: coloured masks, boxes, class names and scores (torchvision's
`draw_segmentation_masks` and `draw_bounding_boxes`). Colours are fixed per category, so a
class keeps its colour across images and video frames."""

from __future__ import annotations

import colorsys
from functools import cache
from pathlib import Path

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from instseg.structures.detections import Detections


def draw_detections(image: torch.Tensor, detections: Detections, alpha: float = 0.5,
                    scores: bool = True) -> torch.Tensor:
    """uint8 [3, H, W] image with the detections (masks of H x W, if any) drawn on a copy;
    `scores`: captions with the score (False for ground truth)."""
    if len(detections) == 0:
        return image.clone()
    colors = [category_color(c) for c in detections.category_ids.tolist()]
    overlay = image
    if detections.has_masks:
        overlay = draw_segmentation_masks(image, detections.masks, alpha=alpha, colors=colors)
    font = label_font()
    return draw_bounding_boxes(
        overlay, detections.boxes, labels=detections.captions(scores), colors=colors, width=2,
        font=font, font_size=max(12, image.shape[-2] // 45) if font else None,
    )


def category_color(category_id: int) -> tuple[int, int, int]:
    """A saturated colour per category id (golden-ratio hues: neighbours differ)."""
    hue = (category_id * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(red * 255), int(green * 255), int(blue * 255)


@cache
def label_font() -> str | None:
    """A TrueType font for readable labels (matplotlib ships DejaVu Sans); None: torchvision's
    small default font."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return str(path) if path.is_file() else None
