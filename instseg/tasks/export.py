"""export(cfg): a trained (ckpt=) or published (model=... model.weights=...) Mask R-CNN written
as ONNX or TorchScript (conf/export.yaml; the graph's contract: instseg.export.graph)."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from instseg.checkpoints.build import module_from_checkpoint, module_from_pretrained
from instseg.export.graph import FORMATS, export
from instseg.utils.errors import InstsegError

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


def export_model(cfg: DictConfig) -> dict[str, float]:
    """Writes the export; returns its size in MB and the seconds it took."""
    if cfg.format not in FORMATS:
        raise InstsegError(f"format={cfg.format!r}: expected one of {list(FORMATS)}")
    if cfg.get("ckpt"):
        module, categories, _ = module_from_checkpoint(cfg.ckpt)
    elif cfg.get("model") is not None:
        module, categories = module_from_pretrained(cfg)
    else:
        raise InstsegError("instseg-export needs ckpt=PATH, or model=... with model.weights=...")
    net = module.net.eval()
    if cfg.min_size is not None:
        net.transform.min_size = (int(cfg.min_size),)
    if cfg.max_size is not None:
        net.transform.max_size = int(cfg.max_size)
    if cfg.get("box_score_thresh") is not None:
        net.roi_heads.score_thresh = float(cfg.box_score_thresh)
    path = Path(cfg.output or Path(cfg.paths.output_dir) / f"model{SUFFIXES[cfg.format]}")
    start = time.perf_counter()
    export(net, categories, path, cfg.format, dynamic=cfg.dynamic,
           size=tuple(int(side) for side in cfg.size))
    seconds = time.perf_counter() - start
    size_mb = path.stat().st_size / 2**20
    backends = ("backend=onnxruntime (or backend=openvino)" if cfg.format == "onnx"
                else "backend=torchscript")
    print(f"exported {cfg.format} ({'dynamic' if cfg.dynamic else 'fixed'} size, "
          f"{size_mb:.1f} MB, {seconds:.0f} s) to {path}\n"
          f"run it: instseg-demo input=... exported={path} {backends}")
    return {"size_mb": size_mb, "seconds": seconds}
