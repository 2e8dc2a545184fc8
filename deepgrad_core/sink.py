"""``Sink``: where a running experiment reports (no torch here, so a server can import it cheaply)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepgrad_core.experiment import Experiment
    from deepgrad_core.histograms import HistBlock
    from deepgrad_core.norms import NormBlock
    from deepgrad_core.training.loop import StepInfo, TrainResult


class Sink:
    """Where a running experiment reports; override the methods you need (each does nothing here).

    Order: ``start`` once; then ``resume`` once if a checkpoint is being continued; then ``step`` after every
    optimizer step, ``norms`` and ``histograms`` with every flushed block, ``epoch`` with each epoch's
    metrics; ``finish`` once with the result (not called when the run raises). A resumed run replays what came
    after its checkpoint: at ``resume(start_step)`` drop what you hold (norms, histograms) from
    ``step >= start_step`` and epochs ``>= start_step // steps_per_epoch``, as they will be sent again.
    """

    def start(self, experiment: Experiment, *, resuming: bool) -> None:
        """Before the first step; ``resuming``: a checkpoint will be continued (see ``resume``)."""

    def resume(self, start_step: int) -> None:
        """The checkpoint is loaded; the first step run from here is ``start_step``."""

    def step(self, info: StepInfo) -> None:
        """After every optimizer step. ``info.loss`` stays on the device: read it only now and then."""

    def norms(self, block: NormBlock) -> None:
        """A block of per-layer gradient norms as it leaves the device."""

    def histograms(self, block: HistBlock) -> None:
        """Weight-gradient histograms of the sampled steps since the last flush (``tracking.histogram_every``)."""

    def epoch(self, metrics: dict[str, Any]) -> None:
        """An epoch's train and test metrics."""

    def finish(self, result: TrainResult) -> None:
        """The run's result: succeeded, diverged or cancelled."""
