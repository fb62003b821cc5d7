"""A torchvision Mask R-CNN as one exportable graph, and its export to ONNX and TorchScript.

The graph (`DetectionGraph`) is the whole model for one image, pre- and post-processing
included (resize, normalise, RPN, NMS, box and mask heads), up to the mask head's
probabilities; the masks are pasted outside the graph, by instseg's own paste
(`instseg.structures.masks`), exactly as the Predictor and evaluate.py paste them. Pasting
in the graph runs as a Loop whose cost grows with the square of the detections.

Graph contract:
    input  "image": float32 [3, H, W], RGB in [0, 1] (scaled as the datasets scale).
    outputs "boxes" float32 [N, 4] XYXY in the input's pixels, "scores" float32 [N],
        "labels" int64 [N] (the model's contiguous labels 1..K), "mask_probs" float32
        [N, M, M] (M = 28 for torchvision's mask head). N may be 0.
    metadata (`metadata`): the label space (label i is category_ids[i - 1], with its name),
        the model's resize, the export's format and whether it is dynamic.
`dynamic=True`: any image size (H and W are dynamic axes); False: only the size exported
at. The number of detections is dynamic either way.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from instseg import __version__
from instseg.data.categories import CategoryMap
from instseg.export.extras import require
from instseg.models.forward import unpasted_detections

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")
INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["boxes", "scores", "labels", "mask_probs"]
# The TorchScript-based ONNX exporter: the dynamo exporter fails inside torchvision's
# batched_nms on data-dependent guards (torch 2.14). Opset 17 is what ONNX Runtime and
# OpenVINO both read.
OPSET = 17
METADATA_FILE = "instseg.json"  # TorchScript: an extra file in the archive


class ExactSizeTransform(GeneralizedRCNNTransform):
    """torchvision's transform, resizing at inference to exactly the size eager torchvision
    computes for every input size: its traced resize computes the size in float32 (so 300x200
    at min_size 320 becomes 479x319, not 480x320), and the ONNX exporter turns Python-scalar
    divisions into float32 ones; here the scale is a float64 division of tensors."""

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if self.training or target is not None or self.fixed_size is not None:
            return super().resize(image, target)
        shape = torch._shape_as_tensor(image)[-2:].to(torch.float64)
        sides = torch.stack([shape.min(), shape.max()])
        limits = torch.tensor([float(self.min_size[-1]), float(self.max_size)],
                              dtype=torch.float64)
        size = torch.floor(shape * torch.min(limits / sides)).to(torch.int64)
        resized = F.interpolate(image[None], size=(size[0], size[1]), mode="bilinear",
                                align_corners=False)
        return resized[0], target


class DetectionGraph(nn.Module):
    """`net` (a torchvision MaskRCNN) for one image, with ExactSizeTransform in place of its
    transform (on a shallow copy: `net` keeps its own, but its modules are set to eval
    mode): see the module docstring for the inputs and outputs."""

    def __init__(self, net: MaskRCNN) -> None:
        super().__init__()
        graph_net = copy.copy(net)
        graph_net._modules = dict(net._modules)  # the copy's own children: net keeps its own
        transform = copy.copy(net.transform)
        transform.__class__ = ExactSizeTransform
        graph_net.transform = transform
        self.net = graph_net.eval()

    def forward(self, image: torch.Tensor):
        detection = unpasted_detections(self.net, [image])[0]
        return (detection["boxes"], detection["scores"], detection["labels"],
                detection["mask_probs"][:, 0])


def metadata(net: MaskRCNN, categories: CategoryMap, export_format: str, dynamic: bool,
             size: tuple[int, int]) -> dict:
    """What a runtime needs besides the graph: the label space and how it was exported."""
    transform = net.transform
    return {
        "instseg_version": __version__,
        "format": export_format,
        "dynamic": bool(dynamic),
        "input_size": None if dynamic else list(size),
        "category_ids": list(categories.category_ids),
        "names": list(categories.names),
        "min_size": list(transform.min_size),
        "max_size": int(transform.max_size),
        "box_score_thresh": float(net.roi_heads.score_thresh),
        "box_detections_per_img": int(net.roi_heads.detections_per_img),
    }


def export(net: MaskRCNN, categories: CategoryMap, path: str | Path, export_format: str,
           dynamic: bool = True, size: tuple[int, int] = (480, 640)) -> Path:
    """Writes `net` as `export_format` (onnx or torchscript) to `path`; traced on a random
    image of `size` (H, W), the only size a `dynamic=False` export takes. `net` is moved to
    the CPU and set to eval mode. Returns the path."""
    if export_format not in FORMATS:
        raise ValueError(f"format={export_format!r}: expected one of {list(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = DetectionGraph(net).cpu()
    example = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    about = metadata(net, categories, export_format, dynamic, size)
    with warnings.catch_warnings():
        # The tracer's notes on shapes read as Python values and on torch.tensor(tensor)
        # copies: the parity tests check other sizes and zero detections. Labels index the
        # mask classifier, never negatively. torch.jit announces its deprecation.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        warnings.filterwarnings("ignore", ".*torch.jit.* is deprecated", FutureWarning)
        if export_format == "onnx":
            _export_onnx(graph, example, path, dynamic, about)
        else:
            _export_torchscript(graph, example, path, about)
    log.info("exported %s to %s", export_format, path)
    return path


def _export_onnx(graph: DetectionGraph, example: torch.Tensor, path: Path, dynamic: bool,
                 about: dict) -> None:
    onnx = require("onnx", needed_by="format=onnx")
    axes = {"image": {1: "height", 2: "width"}} if dynamic else {}
    axes |= {"boxes": {0: "detections"}, "scores": {0: "detections"},
             "labels": {0: "detections"}, "mask_probs": {0: "detections"}}
    buffer = io.BytesIO()
    torch.onnx.export(graph, (example,), buffer, dynamo=False, opset_version=OPSET,
                      input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=axes)
    model = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(model, {"instseg": json.dumps(about)})
    onnx.save(model, str(path))


def _export_torchscript(graph: DetectionGraph, example: torch.Tensor, path: Path,
                        about: dict) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(graph, (example,), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(about)})
