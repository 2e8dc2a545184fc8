"""Per-epoch training metrics: loss and accuracy, train and test."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepgrad_core.plots.canvas import job_title, new_figure, set_title
from deepgrad_core.plots.job import JobData, PlotDataError
from deepgrad_core.plots.series import Hidden, mask_hidden

PANELS = (("loss", "loss"), ("acc", "accuracy (%)"))


def epoch_series(history: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, Hidden]:
    """Epochs numbered from 1 and ``key``'s values (NaN where missing or non-finite; accuracy in %)."""
    epochs = np.array([int(m.get("epoch", i)) + 1 for i, m in enumerate(history)], dtype=np.int64)
    raw = np.array([m.get(key, np.nan) if m.get(key) is not None else np.nan for m in history], np.float64)
    values, hidden = mask_hidden(raw, log=False)
    return epochs, values * 100 if key.endswith("_acc") else values, hidden


def require_history(job: JobData) -> None:
    if not job.history:
        raise PlotDataError(f"job {job.name!r} has no finished epoch yet: no metrics to plot")


def style_epoch_axis(ax: Axes, last_epoch: int) -> None:
    """Whole epochs along x (a single epoch centred rather than on a fractional axis)."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if last_epoch <= 1:
        ax.set_xlim(0.5, 1.5)
        ax.set_xticks([1])
    ax.grid(True, alpha=0.3)


def metrics_figure(job: JobData) -> Figure:
    """Two panels: train/test loss and train/test accuracy per epoch."""
    require_history(job)
    fig = new_figure()
    axes = fig.subplots(1, 2)
    hidden = Hidden()
    few = len(job.history) < 30
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        for split, style in (("train", "--"), ("test", "-")):
            epochs, values, h = epoch_series(job.history, f"{split}_{key}")
            hidden += h
            ax.plot(epochs, values, style, marker="o" if few else None, markersize=4, label=split)
        ax.set_ylabel(label)
        style_epoch_axis(ax, len(job.history))
        ax.legend(loc="best", fontsize=9)
    note = f"{len(job.history)} epoch{'s' if len(job.history) != 1 else ''} so far" if job.state == "running" else ""
    set_title(fig, job_title(job, "training metrics"), [note, hidden.note()])
    return fig
