"""Typed experiment specs: one object that rebuilds a model and its training run exactly.

This module must import without torch: the server validates requests with it and the
client never installs torch. Everything here is plain pydantic.

Family defaults (``None`` in a field means "the family's default"):

=================  ==========  =======  ========  ==========  =========
arch               batch_norm  dropout  residual  extra_convs optimizer
=================  ==========  =======  ========  ==========  =========
vgg11/vgg13/vgg16  True        0.5      False     0           sgd
vgg_deep           False       0.0      False     4           sgd
resnet18/resnet34  True        0.0      True      (n/a)       sgd
=================  ==========  =======  ========  ==========  =========
"""

from __future__ import annotations

import json
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

# Each set of allowed values is written once, as the field's type; the tuples are read from it.
Arch = Literal["vgg11", "vgg13", "vgg16", "vgg_deep", "resnet18", "resnet34"]
KernelSize = Literal[3, 5, 7]
Pooling = Literal["max", "avg"]
Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"]
Init = Literal["default", "kaiming_normal", "xavier_normal", "orthogonal"]
Dataset = Literal["cifar10", "fashion_mnist", "synthetic"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "step", "cosine", "onecycle"]
Precision = Literal["fp32", "bf16", "fp16"]
ARCHS, KERNEL_SIZES, POOLINGS, ACTIVATIONS, INITS, DATASETS, OPTIMIZERS, SCHEDULES, PRECISIONS = (
    typing.get_args(t) for t in (Arch, KernelSize, Pooling, Activation, Init, Dataset, Optimizer, Schedule,
                                 Precision))
# What deepgrad_core.data's loaders produce for each data set (Fashion-MNIST is padded to 32x32).
DATASET_CLASSES = {"cifar10": 10, "fashion_mnist": 10, "synthetic": 10}
DATASET_CHANNELS = {"cifar10": 3, "fashion_mnist": 1}  # synthetic: as many as model.in_channels
# Images per class in each split (synthetic: its default when ``subset``/``test_subset`` is unset). With the
# batch size they give a job's steps per epoch before any data are loaded (the server bounds a job's work).
DATASET_IMAGES_PER_CLASS = {"cifar10": {"train": 5000, "test": 1000},
                            "fashion_mnist": {"train": 6000, "test": 1000},
                            "synthetic": {"train": 100, "test": 20}}
# The most images per class a spec may ask for: more than any real data set here has; a synthetic set of
# this size at 64x64 is already 1.2 GB in memory (the server bounds memory and steps further).
MAX_PER_CLASS = 10_000
DEFAULT_IMAGE_SIDE = 32
# VGG halves the image side five times: 32 -> 16 -> 8 -> 4 -> 2 -> 1; from 31 down a pooling meets 0 pixels.
VGG_MIN_IMAGE_SIDE = 32

FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "vgg11": {"batch_norm": True, "dropout": 0.5, "residual": False, "extra_convs": 0},
    "vgg13": {"batch_norm": True, "dropout": 0.5, "residual": False, "extra_convs": 0},
    "vgg16": {"batch_norm": True, "dropout": 0.5, "residual": False, "extra_convs": 0},
    "vgg_deep": {"batch_norm": False, "dropout": 0.0, "residual": False, "extra_convs": 4},
    "resnet18": {"batch_norm": True, "dropout": 0.0, "residual": True, "extra_convs": 0},
    "resnet34": {"batch_norm": True, "dropout": 0.0, "residual": True, "extra_convs": 0},
}
# BasicBlocks per stage of each ResNet (He et al. 2016); every other arch is a VGG.
RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _is_number(annotation: Any) -> bool:
    """Whether a field holds an int or a float (``int | None`` included; ``bool`` is not a number here)."""
    return annotation in (int, float) or any(_is_number(a) for a in typing.get_args(annotation))


class _Spec(BaseModel):
    # allow_inf_nan=False: NaN and infinities (Python's json reads ``NaN``, ``Infinity`` and ``1e999``) are
    # refused in every float field: stored, they would not be JSON, and re-submitted they would differ.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        """JSON ``false`` or ``"5"`` is not a number: refuse it rather than read it as 0 or 5
        (``checkpoint_every: false`` silently meaning "never checkpoint" would be a trap). ``5.0`` is 5."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                if isinstance(value, (bool, str)) and _is_number(field.annotation):
                    raise ValueError(f"{name} must be a number, got {value!r}")
        return data


