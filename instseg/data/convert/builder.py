"""What every converter shares: the builder that numbers images and instances into a COCO
instances json, the reports of bad records, and the readers and instance makers that more
than one format uses. The contract of the json is the package docstring's "Out"."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from instseg.data.images import UnreadableImage, read_header
from instseg.structures.masks import mask_area, mask_box, to_rle
from instseg.utils.errors import InstsegError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Lines of a names file that are not classes (labelme's and VOC label lists start with them).
NOT_CLASSES = {"__ignore__", "_background_", "__background__", "background"}
DECIMALS = 2  # polygon coordinates: 0.01 px, as in COCO's own files


# ------------------------------------------------------------------------------- reports
@dataclass(frozen=True)
class Reported:
    """One bad record: the file (and line or shape), what is wrong, what was done."""

    source: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: {self.kind}: {self.detail}"


@dataclass
class Converted:
    """The COCO instances json and every record reported while converting."""

    dataset: dict
    warnings: list[Reported]
    ignore_regions: int = 0  # labelme `__ignore__` regions (each: one iscrowd per category)

    def summary(self) -> str:
        """One line: images, instances (and ignore regions), categories, problems by kind."""
        counts = Counter(w.kind for w in self.warnings)
        found = ", ".join(f"{n} x {kind}" for kind, n in counts.most_common()) or "none"
        d = self.dataset
        instances = sum(not a["iscrowd"] for a in d["annotations"])
        crowd = len(d["annotations"]) - instances
        ignored = (f", {self.ignore_regions} ignore regions ({crowd} iscrowd annotations: one "
                   "per category)") if self.ignore_regions else ""
        return (f"{len(d['images'])} images, {instances} instances{ignored}, "
                f"{len(d['categories'])} categories; {len(self.warnings)} problems reported: "
                f"{found}")


class Skip(Exception):
    """A bad record: the caller reports it with its file and goes on without it."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail = kind, detail


# ------------------------------------------------------------------------------- builder
@dataclass
class Builder:
    """Images and instances collected in any order; `result` numbers them.

    An instance is a dict {category, segmentation, area, bbox} (and iscrowd 1 for an ignore
    region), as `instance` makes it; `images` maps a file name to (width, height, instances).
    """

    source_format: str
    warnings: list[Reported] = field(default_factory=list)
    images: dict[str, tuple[int, int, list[dict]]] = field(default_factory=dict)

    def report(self, source, kind: str, detail: str) -> None:
        self.warnings.append(Reported(str(source), kind, detail))

    def add_image(self, source, file_name: str, width: int, height: int) -> list[dict] | None:
        """The image's (empty) instance list; None when another record claimed the file."""
        if file_name in self.images:
            self.report(source, "duplicate image", f"{file_name} was converted from an "
                        "earlier file: skipped")
            return None
        self.images[file_name] = (width, height, [])
        return self.images[file_name][2]

    def result(self, categories: Sequence[tuple[int, str]]) -> Converted:
        """The json: images and annotations numbered in sorted file name order."""
        ids = {name: category_id for category_id, name in categories}
        images, annotations, regions = [], [], 0
        for image_id, file_name in enumerate(sorted(self.images), start=1):
            width, height, instances = self.images[file_name]
            images.append({"id": image_id, "file_name": file_name, "width": width,
                           "height": height})
            regions += self._count_regions(file_name, instances, ids)
            for instance in instances:
                annotations.extend(_annotations(instance, image_id, ids, len(annotations) + 1))
        dataset = {
            "info": {"description": f"converted from {self.source_format} by "
                                    "instseg.data.convert"},
            "images": images, "annotations": annotations,
            "categories": [{"id": i, "name": name} for i, name in categories],
        }
        return Converted(dataset, self.warnings, regions)

    def _count_regions(self, file_name: str, instances: list[dict], ids: dict) -> int:
        """The image's ignore regions that become annotations; without any category they
        cannot (COCO needs a category_id): reported."""
        regions = sum(1 for instance in instances if instance.get("iscrowd"))
        if regions and not ids:
            self.report(file_name, "ignore region dropped", f"{regions} ignore regions: no "
                        "category to give them to (COCO needs a category_id): skipped")
            return 0
        return regions


def _annotations(instance: dict, image_id: int, ids: dict[str, int],
                 first_id: int) -> list[dict]:
    """The instance's annotations, numbered from `first_id`: one, or an ignore region's one
    per category."""
    return [{"id": annotation_id, "image_id": image_id, "category_id": category_id,
             "segmentation": instance["segmentation"], "area": instance["area"],
             "bbox": instance["bbox"], "iscrowd": instance.get("iscrowd", 0)}
            for annotation_id, category_id in enumerate(_category_ids(instance, ids),
                                                        start=first_id)]


