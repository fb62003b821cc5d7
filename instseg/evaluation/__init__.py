"""COCO evaluation: records from detections, and the 12 standard stats per task."""

from instseg.evaluation.coco import CocoEvaluator, coco_stats, detections_to_records

__all__ = ["CocoEvaluator", "coco_stats", "detections_to_records"]