class ModelSpec(_Spec):
    """Architecture and its options; ``None`` in a field means the family's default, filled in at validation."""

    arch: Arch = Field(
        description="vgg16: VGG-16 with batch norm and dropout (vgg11, vgg13: its shallower siblings); vgg_deep: "
                    "VGG-16 plus four convs, no batch norm, no dropout (gradients vanish); resnet18, resnet34: "
                    "ResNets for 32x32 images")
    kernel_size: KernelSize = Field(default=3, description="side of every main-path conv kernel")
    pooling: Pooling = Field(default="max", description="VGG's down-sampling between blocks")
    activation: Activation = Field(
        default="relu", description="the nonlinearity after every conv and hidden linear layer")
    batch_norm: StrictBool | None = Field(default=None, description="batch norm after every conv (null: the "
                                          "family's default: vgg16 and resnet18 true, vgg_deep false)")
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0, description="dropout in VGG's classifier (null: "
                                  "vgg16 0.5, vgg_deep 0)")
    bottleneck: StrictBool = Field(default=False, description="a 1x1 conv reducing channels by bottleneck_factor "
                                   "before each kxk conv (the original study's 1x1 experiment)")
    bottleneck_factor: int = Field(default=4, ge=2, le=16, description="channel reduction of the 1x1 bottleneck")
    residual: StrictBool | None = Field(default=None, description="shortcut connections (null: resnet18 true; "
                                        "false gives He et al.'s plain net; in VGG: identity where shapes match)")
    init: Init = Field(
        default="default", description="weight init of convs and linears (default: PyTorch's, which makes "
                                       "VGG-Deep's gradients vanish; kaiming_normal: He et al. 2015)")
    extra_convs: int | None = Field(default=None, ge=0, le=16, description="convs added to VGG-16, one per block "
                                    "of blocks 2-5 in turn (null: vgg_deep 4, vgg16 0)")
    width: float = Field(default=1.0, gt=0.0, le=4.0, description="channel multiplier (0.25: a quick CPU run)")
    in_channels: int = Field(default=3, ge=1, le=16, description="image channels (1 for Fashion-MNIST)")
    num_classes: int = Field(default=10, ge=2, le=1000, description="classes of the data set")

    @field_validator("kernel_size", mode="before")
    @classmethod
    def _odd_kernel(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v not in KERNEL_SIZES:
            raise ValueError(f"kernel_size must be one of {list(KERNEL_SIZES)}, got {v}")
        return v

    @model_validator(mode="after")
    def _family_rules(self) -> ModelSpec:
        blocks = RESNET_BLOCKS.get(self.arch)
        if blocks and self.extra_convs not in (None, 0):
            raise ValueError(f"extra_convs applies to the VGG family only (arch 'vgg11', 'vgg13', 'vgg16' or "
                             f"'vgg_deep'); {self.arch}'s depth is fixed at {list(blocks)} blocks")
        if blocks and self.dropout not in (None, 0.0):
            raise ValueError(f"dropout applies to the VGG classifier only; {self.arch} has no dropout layer")
        if blocks and self.pooling != "max":
            raise ValueError(f"pooling applies to the VGG family only; {self.arch} (CIFAR variant) has no "
                             "pooling layer but the final global average")
        return self

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """A validated spec is a resolved one: every ``None`` becomes the family's default, so two specs of one
        model compare equal and every result records what ran."""
        if isinstance(data, dict) and isinstance(data.get("arch"), str) and data["arch"] in FAMILY_DEFAULTS:
            defaults = FAMILY_DEFAULTS[data["arch"]]
            data = {**data, **{k: v for k, v in defaults.items() if data.get(k) is None}}
        return data

    def resolved(self) -> ModelSpec:
        """The spec with the family defaults written out: itself, since validation fills them in."""
        return self


class DataSpec(_Spec):
    """A data set by name; the server resolves names inside its own data root (never a path)."""

    name: Dataset = "cifar10"
    subset: int | None = Field(default=None, ge=1, le=MAX_PER_CLASS,
                               description="training images per class (None: all; synthetic: 100)")
    test_subset: int | None = Field(default=None, ge=1, le=MAX_PER_CLASS,
                                    description="test images per class (None: all; synthetic: 20)")
    augment: StrictBool = True
    image_size: int | None = Field(default=None, ge=8, le=64,
                                   description="synthetic only: side of the square images (default 32)")


class TrainSpec(_Spec):
    """Optimisation. Rules across fields: ``warmup_epochs`` < ``epochs``; ``nesterov`` needs ``sgd`` with
    ``momentum`` > 0."""

    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=1, le=8192)
    optimizer: Optimizer = "sgd"
    lr: float = Field(default=0.05, gt=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    nesterov: StrictBool = False
    weight_decay: float = Field(default=5e-4, ge=0.0)
    schedule: Schedule = "cosine"
    warmup_epochs: float = Field(default=0.0, ge=0.0, description="epochs of linear warm-up; must be shorter "
                                 "than train.epochs (0: none)")
    step_size: int = Field(default=30, ge=1, description="epochs between decays for schedule 'step'")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="decay factor for schedule 'step'")
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=1.0)
    grad_clip: float | None = Field(default=None, gt=0.0, description="max global grad norm (None: off)")
    precision: Precision = "fp32"

    @model_validator(mode="after")
    def _optimizer_rules(self) -> TrainSpec:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0.0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs:g}) must be shorter than epochs ({self.epochs}): "
                             f"train longer, or set train.warmup_epochs to less (e.g. --set "
                             f"train.warmup_epochs={min(self.warmup_epochs, self.epochs) / 2:g}, or 0 for none)")
        return self


