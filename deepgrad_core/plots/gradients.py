"""Per-job figures of gradient norms: over steps (all layers or a few), as a heatmap, against depth."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from deepgrad_core.norms import NormBlock
from deepgrad_core.plots.canvas import (
    DEPTH_CMAP,
    EPOCH_CMAP,
    depth_colors,
    empty_panel,
    job_title,
    log10_colorbar_ticks,
    log_axis,
    new_figure,
    pixel_columns,
    set_title,
    step_axis,
)
from deepgrad_core.plots.job import JobData, PlotDataError, PlotParameterError
from deepgrad_core.plots.series import (
    Hidden,
    binned_log10,
    default_selected,
    mask_hidden,
    moving_average,
)
from deepgrad_core.series import downsample

_MARKERS_BELOW = 50  # points per line under which each point gets a marker (a single point is otherwise invisible)
_MAX_TICK_LABELS = 24
# Norm-over-step figures draw thousands of points per layer: fixed margins (inches: left, right, top,
# bottom) instead of constrained layout keep them within their time budget. Right: room for a depth
# colorbar's layer-name ticks or a legend; top: a two-line title over the epoch axis.
_LINE_MARGINS = (0.85, 1.3, 1.05, 0.55)


def columns(block: NormBlock, layers: list[str] | None) -> list[int]:
    """Indices of ``layers`` in the block (all of them for None); PlotParameterError naming the ones it has."""
    if layers is None:
        return list(range(len(block.layers)))
    unknown = [name for name in layers if name not in block.layers]
    if unknown or not layers:
        raise PlotParameterError("layers", f"layers must name recorded {block.kind} layers, one of "
                                           f"{list(block.layers)}; got {list(layers)}")
    return [block.layers.index(name) for name in dict.fromkeys(layers)]


def _lines(ax: Axes, job: JobData, block: NormBlock, cols: list[int], colors: list, *, smooth: int,
           max_points: int) -> list[str]:
    """One log-scale line per column, smoothed then min/max-downsampled; returns notes for the title.

    A line gets at most ``max_points`` points, and at most a min and a max per pixel column:
    more would cost drawing time and show nothing more.
    """
    values, hidden = mask_hidden(block.values[:, cols], log=True)
    points = min(max_points, 2 * pixel_columns(ax))
    x, y = downsample(block.steps, moving_average(values, smooth), points, nonfinite="hide")
    marker = "o" if len(x) < _MARKERS_BELOW else None
    for j, color in enumerate(colors):
        ax.plot(x, y[:, j], color=color, linewidth=0.9, marker=marker, markersize=3,
                label=f"{block.layers[cols[j]]} (depth {job.depth_of(block.layers[cols[j]], cols[j])})")
    log_axis(ax, "y")
    ax.set_ylabel(f"{block.kind} gradient L2 norm")
    ax.grid(True, which="major", alpha=0.3)
    if np.isnan(values).all():
        empty_panel(ax, "every value is NaN, inf or zero: nothing to draw on a log axis")
    else:
        step_axis(ax, job.steps_per_epoch, float(block.steps[0]), float(block.steps[-1]))
    return _notes(job, block, hidden, smooth, points)


def _reduced_note(job: JobData, block: NormBlock) -> str:
    """``"from min/max rows of 2000000 records"`` when the figure was given a reduced series."""
    recorded = job.recorded.get(block.kind, len(block))
    return f"from min/max rows of {recorded} records" if recorded > len(block) else ""


def _notes(job: JobData, block: NormBlock, hidden: Hidden, smooth: int, points: int) -> list[str]:
    """What the title should say about the data drawn: hidden values, smoothing, downsampling."""
    notes = [hidden.note(), _reduced_note(job, block)]
    if smooth > 1:
        notes.append(f"moving average of {smooth}")
    if len(block) > points:
        notes.append(f"{len(block)} records as min/max of {points // 2} buckets")
    return notes


def norms_figure(job: JobData, *, norm_kind: str, layers: list[str] | None, smooth: int,
                 max_points: int) -> Figure:
    """Every tracked layer's gradient norm over steps, coloured by depth (a depth colorbar, no legend).

    ``global`` is one series, the whole model's norm before clipping: one line, no colorbar.
    """
    block = job.block(norm_kind)
    cols = columns(block, layers)
    depths = [job.depth_of(block.layers[c], c) for c in cols]
    colors, norm = depth_colors(depths)
    fig = new_figure(margins=_LINE_MARGINS)
    ax = fig.add_subplot()
    if norm_kind == "global":
        colors, what = ["tab:blue"], "whole-model gradient norm (before clipping)"
    else:
        what = f"{norm_kind} gradient norm per layer"
    notes = _lines(ax, job, block, cols, colors, smooth=smooth, max_points=max_points)
    if len(cols) > 1:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colormaps[DEPTH_CMAP]), ax=ax, pad=0.015, fraction=0.03)
        bar.set_label("layer depth (0 = input side)")
        _name_depth_ticks(bar.ax, [block.layers[c] for c in cols], depths)
    elif norm_kind != "global":
        ax.legend(loc="best", fontsize=9)
    set_title(fig, job_title(job, what), notes)
    return fig


def _name_depth_ticks(cax: Axes, names: list[str], depths: list[int]) -> None:
    """Colorbar ticks at a few depths, labelled with the layer there."""
    order = np.argsort(depths)
    picks = np.unique(np.linspace(0, len(order) - 1, min(len(order), 8)).round().astype(int))
    cax.set_yticks([depths[order[i]] for i in picks], [f"{names[order[i]]} ({depths[order[i]]})" for i in picks],
                   fontsize=8)


def selected_figure(job: JobData, *, norm_kind: str, layers: list[str] | None, smooth: int,
                    max_points: int) -> Figure:
    """A few layers' norms over steps, with a legend: by default the 2nd, 5th, 8th and deepest conv."""
    block = job.block(norm_kind)
    if layers is None:
        layers = default_selected(block.layers, job.roles())
    cols = columns(block, layers)
    left, _, top, bottom = _LINE_MARGINS
    fig = new_figure(margins=(left, 1.75, top, bottom))  # the legend's "conv13 (depth 12)" is wider than a colorbar
    ax = fig.add_subplot()
    palette = colormaps["tab10"]
    notes = _lines(ax, job, block, cols, [palette(i % 10) for i in range(len(cols))], smooth=smooth,
                   max_points=max_points)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, title="layer",
              title_fontsize=9)  # beside the axes, never over the data
    set_title(fig, job_title(job, f"{norm_kind} gradient norm of selected layers"), notes)
    return fig


