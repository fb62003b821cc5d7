"""The structures every room passes around: one image's detections (`Detections`) and the
mask conversions (`masks`)."""

from instseg.structures.detections import Detections

__all__ = ["Detections"]
