"""The decoding checks: every image's header and pixels against its json record."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from instseg.data.images import UnreadableImage, read_header, read_rgb
from instseg.data.validation.problems import CheckedAnnotations, Problem


def check_images(checked: CheckedAnnotations, image_dir: str | Path, max_image_side: int,
                 progress: Callable[[Iterable], Iterable] = iter) -> list[Problem]:
    """Header and full decode of every image of `checked` that exists."""
    problems = []
    missing = checked.skipped_images()
    for image_id, image in progress(list(checked.images.items())):
        if image_id not in missing:
            problems.extend(_one_image(Path(image_dir) / image["file_name"], image,
                                       max_image_side))
    return problems


def _one_image(path: Path, image: dict, max_image_side: int) -> list[Problem]:
    image_id, src = image["id"], str(path)
    try:
        header = read_header(path)
        pixels = read_rgb(path)
    except UnreadableImage as error:
        return [Problem("unreadable image", src, str(error).removeprefix(f"{path}: "), image_id)]
    problems = []
    if header.mode != "RGB":
        problems.append(Problem("converted colour", src, f"mode {header.mode}", image_id))
    if header.orientation != 1:
        problems.append(Problem("exif orientation", src, f"EXIF orientation {header.orientation}"
                                " is ignored", image_id))
    height, width = pixels.shape[-2:]
    if (width, height) != (image["width"], image["height"]):
        hint = (" (swapped: was it labelled on an EXIF-rotated view?)"
                if (height, width) == (image["width"], image["height"]) else "")
        problems.append(Problem("size mismatch", src, f"image is {width}x{height}, the json says "
                                f"{image['width']}x{image['height']}{hint}", image_id))
    elif max(width, height) > max_image_side:
        problems.append(Problem("large image", src, f"{width}x{height}, longer side over "
                                f"{max_image_side}", image_id))
    return problems
