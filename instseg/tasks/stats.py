"""`instseg-stats`: what is in a dataset, in numbers and plots (conf/stats.yaml).

    instseg-stats annotations=JSON [images=DIR] [output_dir=DIR]
    instseg-stats data=<config> [data.root=...] [split=val]

Contract:
    dataset_statistics(coco, image_sizes=None) -> a json-ready dict:
        images, annotations (instances: iscrowd=0), crowd_regions (iscrowd=1, counted apart
        from the instances everywhere), categories (listed), categories_used (with instances);
        classes: per category with instances or crowd regions, sorted by instances: id, name,
            instances, share (of all instances), images (containing one), crowd, and small /
            medium / large instances;
        unused_categories: names of the listed categories without any;
        instances_per_image: min, median, mean, max, histogram {count: images},
            images_without_instances (their ids);
        object_sizes: small / medium / large instances and crowd regions, by the json's `area`
            (COCO's: the mask's pixels, what evaluation's area ranges use): small < 32^2,
            medium < 96^2, large the rest (pycocotools' ranges are closed, so an area of
            exactly 32^2 or 96^2 counts in both neighbours there; here in the larger);
        image_sizes: distinct [{width, height, images}] (most common first), width / height /
            aspect_ratio (width / height) min, median, max, and landscape / portrait / square
            image counts. From the json's width and height, or from `image_sizes`
            ({image id: (width, height)}, e.g. read_image_sizes's) where given.
    read_image_sizes(coco, image_dir) -> ({image id: (width, height)} of the files' headers,
        {image id: problem} for missing / unreadable files and sizes other than the json's).
    plot_statistics(stats, output_dir) -> class_counts.png, instances_per_image.png,
        object_sizes.png, image_sizes.png (matplotlib, Agg backend).
The shim reads and checks the json (errors stop, as in training: skipped annotations are not
counted; a missing area is computed from the mask), prints rich tables and writes stats.json
and the plots into output_dir (default: the run directory).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import matplotlib
from omegaconf import DictConfig
from pycocotools.coco import COCO
from rich.console import Console
from rich.table import Table

from instseg.data.coco import load_checked
from instseg.data.images import UnreadableImage, read_header
from instseg.tasks.check import dataset_split

matplotlib.use("Agg")  # headless: plots go to files

import matplotlib.pyplot as plt  # noqa: E402

SMALL_AREA, MEDIUM_AREA = 32**2, 96**2  # COCO's area ranges
SIZE_CLASSES = ("small", "medium", "large")


# --------------------------------------------------------------------------- numbers
def size_class(area: float) -> str:
    return "small" if area < SMALL_AREA else "medium" if area < MEDIUM_AREA else "large"


def dataset_statistics(coco: COCO,
                       image_sizes: dict[int, tuple[int, int]] | None = None) -> dict:
    """Every number of the module docstring, from pycocotools' index of a (checked) json."""
    annotations = list(coco.anns.values())
    instances = [a for a in annotations if not a.get("iscrowd", 0)]
    crowd = [a for a in annotations if a.get("iscrowd", 0)]
    classes = _class_statistics(coco, instances, crowd)
    used = {c["id"] for c in classes}
    return {
        "images": len(coco.imgs),
        "annotations": len(instances),
        "crowd_regions": len(crowd),
        "categories": len(coco.cats),
        "categories_used": sum(1 for c in classes if c["instances"]),
        "classes": classes,
        "unused_categories": [c["name"] for i, c in sorted(coco.cats.items()) if i not in used],
        "instances_per_image": _per_image(coco, instances),
        "object_sizes": {
            "thresholds": {"small": f"area < {SMALL_AREA}", "medium": f"area < {MEDIUM_AREA}",
                           "large": f"area >= {MEDIUM_AREA}"},
            "instances": _size_counts(instances),
            "crowd_regions": _size_counts(crowd),
        },
        "image_sizes": _image_sizes(coco, image_sizes or {}),
    }


def _size_counts(annotations: list[dict]) -> dict[str, int]:
    counts = Counter(size_class(a["area"]) for a in annotations)
    return {name: counts[name] for name in SIZE_CLASSES}


