"""One experiment: prepare it once, then run it, reporting to a sink.

The words DeepGrad uses: an *experiment* is one spec trained once (this module). ``deepgrad-train`` runs one
on this machine and writes a run folder (``deepgrad_core.local_run.FolderSink``); the server runs one per
*job*, in a child process that writes to its store (``deepgrad_server.runner.DatabaseSink``). *Training* is the
epoch loop itself (``deepgrad_core.training.train``).

    experiment = prepare(spec, data_root="~/.deepgrad/data")
    result = experiment.run(MySink(), checkpoint_dir="runs/x/checkpoint")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepgrad_core.analysis.cost import CostReport, cost_report
from deepgrad_core.analysis.filters import first_layer_filters
from deepgrad_core.data import ImageSplit, load_splits
from deepgrad_core.device import choose_device
from deepgrad_core.models import build_model, tracked_layers
from deepgrad_core.sink import Sink
from deepgrad_core.spec import ExperimentSpec, as_experiment_spec, batches_per_epoch
from deepgrad_core.training.checkpoint import CHECKPOINT_NAME, check_spec
from deepgrad_core.training.loop import TrainResult, seed_everything, train

__all__ = ["Experiment", "Sink", "prepare"]

COST_BATCH = 256  # the batch size the cost report measures at most (its peak memory scales with it)


@dataclass
class Experiment:
    """A spec made ready to train: the seeded model on its device, both splits, and what is known before the
    first step (cost, tracked layers, steps per epoch, the first conv's initial filters)."""

    spec: ExperimentSpec
    device: torch.device
    model: nn.Module
    train_data: ImageSplit
    test_data: ImageSplit
    cost: CostReport
    layers: list[dict[str, Any]]
    steps_per_epoch: int
    filters_init: np.ndarray

    def run(self, sink: Sink | None = None, *, should_stop: Callable[[], bool] | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = True) -> TrainResult:
        """Train, reporting to ``sink``; with ``checkpoint_dir``, checkpoint and (``resume``) continue from one.

        A checkpoint of another spec raises ``CheckpointMismatch`` before the sink hears anything."""
        sink = sink if sink is not None else Sink()
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        resuming = ckpt is not None and resume and ckpt.exists()
        if resuming:
            check_spec(ckpt, self.spec)
        sink.start(self, resuming=resuming)
        result = train(self.model, self.spec, device=self.device, train_data=self.train_data,
                       test_data=self.test_data, sink=sink, should_stop=should_stop,
                       checkpoint_dir=checkpoint_dir, resume=resume)
        sink.finish(result)
        return result


def prepare(spec: ExperimentSpec | dict[str, Any], *, data_root: str | Path | None = None,
            device: str | torch.device | None = None, cache_dir: str | Path | None = None,
            train_data: ImageSplit | None = None, test_data: ImageSplit | None = None) -> Experiment:
    """Load both splits (unless given), seed, build the model on ``device`` (default: CUDA when present) and
    measure its cost. Data errors (``DataError``) come before anything else is done."""
    spec = as_experiment_spec(spec)
    dev = choose_device(str(device) if device is not None else None)
    train_data, test_data = load_splits(spec, data_root, train_data, test_data, cache_dir=cache_dir)
    seed_everything(spec.seed)
    model = build_model(spec.model).to(dev)
    cost = cost_report(model, spec.input_shape, measure_peak=dev.type == "cuda",
                       batch_size=min(spec.train.batch_size, COST_BATCH))
    return Experiment(spec=spec, device=dev, model=model, train_data=train_data, test_data=test_data, cost=cost,
                      layers=[la.to_dict() for la in tracked_layers(model, spec.tracking.layer_types)],
                      steps_per_epoch=batches_per_epoch(len(train_data), spec.train.batch_size, train=True),
                      filters_init=first_layer_filters(model))

