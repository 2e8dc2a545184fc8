"""What a figure is drawn from: one job's stored data, as the server keeps it and a training run returns it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepgrad_core.histograms import HistBlock
from deepgrad_core.norms import NormBlock
from deepgrad_core.series import epoch_means


class PlotDataError(ValueError):
    """The data a figure needs are not there (yet): no activation norms, no finished epoch, no filters.

    The request was well formed; the server answers 404 (never recorded) or 409 (not yet).
    """


class PlotParameterError(ValueError):
    """A figure cannot use one of its parameters (``param``: ``kind``, ``norm_kind``, ``layers``, ``epochs``,
    ``smooth``, ``max_points``, ``ids``); the message says what is allowed."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class JobData:
    """One job's data for plotting; a running job's partial data are fine.

    ``layers``: tracked layers in depth order, dicts with ``name``, ``path``, ``kind``, ``depth``
    (``TrainResult.layers``). ``series``: norm kind (``weight``, ``activation``, ``global``) -> block;
    kinds never recorded may be missing or None. ``history``: per-epoch metric dicts
    (``TrainResult.history``, ``epoch`` 0-based). ``cost``: ``CostReport.to_dict()``. ``filters``: the
    first conv layer's filters as ``first_layer_filters`` returns them, ``[N, kh, kw, C]`` with C 1 or 3.
    ``state``: the job's state (``succeeded``, ``running``, ...), shown in titles unless ``succeeded``.
    ``filters_init``: the same filters at initialization; ``num_classes``: the task's classes (chance level).
    """

    name: str
    layers: list[dict[str, Any]]
    steps_per_epoch: int
    series: dict[str, NormBlock | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    cost: dict[str, Any] | None = None
    filters: np.ndarray | None = None
    state: str = "succeeded"
    # The first conv layer's filters at initialization, as ``filters`` (learned ones are drawn beside them).
    filters_init: np.ndarray | None = None
    num_classes: int | None = None  # for the chance level of the metrics
    vanishing_fraction: float = 1e-3  # the job's threshold of the first/last ratio (``tracking``)
    # Per-epoch means of a norm kind computed where the series is (a store streams them): kind -> (0-based
    # epochs, [epochs x layers] means, steps with a NaN/inf). Figures use them instead of ``series``' rows.
    epoch_means: dict[str, tuple[list[int], np.ndarray, int]] = field(default_factory=dict)
    # Records in the store per kind, where ``series`` holds fewer (a long series' min/max rows): titles say so.
    recorded: dict[str, int] = field(default_factory=dict)
    # Weight-gradient histograms (``deepgrad_core.histograms``): all recorded, or those the figure needs.
    histograms: HistBlock | None = None

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")

    @classmethod
    def from_result(cls, result: Any, name: str, cost: Any = None, filters: np.ndarray | None = None,
                    filters_init: np.ndarray | None = None) -> JobData:
        """From a ``TrainResult``; ``cost`` may be a ``CostReport`` or its ``to_dict()``."""
        if cost is not None and hasattr(cost, "to_dict"):
            cost = cost.to_dict()
        return cls(name=name, layers=list(result.layers), steps_per_epoch=result.steps_per_epoch,
                   series={k: b for k, b in result.norms.items() if b is not None},
                   history=list(result.history), cost=cost, filters=filters, state=result.status,
                   filters_init=filters_init, num_classes=result.spec.model.num_classes,
                   vanishing_fraction=result.spec.tracking.vanishing_fraction,
                   histograms=getattr(result, "histograms", None))

    def block(self, kind: str) -> NormBlock:
        """The ``kind`` norms, or PlotDataError when none were recorded yet."""
        block = self.series.get(kind)
        if block is None or len(block) == 0:
            recorded = sorted(k for k, b in self.series.items() if b is not None and len(b))
            hint = f"recorded: {recorded}" if recorded else "no norms recorded yet"
            raise PlotDataError(f"job {self.name!r} has no {kind} gradient norms ({hint})")
        return block

    def roles(self) -> dict[str, str]:
        """Layer name -> role; for layers recorded before roles existed: linear layers ``classifier``, convs
        ``main``."""
        return {la["name"]: la.get("role") or ("classifier" if la.get("kind") == "linear" else "main")
                for la in self.layers if "name" in la}

    def main_path(self, names: tuple[str, ...]) -> list[str]:
        """The main-path layers (stem and main convs) among ``names``, in their order."""
        roles = self.roles()
        return [n for n in names if roles.get(n, "main") in ("stem", "main")]

    def depth_of(self, layer: str, default: int) -> int:
        """A layer's depth as the tracker numbered it (``default`` for a name it does not know)."""
        return next((int(la["depth"]) for la in self.layers if la.get("name") == layer), default)

    def means(self, kind: str) -> tuple[list[int], np.ndarray, int]:
        """(0-based epochs present, ``[epochs, layers]`` means of finite norms (NaN: none), steps with NaN/inf)."""
        if kind in self.epoch_means:
            return self.epoch_means[kind]
        block = self.block(kind)
        return epoch_means(block.steps, block.values, self.steps_per_epoch)

    @property
    def title_state(self) -> str:
        """`` (running)`` and the like for titles; empty for a finished job."""
        return "" if self.state == "succeeded" else f" ({self.state})"