def _class_statistics(coco: COCO, instances: list[dict], crowd: list[dict]) -> list[dict]:
    by_class: dict[int, list[dict]] = {}
    for ann in instances:
        by_class.setdefault(ann["category_id"], []).append(ann)
    crowd_counts = Counter(a["category_id"] for a in crowd)
    classes = []
    for category_id in sorted(set(by_class) | set(crowd_counts)):
        found = by_class.get(category_id, [])
        classes.append({
            "id": category_id, "name": coco.cats[category_id]["name"],
            "instances": len(found),
            "share": round(len(found) / len(instances), 6) if instances else 0.0,
            "images": len({a["image_id"] for a in found}),
            "crowd": crowd_counts[category_id],
            **_size_counts(found),
        })
    return sorted(classes, key=lambda c: (-c["instances"], -c["crowd"], c["id"]))


def _per_image(coco: COCO, instances: list[dict]) -> dict:
    counts = Counter(a["image_id"] for a in instances)
    per_image = [counts[image_id] for image_id in sorted(coco.imgs)]
    if not per_image:
        return {"min": 0, "median": 0, "mean": 0, "max": 0, "histogram": {},
                "images_without_instances": []}
    return {
        "min": min(per_image), "median": statistics.median(per_image),
        "mean": round(statistics.fmean(per_image), 4), "max": max(per_image),
        "histogram": {str(k): v for k, v in sorted(Counter(per_image).items())},
        "images_without_instances": [i for i in sorted(coco.imgs) if not counts[i]],
    }


def _image_sizes(coco: COCO, measured: dict[int, tuple[int, int]]) -> dict:
    sizes = [measured.get(i, (image["width"], image["height"]))
             for i, image in sorted(coco.imgs.items())]
    if not sizes:
        return {"distinct": []}
    ratios = [w / h for w, h in sizes]

    def spread(values: list[float]) -> dict:
        return {"min": min(values), "median": statistics.median(values), "max": max(values)}

    return {
        "distinct": [{"width": w, "height": h, "images": n}
                     for (w, h), n in Counter(sizes).most_common()],
        "width": spread([w for w, _ in sizes]),
        "height": spread([h for _, h in sizes]),
        "aspect_ratio": {k: round(v, 4) for k, v in spread(ratios).items()},
        "landscape": sum(r > 1 for r in ratios), "portrait": sum(r < 1 for r in ratios),
        "square": sum(r == 1 for r in ratios),
    }


def read_image_sizes(coco: COCO, image_dir: str | Path
                     ) -> tuple[dict[int, tuple[int, int]], dict[int, str]]:
    """Sizes from the image files' headers (no decoding) and the files' problems."""
    sizes, problems = {}, {}
    for image_id, image in sorted(coco.imgs.items()):
        path = Path(image_dir) / image["file_name"]
        try:
            header = read_header(path) if path.is_file() else None
        except UnreadableImage as error:
            problems[image_id] = str(error)
            continue
        if header is None:
            problems[image_id] = f"{path}: no such image file"
            continue
        sizes[image_id] = (header.width, header.height)
        if sizes[image_id] != (image["width"], image["height"]):
            problems[image_id] = (f"{path}: image is {header.width}x{header.height}, the json "
                                  f"says {image['width']}x{image['height']}")
    return sizes, problems


