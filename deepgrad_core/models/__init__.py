"""Model builders: ``build_model(spec)`` turns a ``ModelSpec`` (or a dict) into an ``nn.Module``."""

from __future__ import annotations

from typing import Any

from torch import nn

from deepgrad_core.models.layers import init_weights
from deepgrad_core.models.resnet import ResNet
from deepgrad_core.models.tracked import LAYER_TYPES, TrackedLayer, tracked_layers
from deepgrad_core.models.vgg import vgg
from deepgrad_core.spec import RESNET_BLOCKS, ModelSpec, as_model_spec

__all__ = ["LAYER_TYPES", "TrackedLayer", "build_model", "tracked_layers"]


def build_model(spec: ModelSpec | dict[str, Any]) -> nn.Module:
    """Build the network a spec describes. Invalid options raise ``ValueError`` naming the option.

    The resolved spec is attached as ``model.spec`` so results can record exactly what ran.
    """
    spec = as_model_spec(spec)
    common = dict(kernel_size=spec.kernel_size, activation=spec.activation, batch_norm=spec.batch_norm,
                  bottleneck=spec.bottleneck, bottleneck_factor=spec.bottleneck_factor,
                  residual=spec.residual, width=spec.width, in_channels=spec.in_channels,
                  num_classes=spec.num_classes)
    if spec.arch in RESNET_BLOCKS:
        model: nn.Module = ResNet(list(RESNET_BLOCKS[spec.arch]), **common)
    else:
        model = vgg(arch=spec.arch, extra_convs=spec.extra_convs, pooling=spec.pooling, dropout=spec.dropout,
                    **common)
    init_weights(model, spec.init, spec.activation)
    model.spec = spec
    return model
