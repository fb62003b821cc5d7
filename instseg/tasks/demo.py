"""demo(cfg): overlays and COCO-format detections for every input of cfg.input
(conf/demo.yaml), by a model trained here (ckpt=) or COCO-pretrained (COCODemo's scenario).

The loop (`run_demo`): every input through a `Predictor`, overlays and COCO-format json
written, a progress bar while it runs and a summary at the end.

Output files (in `output_dir`), per input named <name> (its file stem, numbered on clashes):
    image: <name>.png, the overlay (the input's size; [H, 2W] with side_by_side)
           <name>.json, a COCO results list (image_id, category_id, bbox xywh, score,
           segmentation as compressed RLE at the input's size)
    video: <name>.mp4 (or <name>/000001.png ... with video_output=frames) and <name>.json
           (image_id = frame number, from 1)
    demo_summary.json: per input its file, size, outputs and detection count; the categories
An unreadable input is reported and counted, the others still run, and the demo then ends
with an InstsegError listing the failures (a non-zero exit from the command line).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from torchvision.io import write_png

from instseg.checkpoints.build import module_from_pretrained
from instseg.data.images import read_rgb
from instseg.inference.inputs import collect_inputs, is_video, output_stems
from instseg.inference.predictor import Predictor
from instseg.inference.video import VideoWriter, frame_rate, read_frames
from instseg.utils.errors import InstsegError

log = logging.getLogger(__name__)


def demo(cfg: DictConfig) -> dict[str, float]:
    """Overlays and COCO-format detections for every input of cfg.input (conf/demo.yaml)."""
    files = collect_inputs(cfg.input)  # a missing input fails before the model is built
    # The command's process is the user's own: glibc may keep freed memory for reuse.
    options = dict(score_threshold=cfg.score_threshold, min_size=cfg.min_size,
                   max_size=cfg.max_size, device=cfg.device, compile=cfg.get("compile", False),
                   precision=cfg.get("precision", "32-true"), reuse_memory=True,
                   tta=cfg.get("tta", False))
    if cfg.get("exported"):
        predictor = Predictor.from_exported(cfg.exported, cfg.get("backend"), **_exported(options))
    elif cfg.get("ckpt"):
        predictor = Predictor.from_checkpoint(cfg.ckpt, **options)
    else:
        try:
            module, categories = module_from_pretrained(cfg)
        except InstsegError as error:
            raise InstsegError(f"{error}\nWithout these weights, ckpt=PATH runs a model "
                               "trained here (no download needed).") from error
        predictor = Predictor(module.net, categories, **options)
    return run_demo(predictor, files, Path(cfg.output_dir), side_by_side=cfg.side_by_side,
                    video_output=cfg.video_output)


def _exported(options: dict) -> dict:
    """The demo's options for an exported model: the Predictor names the ones it cannot
    take; the allocator setting is for the eager net's process only."""
    return {k: v for k, v in options.items() if k != "reuse_memory"}


def run_demo(predictor: Predictor, files: list[Path], output_dir: Path,
             side_by_side: bool = False, video_output: str = "video") -> dict[str, float]:
    if video_output not in ("video", "frames"):
        raise InstsegError(f"video_output must be video or frames, got {video_output!r}")
    output_dir.mkdir(parents=True, exist_ok=True)
    entries, failures, counts = [], [], Counter()
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("demo", total=len(files))
        for path, stem in zip(files, output_stems(files), strict=True):
            try:
                if is_video(path):
                    entry = _video(predictor, path, output_dir, stem, side_by_side,
                                   video_output, progress)
                else:
                    entry = _image(predictor, path, output_dir, stem, side_by_side)
            except InstsegError as error:
                log.error("%s", error)
                failures.append(str(error))
            else:
                entries.append(entry)
                counts.update(entry.pop("classes"))
            progress.advance(task)
    _write_summary(output_dir, predictor, entries, failures)
    _print_summary(output_dir, entries, failures, counts)
    if failures:
        raise InstsegError(f"{len(failures)} of {len(files)} inputs failed:\n"
                           + "\n".join(failures))
    return {"inputs": float(len(entries)),
            "detections": float(sum(e["detections"] for e in entries))}


def _image(predictor, path, output_dir, stem, side_by_side) -> dict:
    pixels = read_rgb(path)
    detections = predictor(pixels)
    write_png(predictor.render(pixels, detections, side_by_side), str(output_dir / f"{stem}.png"))
    records = [dict(r, image_id=1) for r in detections.records()]
    (output_dir / f"{stem}.json").write_text(json.dumps(records))
    return {"file": str(path), "height": pixels.shape[1], "width": pixels.shape[2],
            "overlay": f"{stem}.png", "detections_file": f"{stem}.json",
            "detections": len(detections), "classes": detections.class_names}


def _video(predictor, path, output_dir, stem, side_by_side, video_output, progress) -> dict:
    rate = frame_rate(path)
    frames_dir = output_dir / stem
    writer = VideoWriter(output_dir / f"{stem}.mp4", rate) if video_output == "video" else None
    task = progress.add_task(f"  {path.name}", total=None)
    records, classes, size, number = [], [], (0, 0), 0
    try:
        for number, frame in enumerate(read_frames(path), start=1):
            detections = predictor(frame)
            overlay = predictor.render(frame, detections, side_by_side)
            if writer is None:
                frames_dir.mkdir(exist_ok=True)
                write_png(overlay, str(frames_dir / f"{number:06d}.png"))
            else:
                writer.write(overlay)
            records += [dict(r, image_id=number) for r in detections.records()]
            classes += detections.class_names
            size = tuple(frame.shape[1:])
            progress.advance(task)
    finally:
        if writer is not None:
            writer.close()
        progress.remove_task(task)
    if number == 0:
        raise InstsegError(f"{path}: no video frames in it")
    (output_dir / f"{stem}.json").write_text(json.dumps(records))
    overlay_name = f"{stem}.mp4" if writer is not None else f"{stem}/"
    return {"file": str(path), "height": size[0], "width": size[1], "frames": number,
            "frame_rate": float(rate), "overlay": overlay_name,
            "detections_file": f"{stem}.json", "detections": len(records), "classes": classes}


def _write_summary(output_dir: Path, predictor: Predictor, entries, failures) -> None:
    categories = [{"id": i, "name": n} for i, n in predictor.names.items()]
    summary = {"inputs": entries, "failed": failures, "categories": categories,
               "score_threshold": predictor.score_threshold,
               "device": str(predictor.device), "torch": torch.__version__}
    (output_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2))


def _print_summary(output_dir: Path, entries, failures, counts: Counter) -> None:
    table = Table(title=f"demo: {len(entries)} inputs, {sum(counts.values())} detections")
    table.add_column("class")
    table.add_column("detections", justify="right")
    for name, count in counts.most_common():
        table.add_row(name, str(count))
    console = Console(width=100)
    console.print(table)
    if failures:
        console.print(f"[red]{len(failures)} inputs failed[/red]")
    console.print(f"overlays and detections written to {output_dir}")
