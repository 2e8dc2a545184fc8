"""Figures of the model itself: the first conv layer's filters, and what each layer costs."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deepgrad_core.plots.canvas import job_label, job_title, log_axis, new_figure, set_title
from deepgrad_core.plots.job import JobData, PlotDataError


def require_filters(job: JobData) -> np.ndarray:
    """The job's filters as ``[N, kh, kw, C]`` (C 1 or 3), or PlotDataError."""
    if job.filters is None or len(job.filters) == 0:
        raise PlotDataError(f"job {job.name!r} has no first-layer filters yet (they are saved with a checkpoint)")
    filters = np.asarray(job.filters, dtype=np.float32)
    if filters.ndim != 4 or filters.shape[-1] not in (1, 3):
        raise ValueError(f"filters must be [N, kh, kw, C] with C 1 or 3 (first_layer_filters' layout), "
                         f"got shape {filters.shape}")
    return filters


def draw_filters(ax: Axes, filters: np.ndarray, *, ncols: int | None = None) -> None:
    """Tile filters into one image: grayscale for one channel, RGB for three; each filter scaled to [0, 1]."""
    # filter_grid lives beside first_layer_filters, whose module imports torch: import it only when drawing.
    from deepgrad_core.analysis.filters import filter_grid

    finite = np.isfinite(filters)
    axes = (1, 2, 3)
    low = np.where(finite, filters, np.inf).min(axis=axes, keepdims=True)
    high = np.where(finite, filters, -np.inf).max(axis=axes, keepdims=True)
    usable = finite.any(axis=axes, keepdims=True) & (high > low)  # else the filter is drawn flat grey
    span = np.where(usable, high - low, 1.0)
    scaled = np.where(usable & finite, (filters - np.where(usable, low, 0.0)) / span, 0.5)
    grid = filter_grid(np.clip(scaled, 0, 1), pad=1, ncols=ncols, background=1.0)
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def filters_figure(job: JobData) -> Figure:
    """The first conv layer's filters as a grid of images, beside the same filters at initialization.

    Drawn side by side because after a few epochs learned filters often still look like their random start:
    the note gives how far they moved, ||learned - initial|| / ||initial||."""
    filters = require_filters(job)
    n, kh, kw, c = filters.shape
    colour = "RGB" if c == 3 else "grayscale"
    init = job.filters_init
    if init is None or np.shape(init) != filters.shape:
        fig = new_figure(figsize=(7.0, 7.0))
        draw_filters(fig.add_subplot(), filters)
        set_title(fig, job_title(job, "first conv layer filters"),
                  [f"{n} filters of {kh}x{kw}, {colour}, each scaled to its own min..max"])
        return fig
    fig = new_figure(figsize=(12.0, 6.6))
    left, right = fig.subplots(1, 2)
    draw_filters(left, np.asarray(init, np.float32))
    left.set_title("at initialization", fontsize=10)
    draw_filters(right, filters)
    epochs = len(job.history)
    right.set_title(f"learned (after {epochs} epoch{'s' if epochs != 1 else ''})", fontsize=10)
    set_title(fig, job_title(job, "first conv layer filters, initial and learned"),
              [f"{n} filters of {kh}x{kw}, {colour}, each scaled to its own min..max; the learned patterns differ "
               f"from the initial ones by {filter_change(np.asarray(init, np.float64), filters.astype(np.float64)):.1%}"
               " (||learned - initial|| / ||initial||)"])
    return fig


def filter_change(init: np.ndarray, learned: np.ndarray) -> float:
    """||learned - initial|| / ||initial|| over all filters (NaN when undefined)."""
    base = float(np.linalg.norm(init))
    return float(np.linalg.norm(learned - init)) / base if base > 0 and np.isfinite(base) else float("nan")


def _si(total: float) -> str:
    """``11.3 M``, ``950 k``, ``12``."""
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if total >= div:
            return f"{total / div:.3g} {prefix}"
    return f"{total:.3g}"


