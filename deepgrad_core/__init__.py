"""DeepGrad's science engine: architectures, gradient tracking, data, training and analysis.

``import deepgrad_core`` is cheap: names that need torch load on first use, so
``deepgrad_core.spec`` stays importable where torch is not installed (the server's request
validation, the client's tests).

    from deepgrad_core import build_model, GradientTracker, train
    model = build_model({"arch": "vgg_deep"})
"""

from __future__ import annotations

import importlib
from typing import Any

from deepgrad_core.spec import DataSpec, ExperimentSpec, ModelSpec, TrackingSpec, TrainSpec

_LAZY = {
    "build_model": "deepgrad_core.models",
    "tracked_layers": "deepgrad_core.models",
    "TrackedLayer": "deepgrad_core.models",
    "GradientTracker": "deepgrad_core.tracker",
    "NormBlock": "deepgrad_core.norms",
    "load_split": "deepgrad_core.data",
    "DeviceLoader": "deepgrad_core.loader",
    "DataError": "deepgrad_core.data",
    "train": "deepgrad_core.training",
    "TrainResult": "deepgrad_core.training",
    "choose_device": "deepgrad_core.device",
}

__all__ = ["DataSpec", "ExperimentSpec", "ModelSpec", "TrackingSpec", "TrainSpec", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deepgrad_core' has no attribute {name!r}")
