"""Exported models (instseg.export.graph) run by a maintained runtime, with the outputs the
Predictor and evaluate.py take from the eager net.

    model = load_exported("model.onnx", backend="onnxruntime")   # or openvino / torchscript
    model.categories                                               # CategoryMap (metadata)
    model(images) -> one dict per image, as instseg.models.forward.predict_unpasted returns:
        "boxes" float32 [N, 4], "scores" [N], "labels" int64 [N] (contiguous), "mask_probs"
        float32 [N, 1, M, M] and "image_size" (H, W); images: float [3, H, W] in [0, 1].

Backends: onnxruntime and openvino read a .onnx file (OpenVINO in fp32: its bf16 default on
CPUs that have it changes the detections), torchscript a .pt file. Each runtime is an
optional extra (pip install -e ".[export]"); a missing one is an InstsegError naming it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from instseg.data.categories import CategoryMap
from instseg.export.extras import require
from instseg.export.graph import METADATA_FILE
from instseg.utils.errors import InstsegError

BACKENDS = {"onnxruntime": "onnx", "openvino": "onnx", "torchscript": "torchscript"}


class ExportedModel:
    """An exported Mask R-CNN loaded by one backend (see the module docstring)."""

    def __init__(self, path: Path, backend: str, run: Callable, about: dict) -> None:
        self.path = path
        self.backend = backend
        self.metadata = about
        self.categories = CategoryMap(tuple(about["category_ids"]), tuple(about["names"]))
        self._run = run

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return [self._one(image) for image in images]

    def _one(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        size = tuple(image.shape[-2:])
        expected = self.metadata["input_size"]
        if expected is not None and list(size) != expected:
            raise InstsegError(f"{self.path} was exported with dynamic=false for {expected[0]}x"
                               f"{expected[1]} images; this image is {size[0]}x{size[1]} "
                               "(export with dynamic=true for any size)")
        boxes, scores, labels, probs = self._run(image.detach().float().cpu().contiguous())
        return {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "scores": torch.as_tensor(scores, dtype=torch.float32).reshape(-1),
                "labels": torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
                "mask_probs": torch.as_tensor(probs, dtype=torch.float32)[:, None],
                "image_size": size}


def load_exported(path: str | Path, backend: str | None = None) -> ExportedModel:
    """The model exported to `path`, run by `backend` (default: onnxruntime for .onnx,
    torchscript otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise InstsegError(f"{path}: no exported model there (instseg-export writes one)")
    backend = backend or ("onnxruntime" if path.suffix == ".onnx" else "torchscript")
    if backend not in BACKENDS:
        raise InstsegError(f"backend={backend!r}: expected one of {list(BACKENDS)}")
    loader = {"onnxruntime": _onnxruntime, "openvino": _openvino,
              "torchscript": _torchscript}[backend]
    run, about = loader(path)
    if about.get("format") != BACKENDS[backend]:
        raise InstsegError(f"{path} is a {about.get('format')} export; backend={backend} "
                           f"runs {BACKENDS[backend]} files")
    return ExportedModel(path, backend, run, about)


def _instseg_metadata(path: Path, text: str | None) -> dict:
    """The metadata instseg-export writes into every file, parsed."""
    if not text:
        raise InstsegError(f"{path}: a {path.suffix} file without instseg's metadata (export "
                           "it with instseg-export)")
    return json.loads(text)


def _onnx_metadata(path: Path) -> dict:
    onnx = require("onnx", needed_by="openvino")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise InstsegError(f"{path}: not an ONNX file ({error})") from None
    props = {p.key: p.value for p in model.metadata_props}
    return _instseg_metadata(path, props.get("instseg"))


def _onnxruntime(path: Path):
    ort = require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types
        raise InstsegError(f"{path}: not an ONNX file onnxruntime can read ({error})") from None
    about = _instseg_metadata(path, session.get_modelmeta().custom_metadata_map.get("instseg"))

    def run(image: torch.Tensor):
        return session.run(None, {"image": image.numpy()})

    return run, about


def _openvino(path: Path):
    ov = require("openvino")
    about = _onnx_metadata(path)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = [compiled.output(i) for i in range(4)]
    threshold = about["box_score_thresh"]

    def run(image: torch.Tensor):
        result = compiled({"image": image.numpy()})
        boxes, scores, labels, probs = (np.asarray(result[output]) for output in outputs)
        # OpenVINO 2026.4 returns one row of zeros where the graph has no detections; every
        # real detection scores above the model's threshold (torchvision keeps only those).
        keep = scores > threshold
        return boxes[keep], scores[keep], labels[keep], probs[keep]

    return run, about


def _torchscript(path: Path):
    files = {METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        try:
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        except RuntimeError as error:
            raise InstsegError(f"{path}: not a TorchScript file ({error})") from None
    about = _instseg_metadata(path, files[METADATA_FILE])
    module.eval()

    @torch.inference_mode()
    def run(image: torch.Tensor):
        return module(image)

    return run, about
