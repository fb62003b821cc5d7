"""Helpers of the evaluation tests."""

import numpy as np

from instseg.evaluation.cocoeval import run_cocoeval


def coco_stats(*args, **kwargs) -> np.ndarray:
    """The 12 COCO stats, as COCOeval.summarize prints them, of run_cocoeval(...)."""
    return np.asarray(run_cocoeval(*args, **kwargs).stats[:12], dtype=np.float64)
