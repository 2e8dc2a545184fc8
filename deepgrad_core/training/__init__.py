"""Training: ``train(model, spec)`` with gradient tracking, checkpoints and exact resume."""

from deepgrad_core.training.evaluate import classification_report, evaluate
from deepgrad_core.training.loop import StepInfo, TrainResult, seed_everything, train
from deepgrad_core.training.optim import build_optimizer, lr_at, param_groups

__all__ = ["StepInfo", "TrainResult", "build_optimizer", "classification_report", "evaluate", "lr_at",
           "param_groups", "seed_everything", "train"]
