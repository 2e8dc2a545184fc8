"""Which layers of a network are tracked, in depth order, with stable readable names."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
}
_PREFIX = {"conv": "conv", "linear": "fc"}


@dataclass(frozen=True, eq=False)
class TrackedLayer:
    """``name`` is ``conv1``..``convN`` / ``fc1``..``fcM`` in depth order; ``path`` the module path."""

    name: str
    path: str
    kind: str
    depth: int  # 0-based position among all tracked layers
    module: nn.Module

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight


def tracked_layers(model: nn.Module, layer_types: Sequence[str] = ("conv",)) -> list[TrackedLayer]:
    """Tracked layers of any ``nn.Module``, in registration order.

    Our builders register modules in the order the forward pass runs them (a ResNet
    shortcut projection comes right after the block's main-path convs), so registration
    order is depth order. Layers without a trainable weight are skipped.
    """
    unknown = [t for t in layer_types if t not in LAYER_TYPES]
    if unknown or not layer_types:
        raise ValueError(f"layer_types must be a non-empty subset of {list(LAYER_TYPES)}, got {list(layer_types)}")
    counts = dict.fromkeys(_PREFIX, 0)
    layers: list[TrackedLayer] = []
    for path, module in model.named_modules():
        for kind in layer_types:
            if isinstance(module, LAYER_TYPES[kind]) and getattr(module, "weight", None) is not None \
                    and module.weight.requires_grad:
                counts[kind] += 1
                layers.append(TrackedLayer(f"{_PREFIX[kind]}{counts[kind]}", path, kind, len(layers), module))
    return layers
