"""Training loop: reproducible, resumable, stops on divergence/cancel, and shows vanishing gradients."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from deepgrad_core import ExperimentSpec, build_model, load_split, tracked_layers
from deepgrad_core.experiment import Sink
from deepgrad_core.norms import NormBlock
from deepgrad_core.spec import TrainSpec
from deepgrad_core.training import classification_report, lr_at, seed_everything, train
from deepgrad_core.training.checkpoint import CHECKPOINT_NAME, read_meta
from deepgrad_core.training.divergence import MAX_OVERFLOW_RUN, DivergenceWatch

METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")  # all but the timings


def _spec(**overrides) -> ExperimentSpec:
    spec = {"model": {"arch": "vgg16", "width": 0.0625},
            "data": {"name": "synthetic", "subset": 12, "test_subset": 4},
            "train": {"epochs": 3, "batch_size": 16, "lr": 0.05},
            "tracking": {"flush_every": 4, "activation_every": 2}}
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return ExperimentSpec.model_validate(spec)


class Hooks(Sink):
    """A sink made of plain functions, e.g. ``Hooks(step=steps.append)``."""

    def __init__(self, **hooks) -> None:
        for name, hook in hooks.items():
            setattr(self, name, hook)


def _fresh(spec: ExperimentSpec):
    seed_everything(spec.seed)
    return build_model(spec.model)


def _assert_same_run(a, b):
    for ma, mb in zip(a.history, b.history, strict=True):
        for key in METRICS:
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
    result = train(_fresh(spec), spec, sink=Hooks(epoch=epochs.append, norms=blocks.append))
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
        train(_fresh(spec), spec, checkpoint_dir=tmp_path, sink=Hooks(step=crash_in_epoch_two))
    seed_everything(123)  # a resumed process starts from other RNG state; the checkpoint must not care
    resumed = train(build_model(spec.model), spec, checkpoint_dir=tmp_path)
    _assert_same_run(full, resumed)
    assert resumed.norms["weight"].steps.tolist() == list(range(4 * full.steps_per_epoch))  # no gap/duplicate


class _Store(Sink):
    """A sink that persists what ``train`` streams, as the server's does, and truncates on ``resume``."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        self.rows: dict[str, list[tuple[int, list[float]]]] = {}
        self.epochs: list[dict] = []
        self.resumed_at: list[int] = []

    def epoch(self, metrics: dict) -> None:
        self.epochs.append(metrics)

    def norms(self, block: NormBlock) -> None:
        self.rows.setdefault(block.kind, []).extend(zip(block.steps.tolist(), block.values.tolist(), strict=True))

    def resume(self, start_step: int) -> None:
        self.resumed_at.append(start_step)
        self.rows = {kind: [r for r in rows if r[0] < start_step] for kind, rows in self.rows.items()}
        start_epoch = start_step // self.steps_per_epoch
        self.epochs = [m for m in self.epochs if m["epoch"] < start_epoch]

    def series(self) -> tuple[dict, list]:
        return self.rows, [{k: m[k] for k in METRICS} for m in self.epochs]


# fp16 autocast runs on CPU in this torch; GradScaler("cpu") unscales as on CUDA.
@pytest.mark.parametrize("train_opts", [{}, {"optimizer": "adam", "lr": 1e-3, "precision": "fp16"}],
                         ids=["sgd-fp32", "adam-fp16"])
def test_resumed_stream_equals_uninterrupted_run(tmp_path, train_opts):
    """Checkpoints every 2 epochs, a cancel in epoch 3 (0-based): epoch 2 and part of epoch 3 stream twice, and
    the sink that truncates at ``resume`` ends up with the uninterrupted series exactly."""
    spec = _spec(train={"epochs": 4, **train_opts}, tracking={"flush_every": 3, "activation_every": 2},
                 checkpoint_every=2)
    full = train(_fresh(spec), spec)
    spe = full.steps_per_epoch
    reference = _Store(spe)
    for block in (full.norms["weight"], full.norms["activation"]):
        reference.norms(block)
    reference.epochs = full.history

    store, steps = _Store(spe), []
    store.step = lambda info: steps.append(info.step)
    first = train(_fresh(spec), spec, checkpoint_dir=tmp_path, should_stop=lambda: len(steps) == 3 * spe + 2,
                  sink=store)
    assert first.status == "cancelled" and first.start_step == 0 and store.resumed_at == []
    assert max(s for s, _ in store.rows["weight"]) == 3 * spe + 1  # streamed past the checkpoint (epoch 1)
    assert [m["epoch"] for m in store.epochs] == [0, 1, 2]
    seed_everything(123)  # a resumed process starts from other RNG state; the checkpoint must not care
    resumed = train(build_model(spec.model), spec, checkpoint_dir=tmp_path, sink=store)
    assert store.resumed_at == [2 * spe] and resumed.start_step == 2 * spe
    assert [s for s, _ in store.rows["weight"]] == list(range(4 * spe))  # no gap, no duplicate
    assert store.series() == reference.series()
    _assert_same_run(full, resumed)


def test_resume_refuses_a_checkpoint_of_another_spec(tmp_path):
    spec = _spec(train={"epochs": 1})
    train(_fresh(spec), spec, checkpoint_dir=tmp_path)
    for other in (_spec(train={"epochs": 1, "lr": 0.01}), _spec(model={"width": 0.125}, train={"epochs": 1})):
        with pytest.raises(ValueError, match="different spec"):  # said before any weight is loaded
            train(_fresh(other), other, checkpoint_dir=tmp_path)


