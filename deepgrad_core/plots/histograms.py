"""How gradient values spread, per layer (Glorot & Bengio 2010's figure): the fraction of a layer's weight-gradient
elements in each log10 |g| bin, at the first recorded step and at the last; and one layer across jobs."""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from deepgrad_core.histograms import BINS, EDGES, HIGH, LOW, HistBlock, density
from deepgrad_core.plots.canvas import depth_colors, job_label, job_title, new_figure, power_of_ten, set_title
from deepgrad_core.plots.job import JobData, PlotDataError, PlotParameterError

CENTERS = (EDGES[:-1] + EDGES[1:]) / 2


def _block(job: JobData) -> HistBlock:
    block = job.histograms
    if block is None or len(block) == 0:
        raise PlotDataError(f"job {job.name!r} has no gradient histograms (tracking.histogram_every is 0, or no "
                            "sampled step has been recorded yet)")
    return block


def _layers(job: JobData, block: HistBlock, layers: list[str] | None) -> list[str]:
    if layers:
        unknown = [name for name in layers if name not in block.layers]
        if unknown:
            raise PlotParameterError("layers", f"unknown layer(s) {unknown}; recorded: {', '.join(block.layers)}")
        return layers
    return job.main_path(block.layers) or list(block.layers)


def _axis(ax: Axes) -> None:
    ticks = np.arange(np.ceil(LOW), HIGH + 1, 2)
    ax.set_xticks(ticks, [power_of_ten(int(t)) for t in ticks])
    ax.set_xlim(LOW, HIGH)
    ax.set_xlabel("|gradient| of a weight element")
    ax.grid(alpha=0.3)


def histogram_figure(job: JobData, *, layers: list[str] | None = None) -> Figure:
    """Two panels, the first and the last recorded step: each layer's distribution, coloured by depth."""
    block = _block(job)
    names = _layers(job, block, layers)
    columns = [block.layers.index(name) for name in names]
    depths = [job.depth_of(name, i) for i, name in enumerate(names)]
    colors, norm = depth_colors(depths)
    fig = new_figure((11.0, 4.8))
    first, last = 0, len(block) - 1
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    share = density(block.counts[[first, last]][:, columns].astype(np.float64))  # [2, layers, bins]
    # The end bins hold everything below 10^LOW (exact zeros: dead units) and above 10^HIGH: a spike there would
    # flatten every other curve, so the axis fits the inner bins and the title says how much the ends hold.
    inner = float(share[..., 1:-1].max())
    top = max(inner if inner > 0 else float(share.max()), 1e-6) * 1.12
    for panel, (ax, row) in enumerate(zip(axes, (first, last), strict=True)):
        for j, name in enumerate(names):
            ax.plot(CENTERS, share[panel, j], color=colors[j], linewidth=1.3,
                    label=name if len(names) <= 12 else None)
        _axis(ax)
        ax.set_ylim(0, top)
        epoch = int(block.steps[row]) // job.steps_per_epoch + 1
        ax.set_title(f"step {int(block.steps[row]):,} (epoch {epoch})", fontsize=10)
    axes[0].set_ylabel("fraction of the layer's gradient elements")
    if len(names) <= 12:
        axes[1].legend(fontsize=7, loc="upper left", ncol=2 if len(names) > 6 else 1)
    else:
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=axes, label="layer depth")
    notes = [] if len(block) > 1 else ["one recorded step so far"]
    low_end, high_end = float(share[..., 0].max()), float(share[..., -1].max())
    if low_end > top / 1.12:
        notes.append(f"up to {low_end:.0%} of a layer's elements are below {power_of_ten(int(LOW))} (zeros "
                     "included), off the scale")
    if high_end > top / 1.12:
        notes.append(f"up to {high_end:.0%} above {power_of_ten(int(HIGH))} or not finite, off the scale")
    set_title(fig, job_title(job, "weight-gradient distribution per layer, first and last recorded step"), notes)
    return fig


def compare_histogram_figure(jobs: list[JobData], *, layers: list[str] | None = None) -> Figure:
    """One layer (default: each job's first main-path layer) at each job's last recorded step, jobs overlaid."""
    if layers is not None and len(layers) != 1:
        raise PlotParameterError("layers", f"a histogram compares one layer across jobs, got {len(layers)}")
    fig = new_figure()
    ax = fig.add_subplot()
    drawn, names = 0, set()
    for i, job in enumerate(jobs):
        block = job.histograms
        if block is None or len(block) == 0:
            continue
        name = layers[0] if layers else (job.main_path(block.layers) or list(block.layers))[0]
        if name not in block.layers:
            raise PlotParameterError("layers", f"job {job.name!r} has no layer {name!r}")
        share = density(block.counts[-1, block.layers.index(name)].astype(np.float64))
        ax.plot(CENTERS, share, color=f"C{i % 10}", linewidth=1.5,
                label=f"{job_label(job)}: {name}, step {int(block.steps[-1]):,}")
        drawn += 1
        names.add(name)
    if not drawn:
        raise PlotDataError("none of these jobs has gradient histograms yet")
    _axis(ax)
    ax.set_xlabel("|gradient| of a weight element (end bins: everything below / above, zeros and NaN included)")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("fraction of the layer's gradient elements")
    ax.legend(fontsize=8, loc="upper left")
    what = f"layer {names.pop()}" if len(names) == 1 else "each job's first main-path layer"
    set_title(fig, f"weight-gradient distribution of {what}, last recorded step, {drawn} jobs",
              [] if drawn == len(jobs) else [f"{len(jobs) - drawn} job(s) without histograms left out"])
    return fig


assert len(CENTERS) == BINS
