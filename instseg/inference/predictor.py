"""`Predictor`: a Mask R-CNN (trained here or COCO-pretrained) applied to single images.

Contract:
    Predictor(net, categories, score_threshold=0.7, min_size=None, max_size=None, device=...)
    predictor(image) -> Detections (instseg.structures), those scoring >= score_threshold
        image: a path, a PIL image, a numpy array HxWx3 uint8, or a tensor [3, H, W] (uint8,
        or float in [0, 1]); pixels as stored (no EXIF rotation, as in the datasets).
        Detections: boxes float32 [N, 4] XYXY in image pixels, scores [N], category_ids
        int64 [N] (the dataset's ids; COCO ids for COCO weights), class_names (N), masks bool
        [N, H, W] (mask probabilities > 0.5), and .records(): the same detections as COCO
        results records with RLE masks, exactly as evaluate.py writes them for the same model
        and image.
    predictor.predict(images) -> [Detections], one per image (one batch).
    predictor.render(image, detections, side_by_side=False) -> uint8 [3, H, W] (or [3, H, 2W]).
min_size/max_size override the model's resize (800/1333 for the COCO models; a checkpoint
keeps the size it was trained at when they are None).
Predictor.from_exported(path, backend=...) runs a file written by instseg-export (ONNX by
onnxruntime or openvino, TorchScript) through the same thresholding, pasting and drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection import MaskRCNN
from torchvision.transforms.v2.functional import pil_to_tensor, to_dtype

from instseg import configs
from instseg.checkpoints.build import module_from_checkpoint, module_from_pretrained
from instseg.data.categories import CategoryMap
from instseg.data.images import read_rgb
from instseg.export.runtimes import ExportedModel, load_exported
from instseg.inference.optimize import optimize_for_inference
from instseg.models.forward import predict_unpasted
from instseg.models.tta import TestTimeAugmentation
from instseg.structures.detections import Detections
from instseg.utils.errors import InstsegError

AUTOCAST = {"32-true": None, "16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


class Predictor:
    def __init__(
        self, net: MaskRCNN | ExportedModel, categories: CategoryMap, score_threshold: float = 0.7,
        min_size: int | None = None, max_size: int | None = None, device: str = "auto",
        optimize: bool = True, compile: bool = False, precision: str = "32-true",
        reuse_memory: bool = False, tta: bool = False,
        tta_scales: tuple[float, ...] = (0.8, 1.0, 1.2),
    ) -> None:
        """`optimize`/`compile`/`reuse_memory`: instseg.inference.optimize.optimize_for_inference
        (changes `net` in place: give a copy if it trains on; `reuse_memory=True` changes
        glibc's allocator for the whole process, so it is off unless asked for).
        `precision`: 32-true, or 16-mixed / bf16-mixed for autocast inference on a CUDA
        device. `tta`: test-time augmentation (instseg.models.tta: the model's size times
        each of `tta_scales`, each also flipped), as evaluate.py's eval.tta=true.
        An ExportedModel `net` (from_exported) runs on the CPU as exported: the options
        that change the model (optimize, compile, precision, sizes, tta) do not apply."""
        self.categories = categories
        self.names = dict(zip(categories.category_ids, categories.names, strict=True))
        self.score_threshold = score_threshold
        if isinstance(net, ExportedModel):
            changes = {"min_size": min_size, "max_size": max_size, "tta": tta or None,
                       "compile": compile or None,
                       "precision": None if precision == "32-true" else precision,
                       "device": None if device in ("auto", "cpu") else device}
            self._use_exported(net, changes)
            return
        if precision not in AUTOCAST:
            raise InstsegError(f"precision={precision!r}: expected one of {list(AUTOCAST)}")
        self.autocast_dtype = AUTOCAST[precision]
        self.device = torch.device(_resolve_device(device))
        if self.autocast_dtype is not None and self.device.type == "cpu":
            raise InstsegError(f"precision={precision} needs a CUDA device (torchvision's CPU "
                               "RoIAlign has no half-precision kernel); use 32-true on a CPU")
        self.net = net.eval().to(self.device)
        if optimize:
            optimize_for_inference(self.net, compile=compile, reuse_memory=reuse_memory)
        if min_size is not None:
            self.net.transform.min_size = (int(min_size),)
        if max_size is not None:
            self.net.transform.max_size = int(max_size)
        self._predict = (TestTimeAugmentation(tuple(tta_scales)) if tta
                         else predict_unpasted)

    def _use_exported(self, model: ExportedModel, changes: dict) -> None:
        asked = [name for name, value in changes.items() if value is not None]
        if asked:
            raise InstsegError(f"{model.path}: an exported model runs as it was exported (on "
                               "the CPU at its size, fp32, no compile or test-time "
                               f"augmentation); leave {', '.join(asked)} unset")
        self.autocast_dtype = None
        self.device = torch.device("cpu")
        self.net = model
        self._predict = _run_exported

    @classmethod
    def from_exported(cls, path: str | Path, backend: str | None = None,
                      score_threshold: float = 0.7, **kwargs) -> Predictor:
        """A file written by instseg-export, run by `backend` (onnxruntime or openvino for
        .onnx, torchscript for .pt; default by the file's suffix); class names from the
        file's metadata. `kwargs` that change the model must be left unset."""
        model = load_exported(path, backend)
        return cls(model, model.categories, score_threshold=score_threshold, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Predictor:
        """A model trained by `train` (class names from its dataset)."""
        module, categories, _ = module_from_checkpoint(path)
        return cls(module.net, categories, **kwargs)

    @classmethod
    def from_pretrained(cls, model: str = "r50_fpn", **kwargs) -> Predictor:
        """conf/model/<model>.yaml with its COCO weights (torchvision's; names from their
        metadata). Offline without them in the torch hub cache: InstsegError saying how."""
        cfg = configs.compose("demo", [f"model={model}", "model.weights=coco"])
        module, categories = module_from_pretrained(cfg)
        return cls(module.net, categories, **kwargs)

    def __call__(self, image) -> Detections:
        return self.predict([image])[0]

    def predict(self, images: list) -> list[Detections]:
        batch = [_float_image(image).to(self.device) for image in images]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                            enabled=self.autocast_dtype is not None):
            outputs = self._predict(self.net, batch)
        return [self._detections(output) for output in outputs]

    def render(self, image, detections: Detections, side_by_side: bool = False) -> torch.Tensor:
        """The image with the detections drawn (uint8 [3, H, W]); with side_by_side, the input
        and the overlay next to each other ([3, H, 2W])."""
        from instseg.inference.render import draw_detections

        pixels = to_uint8_image(image)
        overlay = draw_detections(pixels, detections)
        return torch.cat([pixels, overlay], dim=2) if side_by_side else overlay

    def _detections(self, output: dict) -> Detections:
        keep = output["scores"] >= self.score_threshold
        kept = {key: value[keep] for key, value in output.items() if key != "image_size"}
        category_ids = self.categories.to_category_ids(kept["labels"].cpu())
        return Detections.from_output(
            {**kept, "image_size": output["image_size"]}, category_ids,
            class_names=[self.names[c] for c in category_ids], as_rle=False)


def _run_exported(model: ExportedModel, batch: list[torch.Tensor]) -> list[dict]:
    return model(batch)


def to_uint8_image(image) -> torch.Tensor:
    """A path / PIL image / HxWx3 array / [3, H, W] tensor as uint8 RGB [3, H, W]."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 array, got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.uint8)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3, H, W] tensor, got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.cpu()
        return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def _float_image(image) -> torch.Tensor:
    """float32 [3, H, W] in [0, 1], scaled exactly as the datasets' transforms scale."""
    if isinstance(image, torch.Tensor) and image.is_floating_point():
        return to_uint8_image(image) if image.ndim != 3 else image.detach().float()
    return to_dtype(to_uint8_image(image), torch.float32, scale=True)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