def heatmap_figure(job: JobData, *, norm_kind: str, layers: list[str] | None, smooth: int,
                   max_points: int) -> Figure:
    """Layer x step image of log10 norm: vanishing gradients show as dark rows at the input side."""
    block = job.block(norm_kind)
    cols = columns(block, layers)
    values, hidden = mask_hidden(block.values[:, cols], log=True)
    grid, (lo, hi) = binned_log10(block.steps, moving_average(values, smooth), max_points)
    fig = new_figure()
    ax = fig.add_subplot()
    names = [block.layers[c] for c in cols]
    if np.isnan(grid).all():
        empty_panel(ax, "every value is NaN, inf or zero: nothing to draw on a log scale")
    else:
        cmap = colormaps["magma"].with_extremes(bad="0.85")
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, interpolation="nearest",
                          extent=(lo, hi, len(cols) - 0.5, -0.5))
        bar = fig.colorbar(image, ax=ax, pad=0.01, label=f"{norm_kind} gradient L2 norm (log scale)")
        log10_colorbar_ticks(bar.ax)
        _layer_ticks(ax, names, axis="y")
        ax.set_ylabel("layer (input side at top)")
        step_axis(ax, job.steps_per_epoch, lo, hi, marks=False)
    notes = [hidden.note(), _reduced_note(job, block), f"moving average of {smooth}" if smooth > 1 else ""]
    if len(block) > grid.shape[1]:
        notes.append(f"{len(block)} records as log-mean of {grid.shape[1]} columns")
    set_title(fig, job_title(job, f"{norm_kind} gradient norm, layer x step"), notes)
    return fig


def _layer_ticks(ax: Axes, names: list[str], axis: str, positions: list[float] | None = None) -> None:
    """Layer names as tick labels, thinned to at most ``_MAX_TICK_LABELS``."""
    positions = list(range(len(names))) if positions is None else positions
    every = max(1, -(-len(names) // _MAX_TICK_LABELS))
    ticks, labels = positions[::every], names[::every]
    if axis == "y":
        ax.set_yticks(ticks, labels, fontsize=8)
    else:
        ax.set_xticks(ticks, labels, fontsize=8, rotation=45 if len(ticks) > 8 else 0,
                      ha="right" if len(ticks) > 8 else "center")


def pick_epochs(present: list[int], epochs: list[int] | None, job: JobData) -> list[int]:
    """0-based epochs to draw: ``epochs`` (1-based, as figures label them) or the first, middle and last."""
    if epochs is None:
        return sorted({present[0], present[len(present) // 2], present[-1]})
    missing = [e for e in epochs if e - 1 not in present]
    if missing:
        raise PlotDataError(f"job {job.name!r} has no norms for epoch(s) {missing}; epochs with norms: "
                            f"{present[0] + 1}..{present[-1] + 1} (numbered from 1)")
    return [e - 1 for e in dict.fromkeys(epochs)]


def depth_figure(job: JobData, *, norm_kind: str, layers: list[str] | None, epochs: list[int] | None,
                 main_path: bool = False) -> Figure:
    """Mean norm per layer against depth, one line per chosen epoch (first, middle, last by default);
    ``main_path``: the stem and main-path convs only."""
    block = job.block(norm_kind)
    if main_path and layers is None:
        layers = job.main_path(block.layers) or None
    cols = columns(block, layers)
    present, means, bad_steps = job.means(norm_kind)
    chosen = pick_epochs(present, epochs, job)
    depths = [job.depth_of(block.layers[c], c) for c in cols]
    fig = new_figure()
    ax = fig.add_subplot()
    colormap = colormaps[EPOCH_CMAP]
    for i, epoch in enumerate(chosen):
        y = means[present.index(epoch), cols]
        y = np.where(y > 0, y, np.nan)
        ax.plot(depths, y, marker="o", markersize=4, color=colormap(0.85 * i / max(len(chosen) - 1, 1)),
                label=f"epoch {epoch + 1}" + (" (so far)" if job.state == "running" and epoch == present[-1] else ""))
    log_axis(ax, "y")
    _layer_ticks(ax, [block.layers[c] for c in cols], axis="x", positions=depths)
    ax.set_xlabel("layer (input side on the left)")
    ax.set_ylabel(f"mean {norm_kind} gradient L2 norm")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    note = f"{bad_steps} step{'s' if bad_steps != 1 else ''} with NaN/inf left out of the means" if bad_steps else ""
    set_title(fig, job_title(job, f"{norm_kind} gradient norm against depth"), [note])
    return fig
