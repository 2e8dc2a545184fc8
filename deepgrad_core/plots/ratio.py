"""The vanishing-gradient verdict over training: first/last main-path layer norm ratio per epoch.

The ratio compares the first main-path layer (the stem conv, closest to the input) with the last one, from
each epoch's mean norms; the dotted line is the job's vanishing threshold (``tracking.vanishing_fraction``,
1e-3 by default). A 1x1 reducer, a shortcut or the classifier never decides it.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from deepgrad_core.plots.canvas import job_label, job_title, log_axis, new_figure, set_title
from deepgrad_core.plots.job import JobData, PlotDataError
from deepgrad_core.plots.metrics import style_epoch_axis


def epoch_ratios(job: JobData, kind: str) -> tuple[np.ndarray, np.ndarray, str, str] | None:
    """(epochs from 1, first/last ratio per epoch (NaN: undefined), first layer, last layer); None if absent."""
    block = job.series.get(kind)
    if block is None or len(block) == 0:
        return None
    main = job.main_path(block.layers) or list(block.layers)
    if len(main) < 2:
        return None
    first, last = block.layers.index(main[0]), block.layers.index(main[-1])
    present, means, _ = job.means(kind)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = means[:, first] / means[:, last]
    ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.nan)
    return np.asarray(present) + 1, ratio, main[0], main[-1]


def _threshold(ax, fraction: float) -> None:  # noqa: ANN001
    ax.axhline(fraction, color="tab:red", linestyle=":", linewidth=1.2,
               label=f"vanishing below {fraction:g}")


def ratio_figure(job: JobData) -> Figure:
    """The ratio per epoch of every recorded kind (weight, activation), log scale."""
    fig = new_figure()
    ax = fig.add_subplot()
    drawn, names = 0, None
    for kind, color in (("weight", "tab:blue"), ("activation", "tab:orange")):
        found = epoch_ratios(job, kind)
        if found is None:
            continue
        epochs, ratio, first, last = found
        names = (first, last)
        ax.plot(epochs, ratio, color=color, marker="o" if len(epochs) < 40 else None, markersize=4,
                label=f"{kind} gradients")
        drawn += 1
    if not drawn:
        raise PlotDataError(f"job {job.name!r} has no gradient norms of two main-path layers yet")
    _threshold(ax, job.vanishing_fraction)
    log_axis(ax, "y")
    ax.set_ylabel(f"mean norm of {names[0]} / mean norm of {names[1]}")
    style_epoch_axis(ax, int(max(ax.get_xlim()[1], 1)))
    ax.legend(loc="best", fontsize=9)
    set_title(fig, job_title(job, "first / last main-path layer gradient ratio per epoch"),
              [f"{names[0]} (input side) over {names[1]} (output side); below the red line gradients vanish"])
    return fig


def compare_ratio_figure(jobs: list[JobData], *, norm_kind: str = "weight") -> Figure:
    """The ratio per epoch of several jobs on one log axis: which variants keep their early layers learning."""
    fig = new_figure(figsize=(10.0, 5.0))
    ax = fig.add_subplot()
    palette = colormaps["tab10"]
    missing, longest = [], 1
    for i, job in enumerate(jobs):
        found = epoch_ratios(job, norm_kind)
        if found is None:
            missing.append(job.name)
            continue
        epochs, ratio, first, last = found
        longest = max(longest, int(epochs[-1]))
        ax.plot(epochs, ratio, color=palette(i % 10), marker="o" if len(epochs) < 40 else None, markersize=3,
                label=f"{job_label(job)} ({first}/{last})")
    if len(missing) == len(jobs):
        raise PlotDataError(f"none of the jobs has {norm_kind} gradient norms of two main-path layers yet")
    _threshold(ax, min(j.vanishing_fraction for j in jobs))
    log_axis(ax, "y")
    ax.set_ylabel(f"first / last main-path layer, mean {norm_kind} gradient norm")
    style_epoch_axis(ax, longest)
    ax.legend(loc="best", fontsize=8)
    set_title(fig, f"{norm_kind} gradient ratio per epoch, {len(jobs) - len(missing)} jobs",
              [f"not shown, no norms yet: {', '.join(missing)}" if missing else ""])
    return fig
