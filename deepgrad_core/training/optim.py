"""Optimizers, parameter groups and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepgrad_core.spec import TrainSpec


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay conv/linear weights; never biases or normalization parameters (ndim <= 1)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    groups = param_groups(model, spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=spec.lr)
    raise ValueError(f"optimizer must be one of ['sgd', 'adam', 'adamw'], got {spec.optimizer!r}")


def lr_at(step: int, spec: TrainSpec, steps_per_epoch: int) -> float:
    """Learning rate at global step ``step`` (a pure function: a resumed run gets the same values)."""
    total = spec.epochs * steps_per_epoch
    warmup = int(round(spec.warmup_epochs * steps_per_epoch))
    if spec.schedule == "onecycle":
        return _onecycle(step, spec.lr, total, warmup or int(0.3 * total))
    if step < warmup:
        return spec.lr * (step + 1) / warmup
    if spec.schedule == "constant":
        return spec.lr
    if spec.schedule == "step":
        return spec.lr * spec.gamma ** ((step // steps_per_epoch) // spec.step_size)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * spec.lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _onecycle(step: int, peak: float, total: int, rise: int) -> float:
    """Cosine rise from peak/25 to peak over ``rise`` steps, then cosine fall to peak/1e4 (as OneCycleLR)."""
    start, end = peak / 25.0, peak / 1e4
    if step < rise:
        t = step / max(1, rise)
        return start + (peak - start) * 0.5 * (1 - math.cos(math.pi * t))
    t = min(1.0, (step - rise) / max(1, total - rise))
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))
