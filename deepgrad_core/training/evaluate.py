"""Evaluation on the test split and the end-of-run classification report."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import Tensor, nn


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
             autocast: Callable[[], AbstractContextManager] = nullcontext) -> tuple[float, float, np.ndarray]:
    """(mean loss, accuracy, confusion matrix [true, predicted]) with one host sync at the end."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    confusion = torch.zeros(num_classes * num_classes, device=device, dtype=torch.int64)
    for x, y in batches:
        with autocast():
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    model.train(was_training)
    cm = confusion.view(num_classes, num_classes).cpu().numpy()
    n = int(cm.sum())
    if n == 0:
        return float("nan"), float("nan"), cm
    return float(loss_sum.item()) / n, float(np.trace(cm)) / n, cm


def classification_report(confusion: np.ndarray, classes: Iterable[str]) -> list[dict]:
    """Per-class precision, recall, F1 and support from a confusion matrix [true, predicted]."""
    report = []
    for i, name in enumerate(classes):
        tp = float(confusion[i, i])
        predicted, actual = float(confusion[:, i].sum()), float(confusion[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        report.append({"class": name, "precision": precision, "recall": recall, "f1": f1,
                       "support": int(actual)})
    return report