FLOPS_LABEL = "FLOPs per image (1 multiply-add = 2 FLOPs)"


def cost_figure(job: JobData) -> Figure:
    """Parameters and FLOPs per conv and linear layer, side by side, on log axes (they span orders of magnitude)."""
    layers: list[dict[str, Any]] = (job.cost or {}).get("layers") or []
    if not layers:
        raise PlotDataError(f"job {job.name!r} has no cost report")
    names = [la["name"] for la in layers]
    fig = new_figure(figsize=(9.0, max(4.0, 1.2 + 0.22 * len(names))))
    axes = fig.subplots(1, 2, sharey=True)
    rows = np.arange(len(names))
    for ax, key, label, color in ((axes[0], "params", "parameters", "tab:blue"),
                                  (axes[1], "flops", FLOPS_LABEL, "tab:orange")):
        values = np.array([float(la.get(key) or 0) for la in layers])
        ax.barh(rows, np.where(values > 0, values, np.nan), color=color)
        log_axis(ax, "x")
        ax.set_xlabel(label)
        ax.set_title(f"{label.split(' (')[0]}: {_si(values.sum())} in these layers", fontsize=10)
        ax.grid(True, axis="x", which="major", alpha=0.3)
    axes[0].set_yticks(rows, names, fontsize=8)
    axes[0].invert_yaxis()  # input side at the top
    axes[0].set_ylabel("layer (conv and linear, input side at the top)")
    cost = job.cost or {}
    whole = [f"{_si(cost['total_params'])} parameters" if cost.get("total_params") else "",
             f"{_si(cost['flops_per_image'])} FLOPs per image (= {_si(cost['flops_per_image'] / 2)} multiply-adds)"
             if cost.get("flops_per_image") else ""]
    whole = [w for w in whole if w]
    set_title(fig, job_title(job, "cost per conv and linear layer"),
              ["whole model: " + ", ".join(whole)] if whole else [])
    return fig


# What the cost comparison shows, per model: key in the cost report, axis label, colour.
COST_MEASURES = (("total_params", "parameters", "tab:blue"), ("flops_per_image", FLOPS_LABEL, "tab:orange"),
                 ("activation_bytes_per_image", "activation memory per image (bytes, training)", "tab:green"),
                 ("peak_train_step_bytes", "peak GPU memory of a training step (bytes)", "tab:red"))


def compare_cost_figure(jobs: list[JobData]) -> Figure:
    """The original study's cost table as bars: parameters, FLOPs, memory of each model side by side."""
    have = [j for j in jobs if j.cost]
    if not have:
        raise PlotDataError("none of the jobs has a cost report yet (it is written when a job starts)")
    measures = [m for m in COST_MEASURES if any((j.cost or {}).get(m[0]) for j in have)]
    fig = new_figure(figsize=(4.0 * len(measures), max(3.2, 1.4 + 0.45 * len(have))))
    axes = np.atleast_1d(fig.subplots(1, len(measures), sharey=True))
    rows = np.arange(len(have))
    for ax, (key, label, color) in zip(axes, measures, strict=True):
        values = np.array([float((j.cost or {}).get(key) or 0) for j in have])
        bars = ax.barh(rows, np.where(values > 0, values, np.nan), color=color)
        for bar, value in zip(bars, values, strict=True):
            if value > 0:
                ax.annotate(_si(value), (bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=8)
        ax.set_xlabel(label, fontsize=9)
        ax.set_xlim(0, values.max() * 1.35 if values.max() > 0 else 1)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(rows, [job_label(j) for j in have], fontsize=8)
    axes[0].invert_yaxis()
    missing = [j.name for j in jobs if not j.cost]
    set_title(fig, f"cost of {len(have)} model{'s' if len(have) > 1 else ''}",
              ["1 multiply-add = 2 FLOPs (ResNet-18 at 32x32: 0.56 G multiply-adds = 1.11 GFLOPs)",
               f"no cost report yet: {', '.join(missing)}" if missing else ""])
    return fig