# ----------------------------------------------------------------------------- plots
def plot_statistics(stats: dict, output_dir: str | Path) -> list[Path]:
    """The four PNGs of the module docstring, from `dataset_statistics`'s dict."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    figures = {"class_counts.png": _class_figure(stats),
               "instances_per_image.png": _per_image_figure(stats),
               "object_sizes.png": _sizes_figure(stats),
               "image_sizes.png": _image_size_figure(stats)}
    written = []
    for name, figure in figures.items():
        figure.savefig(output_dir / name, dpi=100)
        plt.close(figure)  # pyplot keeps every open figure alive
        written.append(output_dir / name)
    return written


def _class_figure(stats: dict):
    classes = [c for c in stats["classes"] if c["instances"]][::-1]  # largest on top
    figure, axis = plt.subplots(figsize=(8, 1.5 + 0.22 * max(len(classes), 1)))
    names = [c["name"] for c in classes]
    axis.barh(names, [c["instances"] for c in classes], color="tab:blue", label="instances")
    axis.barh(names, [c["images"] for c in classes], height=0.35, color="tab:orange",
              label="images containing it")
    for y, c in enumerate(classes):
        axis.text(c["instances"], y, f" {c['instances']} ({100 * c['share']:.1f}%)",
                  va="center", fontsize=7)
    axis.set(title=f"instances per class ({stats['annotations']} instances, "
             f"{stats['categories_used']} of {stats['categories']} classes used)",
             xlabel="count", ylim=(-0.7, max(len(classes), 1) - 0.3))
    axis.margins(x=0.15)
    axis.tick_params(axis="y", labelsize=7)
    axis.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _per_image_figure(stats: dict):
    per_image = stats["instances_per_image"]
    histogram = {int(k): v for k, v in per_image["histogram"].items()}
    figure, axis = plt.subplots(figsize=(8, 4))
    axis.bar(list(histogram), list(histogram.values()), width=0.9, color="tab:blue")
    for value, name, style in ((per_image["median"], "median", "--"),
                               (per_image["mean"], "mean", ":")):
        axis.axvline(value, color="black", linestyle=style, label=f"{name} {value:.3g}")
    axis.set(title=f"instances per image ({stats['images']} images)", xlabel="instances",
             ylabel="images")
    axis.legend()
    figure.tight_layout()
    return figure


def _sizes_figure(stats: dict):
    sizes = stats["object_sizes"]
    classes = [c for c in stats["classes"] if c["instances"]][::-1]
    figure, (overall, per_class) = plt.subplots(
        1, 2, figsize=(12, 1.5 + 0.22 * max(len(classes), 8)), width_ratios=(1, 2))
    x = range(len(SIZE_CLASSES))
    overall.bar([i - 0.2 for i in x], [sizes["instances"][s] for s in SIZE_CLASSES], width=0.4,
                label="instances")
    overall.bar([i + 0.2 for i in x], [sizes["crowd_regions"][s] for s in SIZE_CLASSES],
                width=0.4, label="crowd regions")
    overall.set_xticks(list(x), [f"{s}\n{sizes['thresholds'][s]}" for s in SIZE_CLASSES])
    overall.set(title="object sizes (COCO area ranges)", ylabel="count")
    overall.legend()
    left = [0] * len(classes)
    for size in SIZE_CLASSES:
        counts = [c[size] for c in classes]
        per_class.barh([c["name"] for c in classes], counts, left=left, label=size)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    per_class.set(title="instances per class by size", xlabel="instances")
    per_class.tick_params(axis="y", labelsize=7)
    per_class.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _image_size_figure(stats: dict):
    distinct = stats["image_sizes"]["distinct"]
    figure, (scatter, ratios) = plt.subplots(1, 2, figsize=(12, 5))
    counts = [d["images"] for d in distinct]
    scatter.scatter([d["width"] for d in distinct], [d["height"] for d in distinct],
                    s=[20 + 200 * n / max(counts, default=1) for n in counts], alpha=0.6)
    for d in distinct[:5]:  # the most common sizes, by name
        scatter.annotate(f"{d['width']}x{d['height']} ({d['images']})",
                         (d["width"], d["height"]), fontsize=7)
    scatter.set(title=f"image sizes ({len(distinct)} distinct)", xlabel="width",
                ylabel="height")
    ratios.hist([d["width"] / d["height"] for d in distinct], weights=counts, bins=30,
                color="tab:green")
    ratios.set(title="aspect ratios (width / height)", xlabel="aspect ratio", ylabel="images")
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- tables
def statistics_tables(stats: dict, show: int = 20) -> list[Table]:
    """The numbers as rich tables (`show`: rows of the long ones)."""
    return [_summary_table(stats), _class_table(stats), _size_table(stats, show)]


def _summary_table(stats: dict) -> Table:
    per_image, sizes = stats["instances_per_image"], stats["object_sizes"]
    table = Table("", "value", title="dataset", title_justify="left")
    rows = {
        "images": stats["images"],
        "instances (iscrowd=0)": stats["annotations"],
        "crowd regions (iscrowd=1)": stats["crowd_regions"],
        "classes used / listed": f"{stats['categories_used']} / {stats['categories']}",
        "instances per image min / median / mean / max":
            f"{per_image['min']} / {per_image['median']:g} / {per_image['mean']:g} / "
            f"{per_image['max']}",
        "images without instances": _ids(per_image["images_without_instances"]),
        **{f"{s} instances ({sizes['thresholds'][s]})":
           _count_share(sizes["instances"][s], stats["annotations"]) for s in SIZE_CLASSES},
    }
    if stats["crowd_regions"]:
        rows["crowd regions small / medium / large"] = " / ".join(
            str(sizes["crowd_regions"][s]) for s in SIZE_CLASSES)
    if stats["unused_categories"]:
        rows["unused categories"] = ", ".join(stats["unused_categories"])
    for name, value in rows.items():
        table.add_row(name, str(value))
    return table


def _class_table(stats: dict) -> Table:
    table = Table(title="classes", title_justify="left")
    for column in ("id", "name", "instances", "share", "images", "crowd", *SIZE_CLASSES):
        table.add_column(column, justify="left" if column == "name" else "right")
    for c in stats["classes"]:
        table.add_row(str(c["id"]), c["name"], str(c["instances"]), f"{100 * c['share']:.1f}%",
                      str(c["images"]), str(c["crowd"]), *(str(c[s]) for s in SIZE_CLASSES))
    return table


def _size_table(stats: dict, show: int) -> Table:
    sizes = stats["image_sizes"]
    table = Table("width x height", "images", title="image sizes", title_justify="left")
    for d in sizes["distinct"][:show]:
        table.add_row(f"{d['width']}x{d['height']}", str(d["images"]))
    if len(sizes["distinct"]) > show:
        table.add_row(f"... {len(sizes['distinct']) - show} more sizes", "")
    if sizes["distinct"]:
        for key in ("width", "height", "aspect_ratio"):
            table.add_row(f"{key} min / median / max",
                          " / ".join(f"{v:g}" for v in sizes[key].values()))
        table.add_row("landscape / portrait / square",
                      f"{sizes['landscape']} / {sizes['portrait']} / {sizes['square']}")
    return table


def _count_share(count: int, total: int) -> str:
    return f"{count} ({100 * count / total:.1f}%)" if total else str(count)


def _ids(ids: list[int], shown: int = 10) -> str:
    more = f", ... {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{len(ids)}" + (f" (ids {', '.join(map(str, ids[:shown]))}{more})" if ids else "")


# ------------------------------------------------------------------------------- shim
def dataset_stats(cfg: DictConfig) -> dict:
    """The command: statistics of one json, tables, stats.json and plots in output_dir."""
    annotation_file, image_dir = dataset_split(cfg, need_images=False)
    coco = load_checked(annotation_file).coco
    measured, problems = read_image_sizes(coco, image_dir) if image_dir else ({}, {})
    stats = {"source": str(annotation_file), **dataset_statistics(coco, measured)}
    if image_dir:
        stats["image_files"] = {"folder": str(image_dir), "read": len(measured),
                                "problems": {str(k): v for k, v in problems.items()}}
    output_dir = Path(cfg.output_dir)
    plots = plot_statistics(stats, output_dir)
    (output_dir / "stats.json").write_text(json.dumps(stats, indent=1))
    console = Console()
    for table in statistics_tables(stats, cfg.show):
        console.print(table)
    for image_id, problem in list(problems.items())[:cfg.show]:
        console.print(f"image {image_id}: {problem}")
    console.print(f"stats.json and {', '.join(p.name for p in plots)} in {output_dir}")
    return stats
