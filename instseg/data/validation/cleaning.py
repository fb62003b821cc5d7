"""One annotation as training uses it: boxes clipped to the image, polygons of fewer than 3
points dropped, a missing area computed; or skipped, with the kind of problem."""

from __future__ import annotations

from instseg.data.validation.problems import short_repr
from instseg.structures.masks import mask_area, to_rle


def clean_annotation(ann: dict, image: dict) -> tuple[dict | None, list[tuple[str, str]]]:
    """(the annotation as training uses it, or None when skipped; [(kind, detail)])."""
    width, height = image["width"], image["height"]
    x, y, w, h = ann["bbox"]
    if w < 1 or h < 1:
        return None, [("degenerate box", f"bbox {short_repr(ann['bbox'])}")]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, width), min(y + h, height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None, [("box outside image", f"bbox {short_repr(ann['bbox'])} in a "
                       f"{width}x{height} image")]
    found = []
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        found.append(("box partly outside image", f"bbox {short_repr(ann['bbox'])} in a "
                      f"{width}x{height} image"))
    segmentation, problem = _clean_segmentation(ann["segmentation"], height, width)
    if segmentation is None:
        return None, [*found, problem]
    if problem:
        found.append(problem)
    area = ann.get("area")
    if area is None:
        area = mask_area(to_rle(segmentation, height, width))
        found.append(("missing area", f"area computed: {area:g}"))
    if not found and segmentation is ann["segmentation"]:
        return ann, found  # the common case: no copy
    cleaned = {**ann, "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": segmentation,
               "area": area}
    return cleaned, found


def _clean_segmentation(segmentation, height: int, width: int):
    """(segmentation to use or None, (kind, detail) or None)."""
    if isinstance(segmentation, dict):  # RLE
        if list(segmentation["size"]) != [height, width]:
            return None, ("mask size mismatch", f"RLE size {segmentation['size']}, image "
                          f"[{height}, {width}]")
        if not segmentation["counts"] or not mask_area(to_rle(segmentation, height, width)):
            return None, ("empty segmentation", "the RLE mask has no pixel")
        return segmentation, None
    if not segmentation:
        return None, ("empty segmentation", "no polygon")
    polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]
    short = [len(p) // 2 for p in segmentation if p not in polygons]
    if not polygons:
        return None, ("short polygons only", f"polygons of {short} points")
    if short:
        return polygons, ("short polygon part", f"dropped polygons of {short} points")
    return segmentation, None
