"""Figures of a job's data: pure functions from stored data to a matplotlib ``Figure``.

No pyplot: every figure has its own Agg canvas, so rendering keeps no global state and several
threads may render at once. The server serves these as PNG; the CLI saves them.

    from deepgrad_core.plots import JobData, render_job, to_png
    job = JobData.from_result(result, "vgg-deep")
    png = to_png(render_job("heatmap", job, norm_kind="activation"))

Per job (``JOB_KINDS``): ``norms``, ``selected``, ``heatmap``, ``depth``, ``ratio``, ``metrics``,
``filters``, ``cost``; across jobs (``COMPARE_KINDS``): ``metrics``, ``depth``, ``ratio``, ``filters``,
``cost``. A run folder of ``deepgrad-train`` loads with ``JobData.from_run_dir``. A bad kind or
parameter raises ``PlotParameterError`` (a ValueError carrying the parameter's name) naming the allowed
values; data a figure needs but the job does not have (yet) raise ``PlotDataError``, a ValueError subclass.
"""

from deepgrad_core.plots.canvas import DPI, FIGSIZE, to_png
from deepgrad_core.plots.job import JobData, PlotDataError, PlotParameterError
from deepgrad_core.plots.render import COMPARE_KINDS, JOB_KINDS, render_compare, render_job

__all__ = ["COMPARE_KINDS", "DPI", "FIGSIZE", "JOB_KINDS", "JobData", "PlotDataError", "PlotParameterError",
           "render_compare",
           "render_job", "to_png"]
