"""Reading a model and a run: what the model costs, whether gradients vanished, what the first layer sees.

Names load on first use, so ``from deepgrad_core.analysis import vanishing_summary`` (numpy
only) does not import torch.

    from deepgrad_core.analysis import cost_report, summarize_run, first_layer_filters
    report = cost_report(model, (3, 32, 32))
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CostReport": "deepgrad_core.analysis.cost",
    "LayerCost": "deepgrad_core.analysis.cost",
    "cost_report": "deepgrad_core.analysis.cost",
    "spec_cost": "deepgrad_core.analysis.cost",
    "estimate_memory": "deepgrad_core.analysis.memory",
    "MemoryEstimate": "deepgrad_core.analysis.memory",
    "filter_grid": "deepgrad_core.analysis.filters",
    "first_layer_filters": "deepgrad_core.analysis.filters",
    "summarize_run": "deepgrad_core.analysis.summary",
    "vanishing_summary": "deepgrad_core.analysis.summary",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepgrad_core.analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
