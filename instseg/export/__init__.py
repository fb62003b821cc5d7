"""Deployment: a Mask R-CNN exported as one graph (ONNX, TorchScript) and run by a maintained
runtime (ONNX Runtime, OpenVINO, TorchScript) with the outputs of the eager net.

    from instseg.export import export, load_exported
    export(net, categories, "model.onnx", "onnx", dynamic=True)     # graph.py
    model = load_exported("model.onnx", backend="openvino")         # runtimes.py
    model([image])  # [{"boxes", "scores", "labels", "mask_probs", "image_size"}]

The command line is `instseg-export` (instseg.tasks.export, conf/export.yaml); the Predictor
runs an exported file with `Predictor.from_exported`.
"""

from instseg.export.graph import export
from instseg.export.runtimes import ExportedModel, load_exported

__all__ = ["ExportedModel", "export", "load_exported"]
