"""COCO evaluation: the evaluator and its Lightning callback, bounded-memory COCOeval, results
records and files."""

from instseg.evaluation.coco import CocoEvaluator

__all__ = ["CocoEvaluator"]
