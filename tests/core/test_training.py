"""Training loop: reproducible, resumable, stops on divergence/cancel, and shows vanishing gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepgrad_core import ExperimentSpec, build_model
from deepgrad_core.spec import TrainSpec
from deepgrad_core.training import classification_report, lr_at, seed_everything, train


def _spec(**overrides) -> ExperimentSpec:
    spec = {"model": {"arch": "vgg16", "width": 0.0625},
            "data": {"name": "synthetic", "subset": 12, "test_subset": 4},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.05},
            "tracking": {"flush_every": 4, "activation_every": 2}}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    return ExperimentSpec.model_validate(spec)


def _fresh(spec: ExperimentSpec):
    seed_everything(spec.seed)
    return build_model(spec.model)


def _assert_same_run(a, b):
    for ma, mb in zip(a.history, b.history, strict=True):
        for key in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            assert ma[key] == mb[key], key
    for kind in ("weight", "activation"):
        np.testing.assert_array_equal(a.norms[kind].steps, b.norms[kind].steps)
        np.testing.assert_array_equal(a.norms[kind].values, b.norms[kind].values)


def test_train_same_seed_gives_identical_metrics_and_norms():
    spec = _spec()
    _assert_same_run(train(_fresh(spec), spec), train(_fresh(spec), spec))


def test_train_result_contents():
    spec = _spec()
    epochs, blocks = [], []
    result = train(_fresh(spec), spec, on_epoch=epochs.append, on_norms=blocks.append)
    assert result.status == "succeeded" and len(result.history) == 3 and epochs == result.history
    steps = result.steps_per_epoch * 3
    assert result.norms["weight"].steps.tolist() == list(range(steps))
    assert result.norms["activation"].steps.tolist() == list(range(0, steps, 2))
    assert sum(len(b) for b in blocks if b.kind == "weight") == steps
    assert np.array(result.confusion).sum() == 40 and len(result.per_class) == 10
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_sec"):
        assert key in result.history[0]
    assert result.final["test_acc"] == result.history[-1]["test_acc"]
    assert result.summary["weight"]["has_data"] and result.environment["torch"] == torch.__version__
    assert [la["name"] for la in result.layers] == [f"conv{i}" for i in range(1, 14)]


def test_train_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    spec = _spec(train={"epochs": 4})
    full = train(_fresh(spec), spec)

    class Crash(Exception):
        pass

    def crash_in_epoch_two(info):
        if info.epoch == 2 and info.batch == 1:
            raise Crash

    with pytest.raises(Crash):
        train(_fresh(spec), spec, checkpoint_dir=tmp_path, on_step=crash_in_epoch_two)
    seed_everything(123)  # a resumed process starts from other RNG state; the checkpoint must not care
    resumed = train(build_model(spec.model), spec, checkpoint_dir=tmp_path)
    _assert_same_run(full, resumed)
    assert resumed.norms["weight"].steps.tolist() == list(range(4 * full.steps_per_epoch))  # no gap/duplicate


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path):
    spec = _spec(train={"epochs": 1})
    train(_fresh(spec), spec, checkpoint_dir=tmp_path)
    other = _spec(train={"epochs": 1, "lr": 0.01})
    with pytest.raises(ValueError, match="different spec"):
        train(_fresh(other), other, checkpoint_dir=tmp_path)


def test_huge_learning_rate_diverges_and_keeps_what_was_recorded():
    spec = _spec(model={"arch": "vgg_deep", "init": "kaiming_normal"}, train={"lr": 1e6, "epochs": 5})
    result = train(_fresh(spec), spec)
    assert result.status == "diverged"
    assert result.diverged_at_step is not None
    weight = result.norms["weight"]
    assert len(weight) > 0 and weight.steps.tolist() == list(range(len(weight)))
    assert len(result.history) < 5


def test_should_stop_cancels_between_steps():
    spec = _spec(train={"epochs": 50})
    steps = []
    result = train(_fresh(spec), spec, on_step=lambda info: steps.append(info.step),
                   should_stop=lambda: len(steps) >= 5)
    assert result.status == "cancelled" and len(steps) == 5
    assert result.norms["weight"].steps.tolist() == list(range(5))


@pytest.mark.parametrize("train_opts", [
    {"precision": "bf16"}, {"precision": "fp16"}, {"optimizer": "adamw", "lr": 1e-3, "schedule": "onecycle"},
    {"optimizer": "adam", "lr": 1e-3, "schedule": "step", "step_size": 1, "warmup_epochs": 1},
    {"nesterov": True, "label_smoothing": 0.1, "grad_clip": 0.5},
])
def test_train_options_run(train_opts):
    spec = _spec(train=train_opts)
    result = train(_fresh(spec), spec)
    assert result.status == "succeeded"
    assert all(math.isfinite(m["train_loss"]) for m in result.history)
    if "grad_clip" in train_opts:
        glob = result.norms["global"]
        assert glob is not None and glob.layers == ("global",) and len(glob) == len(result.norms["weight"])


def test_grad_clip_records_the_pre_clip_norm():
    spec = _spec(train={"grad_clip": 1e-3, "epochs": 1})
    result = train(_fresh(spec), spec)
    assert (result.norms["global"].values > 1e-3).all()  # recorded before clipping to 1e-3


def test_lr_schedules():
    spec = TrainSpec(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=1)
    assert lr_at(0, spec, 10) == pytest.approx(0.01)
    assert lr_at(9, spec, 10) == pytest.approx(0.1)
    assert lr_at(10, spec, 10) == pytest.approx(0.1)
    assert lr_at(99, spec, 10) < 1e-3
    step = TrainSpec(epochs=10, lr=0.1, schedule="step", step_size=3, gamma=0.5)
    assert [lr_at(e * 5, step, 5) for e in (0, 2, 3, 6)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    cycle = TrainSpec(epochs=10, lr=0.1, schedule="onecycle")
    lrs = [lr_at(s, cycle, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.004) and max(lrs) == pytest.approx(0.1, rel=1e-3)
    assert lrs.index(max(lrs)) == 30 and lrs[-1] < 1e-3
    assert lr_at(55, TrainSpec(lr=0.2, schedule="constant"), 10) == 0.2


def test_classification_report_from_confusion():
    cm = np.array([[3, 1], [0, 2]])
    report = classification_report(cm, ["a", "b"])
    assert report[0] == {"class": "a", "precision": 1.0, "recall": 0.75, "f1": pytest.approx(6 / 7), "support": 4}
    assert report[1]["precision"] == pytest.approx(2 / 3) and report[1]["recall"] == 1.0


@pytest.mark.parametrize("arch,check", [
    ("vgg_deep", lambda ratio: ratio < 1e-3),
    ("resnet18", lambda ratio: ratio > 0.1),
])
def test_vanishing_gradients_on_real_cifar10(cifar10_root, arch, check):
    """The original study's finding, on real CIFAR-10 images, default init, a short CPU run.

    VGG-Deep's first conv layer gets a weight gradient more than a thousand times smaller than
    its last one; ResNet-18's skip connections keep the first layer's gradient of the same order.
    """
    spec = ExperimentSpec.model_validate({
        "model": {"arch": arch, "width": 0.25},
        "data": {"name": "cifar10", "subset": 50, "test_subset": 10},
        "train": {"epochs": 1, "batch_size": 50, "lr": 0.01}})
    result = train(_fresh(spec), spec, data_root=cifar10_root)
    assert result.status == "succeeded"
    summary = result.summary["weight"]
    assert check(summary["first_last_ratio"]), summary["first_last_ratio"]
    assert summary["vanishing"] == (arch == "vgg_deep")
    per_step = result.norms["weight"].values[:, 0] / result.norms["weight"].values[:, -1]
    assert all(check(r) for r in per_step)
