"""COCO evaluation: records from detections, and the 12 standard stats per task."""

from instseg.evaluation.coco import CocoEvaluator, coco_stats
from instseg.evaluation.detections import ImageDetections, detections_to_records

__all__ = ["CocoEvaluator", "ImageDetections", "coco_stats", "detections_to_records"]
