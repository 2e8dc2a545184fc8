"""Per-epoch training metrics: loss and accuracy, train and test, against chance.

Both panels show the chance level of the task (accuracy ``1/classes``, cross-entropy loss ``ln(classes)``)
and keep it in view: a loss stuck at chance (2.3034-2.3048 for ten classes) must look stuck, not like a
descent that an axis zoomed to its own range would fake. A loss axis whose curves span more than
``LOG_LOSS_SPAN`` times turns logarithmic, so that one early blow-up (65.6) does not flatten the rest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from deepgrad_core.plots.canvas import job_title, log_axis, new_figure, set_title
from deepgrad_core.plots.job import JobData, PlotDataError
from deepgrad_core.plots.series import Hidden, mask_hidden

PANELS = (("loss", "cross-entropy loss"), ("acc", "accuracy (%)"))
SPLIT_STYLES = (("train", "--"), ("test", "-"))
LOG_LOSS_SPAN = 20.0  # max/min of the plotted losses beyond which the loss axis is logarithmic
CHANCE_STYLE = {"color": "0.45", "linestyle": ":", "linewidth": 1.2}


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


def chance(key: str, classes: int | None) -> float | None:
    """The chance level of a panel: ``100/classes`` % accuracy, ``ln(classes)`` loss (None: unknown)."""
    if not classes or classes < 2:
        return None
    return 100.0 / classes if key == "acc" else math.log(classes)


def style_panel(ax: Axes, key: str, values: list[np.ndarray], classes: int | None) -> str:
    """Chance line, honest limits and the scale of one panel; returns a note for the title (or '')."""
    level = chance(key, classes)
    if level is not None:
        ax.axhline(level, **CHANCE_STYLE, zorder=1)
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    if key == "acc":
        ax.set_ylim(-2, 102)  # the whole 0-100% range: no zoom can fake progress
        return ""
    if not len(finite):
        return ""
    positive = finite[finite > 0]
    if len(positive) and positive.max() / positive.min() > LOG_LOSS_SPAN:
        log_axis(ax, "y")
        return "loss on a log axis (its curves span over 20x)"
    lo, hi = float(finite.min()), float(finite.max())
    if level is not None:
        lo, hi = min(lo, level), max(hi, level)
    span = max(hi - lo, 0.25 * max(abs(hi), abs(level or 0.0), 1e-3))  # a flat loss stays flat
    middle = (lo + hi) / 2
    ax.set_ylim(max(0.0, middle - 0.6 * span) if lo >= 0 else middle - 0.6 * span, middle + 0.6 * span)
    return ""


def chance_handle(classes: int | None) -> list[Line2D]:
    """A legend entry for the chance lines."""
    return [Line2D([], [], **CHANCE_STYLE, label=f"chance ({classes} classes)")] if classes else []


def metrics_figure(job: JobData) -> Figure:
    """Two panels: train/test loss and train/test accuracy per epoch, with the chance level."""
    require_history(job)
    fig = new_figure()
    axes = fig.subplots(1, 2)
    hidden = Hidden()
    notes = []
    few = len(job.history) < 30
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        drawn = []
        for split, style in SPLIT_STYLES:
            epochs, values, h = epoch_series(job.history, f"{split}_{key}")
            hidden += h
            drawn.append(values)
            ax.plot(epochs, values, style, marker="o" if few else None, markersize=4, label=split)
        notes.append(style_panel(ax, key, drawn, job.num_classes))
        ax.set_ylabel(label)
        style_epoch_axis(ax, len(job.history))
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + chance_handle(job.num_classes), loc="best", fontsize=9)
    note = f"{len(job.history)} epoch{'s' if len(job.history) != 1 else ''} so far" if job.state == "running" else ""
    set_title(fig, job_title(job, "training metrics"), [note, *notes, hidden.note()])
    return fig
