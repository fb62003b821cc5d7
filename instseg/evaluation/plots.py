"""Figures of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures go to TensorBoard or files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def precision_recall_figure(pr_curves: dict[str, np.ndarray]):
    """One panel per task: mean precision over recall at IoU 0.5, 0.75 and 0.5:0.95.

    `pr_curves[task]` is [10 IoU thresholds, 101 recall points], as `CocoEvaluator` keeps it.
    """
    recall = np.linspace(0, 1, 101)
    figure, axes = plt.subplots(1, len(pr_curves), figsize=(5 * len(pr_curves), 4), squeeze=False)
    for axis, (task, curves) in zip(axes[0], pr_curves.items(), strict=True):
        axis.plot(recall, curves[0], label="IoU 0.50")
        axis.plot(recall, curves[5], label="IoU 0.75")
        axis.plot(recall, np.nanmean(curves, axis=0) if np.isfinite(curves).any() else curves[0],
                  label="IoU 0.50:0.95")
        axis.set(title=f"{task} precision-recall", xlabel="recall", ylabel="precision",
                 xlim=(0, 1), ylim=(0, 1.01))
        axis.legend(loc="lower left")
    figure.tight_layout()
    return figure