class TrackingSpec(_Spec):
    mode: Literal["fused", "full_backward_hook"] = "fused"
    activation_every: int = Field(default=10, ge=0, description="record activation gradients every N steps "
                                  "(1: every step, 0: never)")
    flush_every: int = Field(default=50, ge=1, le=100_000)
    histogram_every: int = Field(default=100, ge=0, le=1_000_000, description="record a histogram of each tracked "
                                 "layer's weight gradient (log10 |g|, fixed bins) every N steps (0: never)")
    layer_types: tuple[Literal["conv", "linear"], ...] = Field(
        default=("conv",), min_length=1, max_length=2, json_schema_extra={"uniqueItems": True},
        description="kinds of layer to track, each at most once")
    vanishing_fraction: float = Field(default=1e-3, gt=0.0, lt=1.0,
                                      description="flag vanishing when first/last layer norm ratio is below this")

    @field_validator("layer_types")
    @classmethod
    def _distinct_types(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(v)) != len(v):  # ["conv", "conv"] would track every conv twice, under two names
            raise ValueError(f"layer_types must name each kind once, got {list(v)}")
        return v


class ExperimentSpec(_Spec):
    """Everything a run needs: rebuilds the model and replays the run exactly."""

    model: ModelSpec
    data: DataSpec = DataSpec()
    train: TrainSpec = TrainSpec()
    tracking: TrackingSpec = TrackingSpec()
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    checkpoint_every: int = Field(default=1, ge=0, description="epochs between checkpoints (0: never)")

    @model_validator(mode="after")
    def _data_fits_model(self) -> ExperimentSpec:
        model, data = self.model, self.data
        channels = DATASET_CHANNELS.get(data.name)
        if channels is not None and channels != model.in_channels:
            raise ValueError(f"model.in_channels is {model.in_channels} but data set "
                             f"'{data.name}' has {channels} channel(s)")
        classes = DATASET_CLASSES[data.name]
        if model.num_classes != classes:
            raise ValueError(f"model.num_classes is {model.num_classes} but data set '{data.name}' has "
                             f"{classes} classes; set model.num_classes to {classes}")
        if data.image_size is not None and data.name != "synthetic":
            raise ValueError("data.image_size applies to the 'synthetic' data set only")
        side = data.image_size or DEFAULT_IMAGE_SIDE
        if model.arch not in RESNET_BLOCKS and side < VGG_MIN_IMAGE_SIDE:
            raise ValueError(f"data.image_size is {side} but {model.arch} pools five times and needs images of "
                             f"at least {VGG_MIN_IMAGE_SIDE}x{VGG_MIN_IMAGE_SIDE}; use data.image_size >= "
                             f"{VGG_MIN_IMAGE_SIDE} or a ResNet (arch 'resnet18' or 'resnet34')")
        return self

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image as the model sees it."""
        side = self.data.image_size or DEFAULT_IMAGE_SIDE
        return self.model.in_channels, side, side

    @classmethod
    def from_json(cls, text: str) -> ExperimentSpec:
        return cls.model_validate(json.loads(text))

    def to_json(self) -> str:
        return self.model_dump_json()


def batches_per_epoch(n: int, batch_size: int, *, train: bool) -> int:
    """Batches of ``n`` images: training drops the last partial batch (BatchNorm trains badly on a
    handful of images) unless it is the only one; evaluation keeps it."""
    if train:
        return n // batch_size if n > batch_size else min(n, 1)
    return -(-n // batch_size)


def images_per_class(data: DataSpec, split: Literal["train", "test"]) -> int:
    """Images per class a split will hold: the subset asked for, at most what the data set has."""
    have = DATASET_IMAGES_PER_CLASS[data.name][split]
    wanted = data.subset if split == "train" else data.test_subset
    if data.name == "synthetic":  # generated: as many as asked for
        return wanted or have
    return min(wanted, have) if wanted else have


def planned_steps(spec: ExperimentSpec) -> tuple[int, int]:
    """(steps per epoch, total steps) of a run, from the data set's size before any image is loaded."""
    n = images_per_class(spec.data, "train") * DATASET_CLASSES[spec.data.name]
    per_epoch = batches_per_epoch(n, spec.train.batch_size, train=True)
    return per_epoch, per_epoch * spec.train.epochs


def as_model_spec(spec: ModelSpec | dict[str, Any]) -> ModelSpec:
    """Accept a ModelSpec or a plain dict (``{"arch": "vgg_deep"}``)."""
    return spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)


def as_experiment_spec(spec: ExperimentSpec | dict[str, Any]) -> ExperimentSpec:
    return spec if isinstance(spec, ExperimentSpec) else ExperimentSpec.model_validate(spec)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
    return out


def spec_changes(spec: ExperimentSpec) -> dict[str, Any]:
    """What a spec sets beyond the defaults of its architecture and data set, as ``--set`` keys:
    ``{"model.kernel_size": 5, "train.epochs": 30}``. What tells apart variants of one model."""
    base = ExperimentSpec.model_validate({
        "model": {"arch": spec.model.arch, "in_channels": spec.model.in_channels,
                  "num_classes": spec.model.num_classes},
        "data": {"name": spec.data.name}})
    mine, theirs = _flat(spec.model_dump(mode="json")), _flat(base.model_dump(mode="json"))
    return {k: v for k, v in mine.items() if theirs.get(k) != v}
