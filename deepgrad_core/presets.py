"""Named studies: the original study's suite and the sweeps the classic papers ran, each a base spec and the points
that vary it (``deepgrad_core.study``). Run one by name (``deepgrad-client study run depth --set train.epochs=2``);
``set`` overrides any base field, e.g. a smaller ``model.width`` or ``data.subset`` for a quick run.

The bases are full size on CIFAR-10 (a GPU's work); every job of a preset shares the seed and data order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepgrad_core.study import StudyPoint, expand


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] | None = None
    points: list[dict[str, Any]] | None = field(default=None)

    def expand(self, base: dict[str, Any] | None = None, *, max_points: int | None = None) -> list[StudyPoint]:
        return expand(base if base is not None else self.base, grid=self.grid, points=self.points,
                      max_points=max_points)

    @property
    def jobs(self) -> int:
        if self.points is not None:
            return len(self.points)
        count = 1
        for values in (self.grid or {}).values():
            count *= len(values)
        return count


_CIFAR = {"data": {"name": "cifar10"}, "seed": 0}
# The original study's protocol: 30 epochs, batch 128, cosine schedule, augmentation.
_STUDY_TRAIN = {"epochs": 30, "batch_size": 128, "schedule": "cosine"}
_SGD = {"train.optimizer": "sgd", "train.lr": 0.05}
_ADAM = {"train.optimizer": "adam", "train.lr": 1e-3, "train.weight_decay": 0.0}
_ADAMW = {"train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 5e-4}

_SINGLE_FACTOR = {  # one factor of the original study at a time, in VGG-16 (kernel sizes: the shallow VGG-11)
    "kernel_size": ("kernel size 3, 5 and 7 in every main-path conv of the shallow VGG-11",
                    {"model.arch": ["vgg11"], "model.kernel_size": [3, 5, 7]}),
    "pooling": ("max against average pooling between VGG blocks", {"model.pooling": ["max", "avg"]}),
    "activation": ("ReLU, Leaky ReLU, ELU and GELU", {"model.activation": ["relu", "leaky_relu", "elu", "gelu"]}),
    "bottleneck": ("1x1 bottleneck convs before each 3x3 conv, or none", {"model.bottleneck": [False, True]}),
}

PRESETS: dict[str, Preset] = {
    "original": Preset(
        "original",
        "the original study's suite: VGG-16 with Adam, VGG-Deep with SGD, ResNet-18 with AdamW (its results "
        "table), VGG-16 and ResNet-18 again with SGD (the common-optimizer control), kernel sizes 3, 5 and 7 in "
        "the shallow VGG-11 (as the study used a shallow net for them), then in VGG-16 average pooling, Leaky "
        "ReLU / ELU / GELU and 1x1 bottlenecks; cost from every job",
        {**_CIFAR, "model": {"arch": "vgg16"}, "train": _STUDY_TRAIN},
        points=[{"model.arch": "vgg16", **_ADAM}, {"model.arch": "vgg_deep", **_SGD},
                {"model.arch": "resnet18", **_ADAMW},
                {"model.arch": "vgg16", **_SGD}, {"model.arch": "resnet18", **_SGD},
                *({**_SGD, "model.arch": "vgg11", "model.kernel_size": k} for k in (3, 5, 7)),
                {**_SGD, "model.pooling": "avg"},
                {**_SGD, "model.activation": "leaky_relu"}, {**_SGD, "model.activation": "elu"},
                {**_SGD, "model.activation": "gelu"}, {**_SGD, "model.bottleneck": True}]),
    "depth": Preset(
        "depth",
        "depth against trainability: VGG-11, -13, -16 and VGG-Deep (16 + 4 convs) without batch norm, then "
        "plain and residual networks of 18 and 34 layers with batch norm (He et al. 2016: plain-34 trains worse "
        "than plain-18, ResNet-34 better than ResNet-18)",
        {**_CIFAR, "model": {"arch": "vgg16", "batch_norm": False, "dropout": 0.0},
         "train": {**_STUDY_TRAIN, "optimizer": "sgd", "lr": 0.01}},
        points=[{"model.arch": "vgg11"}, {"model.arch": "vgg13"}, {"model.arch": "vgg16"},
                {"model.arch": "vgg_deep"},
                *({"model.arch": arch, "model.batch_norm": True, "model.residual": residual}
                  for arch in ("resnet18", "resnet34") for residual in (False, True))]),
    "init": Preset(
        "init",
        "VGG-Deep under PyTorch's default, Kaiming (He et al. 2015) and Xavier (Glorot & Bengio 2010) init, "
        "without and with batch norm",
        {**_CIFAR, "model": {"arch": "vgg_deep"}, "train": {"epochs": 8, "optimizer": "sgd", "lr": 0.01}},
        grid={"model.init": ["default", "kaiming_normal", "xavier_normal"], "model.batch_norm": [False, True]}),
    **{name: Preset(name, description, {**_CIFAR, "model": {"arch": "vgg16"}, "train": _STUDY_TRAIN}, grid=grid)
       for name, (description, grid) in _SINGLE_FACTOR.items()},
}
