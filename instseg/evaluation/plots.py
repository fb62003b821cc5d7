"""Figures of evaluation results (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures go to TensorBoard or files

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def close_figure(figure) -> None:
    """Free a figure of this module once it has been logged."""
    plt.close(figure)


def save_figure(figure, path) -> None:
    """Write `figure` as an image file (format by the suffix) and free it."""
    figure.savefig(path, dpi=100)
    plt.close(figure)


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


# analyze.m's area colours, C75 to FN (C75 and C50 both white, told apart by their edges).
ANALYSIS_COLORS = ((1, 1, 1), (1, 1, 1), (.31, .51, .74), (.75, .31, .30), (.36, .90, .38),
                   (.50, .39, .64), (1, .6, 0))
# tidecv's bar colours (seaborn "muted"): Cls, Loc, Both, Dupe, Bkg, Miss; then FP, FN.
TIDE_COLORS = {"Cls": "#797979", "Loc": "#d5bb67", "Both": "#6acc64", "Dupe": "#dc7ec0",
               "Bkg": "#956cb4", "Miss": "#d65f5f", "FP": "#4878d0", "FN": "#ee854a"}


def _per_task(report: dict, key: str) -> dict:
    """{task: report[task][key]} from `analysis.error_analysis`'s report, or the mapping
    {task: result} itself."""
    return {task: value.get(key, value) for task, value in report.items()}


def analysis_legend(name: str, ap: float) -> str:
    """analyze.m's legend entry: "[.xxx] C75", or "[1.00] FN" where the AP rounds to 1."""
    rounded = round(ap * 1000)
    return f"[1.00] {name}" if rounded == 1000 else f"[.{rounded:03d}] {name}"


def analysis_figure(report: dict, category: str | None = None,
                    supercategory: str | None = None, area: str = "all"):
    """analyze.m's stacked area plot, one panel per task: the seven PR curves C75 ... FN,
    each band filled between a curve and the one before, legend "[.xxx] C75" etc.

    `report`: `analysis.error_analysis`'s report ({task: {"analyze": ...}}) or
    {task: `analysis.coco_analysis` result}; overall by default, else the `category` or the
    `supercategory` named; `area`: one of the reported area ranges. A panel without ground
    truth for that group says so.
    """
    if category is not None and supercategory is not None:
        raise ValueError("give a category or a supercategory, not both")
    analyses = _per_task(report, "analyze")
    figure, axes = plt.subplots(1, len(analyses), figsize=(5 * len(analyses), 4.5),
                                squeeze=False)
    for axis, (task, analysis) in zip(axes[0], analyses.items(), strict=True):
        if category is not None:
            entry, name = analysis["per_category"][category][area], category
        elif supercategory is not None:
            entry = analysis["per_supercategory"][supercategory][area]
            name = f"overall-{supercategory}"
        else:
            entry, name = analysis["overall"][area], "overall"
        axis.set(title=f"{task} {name}-{area}", xlabel="recall", ylabel="precision",
                 xlim=(0, 1), ylim=(0, 1.0))
        if entry is None:
            axis.text(0.5, 0.5, "no ground truth", ha="center", va="center")
            continue
        recall = np.asarray(analysis["recall"])
        curves = np.asarray(entry["precision"])
        below = np.zeros_like(recall)
        for curve_name, curve, color in zip(analysis["curves"], curves, ANALYSIS_COLORS,
                                            strict=True):
            # Each band spans this curve and the one below, as MATLAB's area() of diff(ps).
            axis.fill_between(recall, below, curve, facecolor=color, edgecolor="black",
                              linewidth=0.5,
                              label=analysis_legend(curve_name, entry["ap"][curve_name]))
            below = curve
        axis.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    return figure


def tide_figure(report: dict):
    """TIDE's summary bars, one panel per task: the dAP of each main error (Cls, Loc, Both,
    Dupe, Bkg, Miss) and the special ones (FP, FN), in AP points x 100 as tidecv draws them.

    `report`: `analysis.error_analysis`'s report ({task: {"tide": ...}}) or
    {task: `analysis.tide_errors` result}.
    """
    tides = _per_task(report, "tide")
    figure, axes = plt.subplots(1, len(tides), figsize=(5 * len(tides), 4), squeeze=False)
    for axis, (task, tide) in zip(axes[0], tides.items(), strict=True):
        names = [*tide["main"], *tide["special"]]
        values = [100 * v for v in (*tide["main"].values(), *tide["special"].values())]
        positions = np.arange(len(names)) + (np.arange(len(names)) >= len(tide["main"]))
        axis.barh(positions, values, color=[TIDE_COLORS.get(n, "grey") for n in names])
        axis.set_yticks(positions, names)
        axis.invert_yaxis()
        for y, value in zip(positions, values, strict=True):
            axis.text(value, y, f" {value:.2f}", va="center", fontsize="small")
        axis.set(title=f"{task} TIDE (AP{round(100 * tide['pos_threshold'])} "
                       f"{100 * tide['ap']:.2f})", xlabel="dAP")
        axis.set_xlim(min([*values, 0.0]) * 1.2, max([*values, 1.0]) * 1.2)
    figure.tight_layout()
    return figure