def test_checkpoint_records_the_resolved_spec_as_the_cli_does(tmp_path):
    """A library run and ``deepgrad-train`` resume each other's checkpoints: a validated spec is a resolved one,
    whether the family defaults were written out or left to the family."""
    spec = _spec(train={"epochs": 1})
    written = ExperimentSpec.model_validate({**spec.model_dump(mode="json"),
                                             "model": {"arch": spec.model.arch, "width": spec.model.width}})
    assert written == spec and spec.model.batch_norm is True and spec.model.dropout == 0.5
    for i, (first, then) in enumerate(((spec, written), (written, spec))):
        train(_fresh(first), first, checkpoint_dir=tmp_path / str(i))
        assert read_meta(tmp_path / str(i) / CHECKPOINT_NAME)["spec"] == spec.model_dump(mode="json")
        starts: list[int] = []
        result = train(_fresh(then), then, checkpoint_dir=tmp_path / str(i), sink=Hooks(resume=starts.append))
        assert starts == [result.steps_per_epoch] == [result.start_step] and len(result.history) == 1


def test_train_refuses_data_with_other_classes_than_the_model():
    spec = _spec(train={"epochs": 1})
    split = load_split(spec.data, "train", seed=spec.seed)
    five = dataclasses.replace(split, classes=split.classes[:5])
    with pytest.raises(ValueError, match="model.num_classes is 10 but train_data has 5 classes"):
        train(_fresh(spec), spec, train_data=five)


def test_train_leaves_the_callers_rng_state_alone():
    spec = _spec(train={"epochs": 2})  # vgg16: dropout draws from the global generator
    model = _fresh(spec)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    train(model, spec)
    assert torch.equal(torch.get_rng_state(), before)


def test_huge_learning_rate_diverges_and_keeps_what_was_recorded():
    spec = _spec(model={"arch": "vgg_deep", "init": "kaiming_normal"}, train={"lr": 1e6, "epochs": 5})
    result = train(_fresh(spec), spec)
    assert result.status == "diverged"
    assert result.diverged_at_step is not None
    weight = result.norms["weight"]
    assert len(weight) > 0 and weight.steps.tolist() == list(range(len(weight)))
    assert len(result.history) < 5


class _Poison(torch.autograd.Function):
    """NaN logits whose gradient is zero: a non-finite loss with finite gradient norms."""

    @staticmethod
    def forward(ctx, x):
        return torch.full_like(x, float("nan"))

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


def _training_steps(model):
    """A list whose length is the number of training forward passes so far (the current step + 1)."""
    steps: list[int] = []
    model.register_forward_pre_hook(lambda m, args: steps.append(len(steps)) if m.training else None)
    return steps


def _overflow_first_conv(model, when):
    """Make the first conv's weight gradient infinite at the steps where ``when(step)`` holds."""
    steps = _training_steps(model)
    tracked_layers(model)[0].weight.register_hook(
        lambda g: torch.full_like(g, float("inf")) if when(steps[-1]) else None)


def test_nonfinite_loss_diverges_at_its_own_step_not_the_windows_first():
    spec = _spec(tracking={"flush_every": 4})
    model = _fresh(spec)
    steps = _training_steps(model)
    model.register_forward_hook(lambda m, args, out: _Poison.apply(out) if m.training and steps[-1] == 5 else None)
    result = train(model, spec)
    assert result.status == "diverged" and result.diverged_at_step == 5
    assert np.isfinite(result.norms["weight"].values).all()  # the loss alone told


def test_fp16_single_overflowed_step_is_not_divergence():
    """A GradScaler skips an overflowed step; a flush window holding only that step is routine."""
    spec = _spec(train={"precision": "fp16", "epochs": 1}, tracking={"flush_every": 1})
    model = _fresh(spec)
    _overflow_first_conv(model, lambda step: step == 3)
    result = train(model, spec)
    assert result.status == "succeeded" and result.diverged_at_step is None
    assert 3 in result.norms["weight"].nonfinite_steps  # (the scaler's first growth may overflow too)


def test_fp16_sustained_overflow_diverges_where_it_began():
    spec = _spec(train={"precision": "fp16", "batch_size": 4, "epochs": 2}, tracking={"flush_every": 5})
    model = _fresh(spec)
    _overflow_first_conv(model, lambda step: step >= 3)
    result = train(model, spec)
    assert result.status == "diverged" and result.diverged_at_step == 3
    assert result.norms["weight"].steps[-1] < 3 + MAX_OVERFLOW_RUN + 5  # stopped at the flush that saw it


def _block(steps, finite):
    values = np.where(np.asarray(finite)[:, None], 1.0, np.inf).astype(np.float32)
    return NormBlock("weight", np.asarray(steps, np.int64), ("conv1",), values)


def test_divergence_watch_rules():
    plain = DivergenceWatch(scaled=False)
    assert plain.check(_block([0, 1], [True, True])) is None
    assert plain.check(_block([2, 3, 4], [True, False, False]))[0] == 3
    assert DivergenceWatch(scaled=False).check(_block([0, 1], [True, True]), first_bad_loss=1)[0] == 1

    scaled = DivergenceWatch(scaled=True, max_overflow_run=4)
    assert scaled.check(_block([0], [False])) is None  # one overflowed step alone: routine
    assert scaled.check(_block([1, 2], [False, True])) is None  # a finite step ends the run
    assert scaled.check(_block([3, 4], [False, False])) is None
    assert scaled.check(_block([5], [False])) is None  # 3 in a row, across blocks
    assert scaled.check(_block([6, 7], [False, True])) == (3, "4 overflowed steps in a row")
    assert DivergenceWatch(scaled=True).check(_block([8], [True]), first_bad_loss=8)[0] == 8


def test_should_stop_cancels_between_steps():
    spec = _spec(train={"epochs": 50})
    steps = []
    result = train(_fresh(spec), spec, sink=Hooks(step=lambda info: steps.append(info.step)),
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
