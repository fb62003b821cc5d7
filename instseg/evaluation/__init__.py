"""COCO evaluation: the evaluator and its Lightning callback, compact per-image detections,
bounded-memory COCOeval, pasting to RLE, results files."""

from instseg.evaluation.coco import CocoEvaluator
from instseg.evaluation.detections import ImageDetections

__all__ = ["CocoEvaluator", "ImageDetections"]
