"""The two entry points: one job's figure of a kind, or several jobs compared; parameters checked here."""

from __future__ import annotations

from matplotlib.figure import Figure

from deepgrad_core.norms import KINDS
from deepgrad_core.plots.compare import compare_depth_figure, compare_filters_figure, compare_metrics_figure
from deepgrad_core.plots.gradients import depth_figure, heatmap_figure, norms_figure, selected_figure
from deepgrad_core.plots.histograms import compare_histogram_figure, histogram_figure
from deepgrad_core.plots.job import JobData, PlotParameterError
from deepgrad_core.plots.metrics import metrics_figure
from deepgrad_core.plots.model import compare_cost_figure, cost_figure, filters_figure
from deepgrad_core.plots.ratio import compare_ratio_figure, ratio_figure

JOB_KINDS = ("norms", "selected", "heatmap", "depth", "ratio", "metrics", "filters", "cost", "histogram")
COMPARE_KINDS = ("metrics", "depth", "ratio", "filters", "cost", "histogram")
# The whole model's norm is one series: it has no layers to select, stack or place along depth.
_PER_LAYER_ONLY = ("selected", "heatmap", "depth", "ratio")
MAX_POINTS_RANGE = (10, 100_000)
MAX_SMOOTH = 10_000
MAX_COMPARE_JOBS = 12


def _check(kind: str, allowed: tuple[str, ...], *, norm_kind: str, smooth: int, max_points: int,
           epochs: list[int] | None) -> None:
    """PlotParameterError, naming what is allowed, for an unknown kind or an out-of-range parameter."""
    if kind not in allowed:
        raise PlotParameterError("kind", f"plot kind must be one of {list(allowed)}, got {kind!r}")
    kinds = [k for k in KINDS if k != "global" or kind not in _PER_LAYER_ONLY]
    if norm_kind not in kinds:
        raise PlotParameterError("norm_kind", f"norm kind for {kind!r} must be one of {kinds}, got {norm_kind!r}")
    if not 0 <= smooth <= MAX_SMOOTH:
        raise PlotParameterError("smooth", f"smooth must be a window of 0..{MAX_SMOOTH} records (0 or 1: off), "
                                           f"got {smooth}")
    lo, hi = MAX_POINTS_RANGE
    if not lo <= max_points <= hi:
        raise PlotParameterError("max_points", f"max_points must be in {lo}..{hi}, got {max_points}")
    if epochs is not None and (not epochs or any(e < 1 for e in epochs)):
        raise PlotParameterError("epochs", "epochs must be a non-empty list of epoch numbers counted from 1, "
                                           f"got {epochs}")


def render_job(kind: str, job: JobData, *, norm_kind: str = "weight", layers: list[str] | None = None,
               epochs: list[int] | None = None, smooth: int = 0, max_points: int = 2000,
               main_path: bool = False) -> Figure:
    """One job's figure of ``kind`` (one of ``JOB_KINDS``).

    ``norm_kind``, ``layers`` (names, e.g. ``["conv2", "conv5"]``), ``smooth`` (moving-average window in
    records) and ``max_points`` (per line, min/max downsampled) apply to the norm kinds; ``epochs``
    (numbered from 1, as the figures label them) and ``main_path`` (only the stem and main-path convs, no
    1x1 reducer or shortcut, unless ``layers`` says otherwise) to ``depth``. Raises ValueError for a bad kind or
    parameter, PlotDataError (a ValueError) when the job lacks the data the figure needs.
    """
    _check(kind, JOB_KINDS, norm_kind=norm_kind, smooth=smooth, max_points=max_points, epochs=epochs)
    series = {"norm_kind": norm_kind, "layers": layers, "smooth": smooth, "max_points": max_points}
    if kind == "norms":
        return norms_figure(job, **series)
    if kind == "selected":
        return selected_figure(job, **series)
    if kind == "heatmap":
        return heatmap_figure(job, **series)
    if kind == "depth":
        return depth_figure(job, norm_kind=norm_kind, layers=layers, epochs=epochs, main_path=main_path)
    if kind == "ratio":
        return ratio_figure(job)
    if kind == "metrics":
        return metrics_figure(job)
    if kind == "filters":
        return filters_figure(job)
    if kind == "histogram":
        return histogram_figure(job, layers=layers)
    return cost_figure(job)


def render_compare(kind: str, jobs: list[JobData], *, norm_kind: str = "weight",
                   epochs: list[int] | None = None, main_path: bool = False, layers: list[str] | None = None) -> Figure:
    """Several jobs on one figure: ``metrics`` (train and test), ``depth`` (one epoch, each job's last by default),
    ``ratio`` (first/last main-path layer per epoch), ``filters``, ``cost`` (parameters, FLOPs, memory) or
    ``histogram`` (one layer's gradient distribution, ``layers=[name]``, default each job's first main-path)."""
    _check(kind, COMPARE_KINDS, norm_kind=norm_kind, smooth=0, max_points=MAX_POINTS_RANGE[0], epochs=epochs)
    if not 1 <= len(jobs) <= MAX_COMPARE_JOBS:
        raise PlotParameterError("ids", f"compare needs 1..{MAX_COMPARE_JOBS} jobs, got {len(jobs)}")
    if kind == "metrics":
        return compare_metrics_figure(jobs)
    if kind == "depth":
        return compare_depth_figure(jobs, norm_kind=norm_kind, epochs=epochs, main_path=main_path)
    if kind == "ratio":
        return compare_ratio_figure(jobs, norm_kind=norm_kind)
    if kind == "cost":
        return compare_cost_figure(jobs)
    if kind == "histogram":
        return compare_histogram_figure(jobs, layers=layers)
    return compare_filters_figure(jobs)
