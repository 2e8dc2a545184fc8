"""Which layers of a network are tracked, in depth order, with names that mean the same layer in every variant.

Every tracked layer has a role (``stem``, ``main``, ``reduce``, ``shortcut``, ``classifier``; the builders
tag their modules, anything else is inferred) and a name by role:

* ``conv1``..``convN``: the main path, stem first. The N-th conv of VGG-Deep is the same layer with or
  without 1x1 bottleneck convs, and ResNet-18's ``conv8`` is its 8th main-path conv, never a shortcut;
* ``reduce<N>``: the 1x1 bottleneck conv that feeds ``conv<N>``;
* ``shortcut1``..: ResNet's 1x1 projection shortcuts, in depth order;
* ``fc1``..``fcM``: linear layers (the classifier).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from deepgrad_core.models.layers import ROLE_ATTR

LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
}
MAIN_PATH = ("stem", "main")  # the layers a signal must go through: what depth profiles and "selected" show


@dataclass(frozen=True, eq=False)
class TrackedLayer:
    """``name`` by role (see the module docstring); ``path`` the module path; ``depth`` the 0-based position
    among all tracked layers, in the order the forward pass runs them."""

    name: str
    path: str
    kind: str
    depth: int
    module: nn.Module
    role: str = "main"

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def to_dict(self) -> dict[str, object]:
        """What results and the API record of a layer."""
        return {"name": self.name, "path": self.path, "kind": self.kind, "role": self.role, "depth": self.depth}


def _role(module: nn.Module, kind: str) -> str:
    role = getattr(module, ROLE_ATTR, None)
    if role is not None:
        return role
    return "classifier" if kind == "linear" else "main"  # a network our builders did not make


def tracked_layers(model: nn.Module, layer_types: Sequence[str] = ("conv",)) -> list[TrackedLayer]:
    """Tracked layers of any ``nn.Module``, in registration order.

    Our builders register modules in the order the forward pass runs them (a ResNet shortcut projection
    comes right after the block's main-path convs, a bottleneck's 1x1 reducer right before its conv), so
    registration order is depth order. Layers without a trainable weight are skipped.
    """
    unknown = [t for t in layer_types if t not in LAYER_TYPES]
    if unknown or not layer_types:
        raise ValueError(f"layer_types must be a non-empty subset of {list(LAYER_TYPES)}, got {list(layer_types)}")
    main = shortcut = fc = 0
    layers: list[TrackedLayer] = []
    for path, module in model.named_modules():
        for kind in layer_types:
            if not (isinstance(module, LAYER_TYPES[kind]) and getattr(module, "weight", None) is not None
                    and module.weight.requires_grad):
                continue
            role = _role(module, kind)
            if role in MAIN_PATH:
                main += 1
                name = f"conv{main}"
            elif role == "reduce":
                name = f"reduce{main + 1}"
            elif role == "shortcut":
                shortcut += 1
                name = f"shortcut{shortcut}"
            else:
                fc += 1
                name = f"fc{fc}"
            layers.append(TrackedLayer(name, path, kind, len(layers), module, role))
    return layers