def _category_ids(instance: dict, ids: dict[str, int]) -> list[int]:
    """An instance's category id; an ignore region's: every category's (see the package
    docstring: pycocotools lets a crowd region ignore detections of its category only)."""
    return list(ids.values()) if instance.get("iscrowd") else [ids[instance["category"]]]


def categories(names: list[str] | None, builder: Builder,
               ids: list[int] | None = None) -> list[tuple[int, str]]:
    """(category id, name) pairs: `names` (default the labels seen, sorted) with `ids`
    (default 1..K)."""
    if names is None:  # the labels seen, sorted (an ignore region's label is no class)
        names = sorted({i["category"] for _, _, instances in builder.images.values()
                        for i in instances if not i.get("iscrowd")})
    return list(zip(ids or range(1, len(names) + 1), names, strict=True))


def write_json(dataset: dict, path) -> None:
    """The dataset as json at `path` (its folder made); InstsegError when it cannot be."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataset))
    except OSError as error:
        raise InstsegError(f"cannot write {path}: {error}") from error


# ------------------------------------------------------------------------------- inputs
def existing_folder(path, what: str) -> Path:
    """`path` as a Path; InstsegError when it is no folder."""
    path = Path(path)
    if not path.is_dir():
        raise InstsegError(f"{what} folder not found: {path}")
    return path


def read_names(path, drop: set[str] = frozenset()) -> list[str]:
    """Class names, one per line (blank lines at the end and names in `drop` left out), or
    the `names` list / {index: name} mapping of a yaml file (an Ultralytics data yaml)."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"names file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        names = (_yaml_names(text, path) if path.suffix in (".yaml", ".yml")
                 else [line.strip() for line in text.rstrip().splitlines()])
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InstsegError(f"{path}: cannot read the names ({error})") from error
    names = [name for name in names if name not in drop]
    if not names or not all(names):
        raise InstsegError(f"{path}: expected one class name per line, no blank lines")
    if len(set(names)) < len(names):
        repeated = sorted(n for n, k in Counter(names).items() if k > 1)
        raise InstsegError(f"{path}: class names repeated: {', '.join(repeated)}")
    return names


def _yaml_names(text: str, path: Path) -> list[str]:
    names = yaml.safe_load(text)
    names = names.get("names") if isinstance(names, dict) else names
    if isinstance(names, dict):  # {0: person, 1: bicycle, ...}
        if sorted(names) != list(range(len(names))):
            raise InstsegError(f"{path}: 'names' keys must be the class indices 0..K-1")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise InstsegError(f"{path}: expected a list of names or a 'names' mapping")
    return [str(name).strip() for name in names]


def given_names(value, drop: set[str] = frozenset()) -> list[str] | None:
    """A names file's names, or the names given as a list (library use); `drop` left out;
    None when none are given."""
    if value is None or isinstance(value, list | tuple):
        return None if value is None else [name for name in value if name not in drop]
    return read_names(value, drop)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the stored pixels; Skip when unreadable or EXIF-rotated (labelme
    and YOLO tools label the rotated view, instseg reads the stored pixels)."""
    try:
        header = read_header(path)
    except UnreadableImage as error:
        raise Skip("unreadable image", f"{error}: skipped") from error
    if header.orientation != 1:
        raise Skip("exif orientation", f"EXIF orientation {header.orientation}: its labels "
                   "refer to the rotated view, not the stored pixels: skipped")
    return header.width, header.height


def finite_points(value, source: str) -> np.ndarray:
    """[n, 2] float64 finite points; Skip otherwise."""
    try:
        points = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise Skip("bad points", f"{source}: not a list of [x, y] numbers: skipped") from error
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise Skip("bad points", f"{source}: not a list of finite [x, y] numbers: skipped")
    return points


# ------------------------------------------------------------------------------ instances
def polygon_instance(category: str, polygons: list[np.ndarray], width: int,
                     height: int) -> dict:
    """An instance of rounded polygons; area and bbox of their mask; Skip when it is empty."""
    segmentation = rounded(polygons)
    return instance(category, segmentation, to_rle(segmentation, height, width))


def rounded(polygons: list[np.ndarray]) -> list[list[float]]:
    """COCO polygons [[x1, y1, ...], ...] rounded to DECIMALS."""
    return [np.round(p, DECIMALS).ravel().tolist() for p in polygons]


def instance(category: str, segmentation, rle: dict) -> dict:
    """An instance: its segmentation as given, area and bbox of `rle` (its mask); Skip when
    the mask is empty."""
    area = mask_area(rle)
    if area == 0:
        raise Skip("no pixels", f"{category!r} instance covers no pixel of the image: skipped")
    return {"category": category, "segmentation": segmentation, "area": area,
            "bbox": mask_box(rle)}
