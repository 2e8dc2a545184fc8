"""Figures from a run folder of ``deepgrad-train`` (``runs/<name>/``), without a server.

    from deepgrad_core.plots.files import load_run, write_figures
    job = load_run("runs/vgg_deep")              # a JobData
    write_figures("runs/vgg_deep", "runs/vgg_deep/plots")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from deepgrad_core.histograms import HistBlock
from deepgrad_core.norms import KINDS, NormBlock
from deepgrad_core.plots.canvas import to_png
from deepgrad_core.plots.job import JobData, PlotDataError
from deepgrad_core.plots.render import JOB_KINDS, render_job

log = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """The folder is not a finished ``deepgrad-train`` run (no result.json), or a file in it is unreadable."""


def read_norms_csv(path: Path, kind: str) -> NormBlock:
    """A ``norms_<kind>.csv`` (``step,<layer>,...``; nan/inf as text) back as a ``NormBlock``."""
    with path.open() as f:
        header = f.readline().strip().split(",")
    if not header or header[0] != "step":
        raise RunFolderError(f"{path} does not start with a 'step,<layer>,...' header")
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    if table.size == 0:
        table = np.zeros((0, len(header)))
    return NormBlock(kind, table[:, 0].astype(np.int64), tuple(header[1:]), table[:, 1:].astype(np.float32))


def _array(path: Path) -> np.ndarray | None:
    return np.load(path, allow_pickle=False) if path.is_file() else None


def load_run(run_dir: str | Path) -> JobData:
    """The figures' view of a run folder: result.json, history.json, norms_<kind>.csv, filters*.npy, histograms."""
    run = Path(run_dir)
    try:
        result = json.loads((run / "result.json").read_text())
        history = json.loads((run / "history.json").read_text()) if (run / "history.json").is_file() else []
    except FileNotFoundError as err:
        raise RunFolderError(f"{run} holds no result.json: not a finished deepgrad-train run folder "
                             "(train into it with: deepgrad-train SPEC --out FOLDER)") from err
    except (OSError, ValueError) as err:
        raise RunFolderError(f"cannot read {run}: {err}") from err
    series = {kind: read_norms_csv(run / f"norms_{kind}.csv", kind) for kind in KINDS
              if (run / f"norms_{kind}.csv").is_file()}
    spec = result.get("spec") or {}
    return JobData(name=run.name, layers=result.get("layers") or [],
                   steps_per_epoch=int(result.get("steps_per_epoch") or 1), series=series, history=history,
                   cost=result.get("cost"), filters=_array(run / "filters.npy"),
                   filters_init=_array(run / "filters_init.npy"), state=result.get("status", "succeeded"),
                   num_classes=(spec.get("model") or {}).get("num_classes"),
                   vanishing_fraction=(spec.get("tracking") or {}).get("vanishing_fraction", 1e-3),
                   histograms=_histograms(run, result))


def _histograms(run: Path, result: dict) -> HistBlock | None:
    """``histograms.npy`` (float32 [steps, layers, bins]) with ``histogram_steps.npy``; layers as result.json's."""
    counts, steps = _array(run / "histograms.npy"), _array(run / "histogram_steps.npy")
    if counts is None or steps is None:
        return None
    names = tuple(la["name"] for la in result.get("layers") or [])
    try:
        return HistBlock(steps.astype(np.int64), names, counts.astype(np.float32))
    except ValueError as err:
        raise RunFolderError(f"{run}: histograms.npy does not match its layers or steps: {err}") from err


def write_figures(run_dir: str | Path, out_dir: str | Path, kinds: tuple[str, ...] = JOB_KINDS,
                  **options: object) -> list[Path]:
    """Every figure of ``kinds`` the run has data for, as ``<out_dir>/<kind>.png`` (plus the activation
    variants of the norm figures when recorded); returns the files written."""
    job = load_run(run_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in kinds:
        variants = [("weight", kind)]
        if kind in ("norms", "heatmap", "depth") and "activation" in job.series:
            variants.append(("activation", f"{kind}-activation"))
        for norm_kind, stem in variants:
            try:
                png = to_png(render_job(kind, job, norm_kind=norm_kind, **options))
            except PlotDataError as err:  # a figure whose data the run lacks: say so, draw the others
                log.info("no %s figure: %s", stem, err)
                continue
            path = out / f"{stem}.png"
            path.write_bytes(png)
            written.append(path)
    return written
