"""A local run: one experiment on this machine, written into a run folder (``deepgrad-train``'s work).

``FolderSink`` writes the folder as the run goes; ``run_local`` prepares the experiment, runs it into the folder
and returns what it wrote. Nothing here prints or exits: ``deepgrad_core.cli`` does, and imports this module
(torch) only once its arguments parse.

The folder: ``spec.json`` (the resolved spec), ``history.json`` (per-epoch metrics), ``result.json`` (status,
final metrics, per-class report, confusion, vanishing summary, environment, layers, cost), ``norms_<kind>.csv``
(``step``, then one column per tracked layer), ``filters.npy`` / ``filters_init.npy`` (the first conv's
filters, learned and at initialization), ``histograms.npy`` / ``histogram_steps.npy`` (weight-gradient histograms
on sampled steps, layers as in result.json), ``plots/<kind>.png`` when asked, and ``checkpoint/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepgrad_core.analysis import first_layer_filters
from deepgrad_core.experiment import Experiment, Sink, prepare
from deepgrad_core.norms import NormBlock
from deepgrad_core.series import csv_header, csv_rows
from deepgrad_core.spec import ExperimentSpec
from deepgrad_core.strict_json import strict_json
from deepgrad_core.training import TrainResult
from deepgrad_core.training.checkpoint import CHECKPOINT_NAME

log = logging.getLogger("deepgrad_core.cli")

OUTPUTS = ("spec.json", "history.json", "result.json")
ARRAYS = ("filters.npy", "filters_init.npy")
HISTOGRAMS = ("histograms.npy", "histogram_steps.npy")  # [steps, layers, bins] counts, and their steps
CHECKPOINT_DIR = "checkpoint"


@dataclass
class LocalRun:
    """What ``run_local`` did: the result, ``result.json``'s content, and the figures drawn (if asked)."""

    result: TrainResult
    report: dict[str, Any]
    epochs_trained: int  # by this call: a resumed run skips those its checkpoint holds
    figures: list[Path] = field(default_factory=list)


def run_local(spec: ExperimentSpec, out: Path, *, data_root: Path | None = None,
              device: str | torch.device | None = None, resume: bool = True, plots: bool = False,
              should_stop: Callable[[], bool] | None = None) -> LocalRun:
    """Run ``spec`` here into the folder ``out``, continuing its checkpoint when ``resume``.

    Raises ``DataError`` (data set missing; nothing written), ``CheckpointMismatch`` (``out`` holds another
    spec's checkpoint; nothing written) and device errors from ``choose_device``."""
    experiment = prepare(spec, data_root=data_root, device=device)
    sink = FolderSink(out, resume=resume)
    result = experiment.run(sink, should_stop=should_stop, checkpoint_dir=out / CHECKPOINT_DIR, resume=resume)
    figures = []
    if plots:
        from deepgrad_core.plots.files import write_figures

        figures = write_figures(out, out / "plots")
        log.info("wrote %d figures into %s", len(figures), out / "plots")
    return LocalRun(result=result, report=sink.report, epochs_trained=sink.epochs_trained, figures=figures)


class FolderSink(Sink):
    """Writes a run folder: the spec and initial filters at start, a log line per epoch, the rest at the end."""

    def __init__(self, out: Path, *, resume: bool = True) -> None:
        self.out, self.resume_allowed = out, resume
        self.experiment: Experiment | None = None
        self.epochs_trained = 0
        self.report: dict[str, Any] = {}

    def start(self, experiment: Experiment, *, resuming: bool) -> None:
        out, spec = self.out, experiment.spec
        self.experiment = experiment
        if not self.resume_allowed:  # a fresh start: drop the previous run's files
            for stale in [out / CHECKPOINT_DIR / CHECKPOINT_NAME,
                          *(out / name for name in (*OUTPUTS, *ARRAYS, *HISTOGRAMS)),
                          *out.glob("norms_*.csv"), *out.glob("plots/*.png")]:
                stale.unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec.json").write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
        np.save(out / "filters_init.npy", experiment.filters_init, allow_pickle=False)  # the seed's init, always
        cost = experiment.cost
        log.info("%s: %.2fM params, %.3f GFLOP/image (FLOPs = 2 x multiply-adds); %d train / %d test images on "
                 "%s; writing to %s", spec.model.arch, cost.total_params / 1e6, cost.flops_per_image / 1e9,
                 len(experiment.train_data), len(experiment.test_data), experiment.device, out)

    def epoch(self, metrics: dict[str, Any]) -> None:
        self.epochs_trained += 1
        m, epochs = metrics, self.experiment.spec.train.epochs
        log.info(f"epoch {m['epoch'] + 1}/{epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:6.1%}  "
                 f"test loss {m['test_loss']:.4f} acc {m['test_acc']:6.1%}  lr {m['lr']:.3g}  "
                 f"{m['images_per_sec']:.0f} img/s  {m['seconds']:.1f} s")

    def finish(self, result: TrainResult) -> None:
        out = self.out
        np.save(out / "filters.npy", first_layer_filters(self.experiment.model), allow_pickle=False)
        norm_files = write_norms_csv(out, result.norms)
        if result.histograms is not None:
            np.save(out / "histograms.npy", result.histograms.counts, allow_pickle=False)
            np.save(out / "histogram_steps.npy", result.histograms.steps, allow_pickle=False)
            norm_files += list(HISTOGRAMS)
        self.report = strict_json({
            "status": result.status, "diverged_at_step": result.diverged_at_step,
            "epochs_completed": len(result.history), "final": result.final, "per_class": result.per_class,
            "confusion": result.confusion, "summary": result.summary, "environment": result.environment,
            "steps_per_epoch": result.steps_per_epoch, "layers": result.layers,
            "cost": self.experiment.cost.to_dict(), "spec": result.spec.model_dump(mode="json"),
            "files": [*OUTPUTS, *norm_files, *ARRAYS, f"{CHECKPOINT_DIR}/{CHECKPOINT_NAME}"]})
        (out / "history.json").write_text(json.dumps(strict_json(result.history), indent=2) + "\n")
        (out / "result.json").write_text(json.dumps(self.report, indent=2) + "\n")
        if not self.epochs_trained and result.status == "succeeded":
            log.info("all %d epochs were already done (checkpoint in %s): nothing trained, final metrics "
                     "re-evaluated; pass --no-resume to train again", len(result.history), out / CHECKPOINT_DIR)


def write_norms_csv(out: Path, norms: dict[str, NormBlock | None]) -> list[str]:
    """``norms_<kind>.csv`` per recorded kind: ``step`` then one column per layer (nan/inf as such)."""
    written = []
    for kind, block in norms.items():
        path = out / f"norms_{kind}.csv"
        if block is None:
            path.unlink(missing_ok=True)  # a stale file from an earlier run would be misleading
            continue
        with path.open("w") as f:  # the same text the server's gradients.csv sends
            f.write(csv_header(block.layers))
            for i in range(0, len(block), 8192):
                f.write(csv_rows(block.steps[i:i + 8192], block.values[i:i + 8192]))
        written.append(path.name)
    return written
