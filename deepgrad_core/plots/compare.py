"""Figures across jobs: test metrics, norm against relative depth, first-layer filters side by side."""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from deepgrad_core.plots.canvas import empty_panel, job_label, log_axis, new_figure, plain_text, set_title
from deepgrad_core.plots.job import JobData, PlotDataError, PlotParameterError
from deepgrad_core.plots.metrics import PANELS, SPLIT_STYLES, chance_handle, epoch_series, style_epoch_axis, style_panel
from deepgrad_core.plots.model import draw_filters, filter_change, require_filters
from deepgrad_core.plots.series import Hidden


def _color(i: int) -> tuple:
    return colormaps["tab10"](i % 10)


def _left_out(jobs: list[JobData], why: str) -> str:
    """``"not shown, no finished epoch: a, b"`` or empty."""
    return f"not shown, {why}: {', '.join(plain_text(j.name) for j in jobs)}" if jobs else ""


def compare_metrics_figure(jobs: list[JobData]) -> Figure:
    """Loss and accuracy per epoch, train (dashed) and test (solid), one colour per job, with chance levels."""
    shown = [j for j in jobs if j.history]
    if not shown:
        raise PlotDataError("none of the jobs has a finished epoch yet: no metrics to compare")
    fig = new_figure(figsize=(11.0, 5.0))
    axes = fig.subplots(1, 2)
    hidden = Hidden()
    classes = {j.num_classes for j in shown if j.num_classes}
    notes = []
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        drawn = []
        for i, job in enumerate(jobs):
            if not job.history:
                continue
            for split, style in SPLIT_STYLES:
                epochs, values, h = epoch_series(job.history, f"{split}_{key}")
                hidden += h
                drawn.append(values)
                ax.plot(epochs, values, style, color=_color(i), marker="o" if len(epochs) < 30 else None,
                        markersize=3, label=job_label(job) if split == "test" else None)
        notes.append(style_panel(ax, key, drawn, next(iter(classes)) if len(classes) == 1 else None))
        ax.set_ylabel(label)
        style_epoch_axis(ax, max(len(j.history) for j in jobs))
    styles = [Line2D([], [], color="0.3", linestyle=s, label=split) for split, s in SPLIT_STYLES]
    handles, _ = axes[0].get_legend_handles_labels()
    axes[0].legend(handles=handles, loc="best", fontsize=8, title="job", title_fontsize=9)
    axes[1].legend(handles=styles + chance_handle(next(iter(classes)) if len(classes) == 1 else None),
                   loc="best", fontsize=8)
    set_title(fig, f"training metrics of {len(shown)} job{'s' if len(shown) > 1 else ''}",
              [_left_out([j for j in jobs if not j.history], "no finished epoch"), *notes, hidden.note()])
    return fig


def _epoch_profile(job: JobData, norm_kind: str, epoch: int | None,
                   main_path: bool) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(0-based epoch, relative depth 0..1, mean norm) per layer in ``epoch`` (None: the last); None if absent.
    ``main_path``: the stem and main-path convs only, placed by their position on that path."""
    block = job.series.get(norm_kind)
    if block is None or len(block) == 0:
        return None
    present, means, _ = job.means(norm_kind)
    epoch = present[-1] if epoch is None else epoch
    if epoch not in present:
        return None
    names = list(block.layers)
    cols = list(range(len(names)))
    if main_path and job.main_path(block.layers):
        main = set(job.main_path(block.layers))
        cols = [c for c, n in enumerate(names) if n in main]
        depths = np.arange(len(cols), dtype=np.float64)
    else:
        depths = np.array([job.depth_of(name, c) for c, name in enumerate(names)], dtype=np.float64)
    relative = (depths - depths.min()) / max(depths.max() - depths.min(), 1)
    return epoch, relative, means[present.index(epoch)][cols]


def compare_depth_figure(jobs: list[JobData], *, norm_kind: str, epochs: list[int] | None,
                         main_path: bool = False) -> Figure:
    """Mean norm in one epoch (each job's last by default) against relative depth 0..1, one line per job;
    ``main_path``: the stem and main-path convs only (VGG and ResNet line up conv by conv)."""
    if epochs is not None and len(epochs) != 1:
        raise PlotParameterError("epochs", "compare depth draws one epoch per job: pass at most one epoch, "
                                           f"got {epochs}")
    fig = new_figure()
    ax = fig.add_subplot()
    missing, drawn = [], 0
    for i, job in enumerate(jobs):
        found = _epoch_profile(job, norm_kind, epochs[0] - 1 if epochs else None, main_path)
        if found is None:
            missing.append(job)
            continue
        epoch, relative, y = found
        ax.plot(relative, np.where(y > 0, y, np.nan), color=_color(i), marker="o", markersize=3,
                label=f"{job_label(job)}, epoch {epoch + 1}, {len(y)} layers")
        drawn += 1
    if not drawn:
        which = f"epoch {epochs[0]}" if epochs else "any epoch"
        raise PlotDataError(f"none of the jobs has {norm_kind} gradient norms for {which}")
    log_axis(ax, "y")
    ax.set_xlim(-0.03, 1.03)
    ax.set_xlabel("relative depth on the main path (0 = stem conv, 1 = last conv)" if main_path else
                  "relative depth (0 = first tracked layer, 1 = last)")
    ax.set_ylabel(f"mean {norm_kind} gradient L2 norm")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    set_title(fig, f"{norm_kind} gradient norm against relative depth, {drawn} job{'s' if drawn > 1 else ''}",
              [_left_out(missing, f"no {norm_kind} norms for that epoch")])
    return fig


def compare_filters_figure(jobs: list[JobData]) -> Figure:
    """Each job's first-layer filters in its own panel, side by side."""
    have = [j for j in jobs if j.filters is not None and len(j.filters)]
    if not have:
        raise PlotDataError("none of the jobs has first-layer filters yet")
    ncols = min(len(jobs), 4)
    nrows = math.ceil(len(jobs) / ncols)
    fig = new_figure(figsize=(min(3.2 * ncols, 13.0), 3.4 * nrows + 0.6))
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax, job in zip(axes, jobs, strict=False):
        title = job_label(job)
        if job.filters is not None and len(job.filters):
            filters = require_filters(job)
            draw_filters(ax, filters)
            if job.filters_init is not None and np.shape(job.filters_init) == filters.shape:
                change = filter_change(np.asarray(job.filters_init, np.float64), filters.astype(np.float64))
                title += f"\n{change:.1%} from its initial filters"
        else:
            empty_panel(ax, "no filters yet")
        ax.set_title(title, fontsize=10)
    for ax in axes[len(jobs):]:
        ax.set_axis_off()
    set_title(fig, f"first conv layer filters of {len(jobs)} job{'s' if len(jobs) > 1 else ''}",
              ["how far each moved: ||learned - initial|| / ||initial|| of the scaled patterns"
               if any(j.filters_init is not None for j in jobs) else ""])
    return fig
