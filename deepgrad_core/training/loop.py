"""The training loop: reads top to bottom, one epoch at a time.

Host syncs are kept out of the step: running loss and accuracy accumulate on the device and
are read once per epoch; gradient norms reach the host once per tracker flush, and that is
where divergence (see ``DivergenceWatch``) is noticed and the run stopped.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from deepgrad_core.analysis.summary import summarize_run
from deepgrad_core.data import ImageSplit, load_splits
from deepgrad_core.device import choose_device
from deepgrad_core.histograms import HistBlock, join
from deepgrad_core.loader import DeviceLoader
from deepgrad_core.norms import KINDS, NormBlock, NormBuffer
from deepgrad_core.spec import ExperimentSpec, as_experiment_spec
from deepgrad_core.tracker import GradientTracker
from deepgrad_core.training.checkpoint import CHECKPOINT_NAME, check_spec, load_checkpoint, save_checkpoint
from deepgrad_core.training.divergence import DivergenceWatch
from deepgrad_core.training.evaluate import classification_report, evaluate
from deepgrad_core.training.optim import build_optimizer, lr_at

if TYPE_CHECKING:
    from deepgrad_core.sink import Sink

log = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``Sink.step`` after every optimizer step. ``loss`` stays on the device:
    reading it (``float(info.loss)``) is a host sync, so do it only every few steps."""

    step: int
    epoch: int
    batch: int
    steps_per_epoch: int
    lr: float
    loss: Tensor


@dataclass
class TrainResult:
    spec: ExperimentSpec
    status: str  # "succeeded" | "diverged" | "cancelled"
    history: list[dict[str, Any]]
    norms: dict[str, NormBlock | None]
    layers: list[dict[str, Any]]
    steps_per_epoch: int
    histograms: HistBlock | None = None  # weight-gradient histograms on sampled steps (tracking.histogram_every)
    start_step: int = 0  # first step this call ran: 0, or where a resumed checkpoint left off
    final: dict[str, Any] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    per_class: list[dict[str, Any]] | None = None
    diverged_at_step: int | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)


def environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cuda": torch.version.cuda if device.type == "cuda" else None,
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "cpu_threads": torch.get_num_threads()}
    return env


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and CUDA generators (the data pipeline has its own, per epoch)."""
    torch.manual_seed(seed)


def train(model: nn.Module, spec: ExperimentSpec | dict[str, Any], *, device: str | torch.device | None = None,
          data_root: str | Path | None = None, train_data: ImageSplit | None = None,
          test_data: ImageSplit | None = None, sink: Sink | None = None,
          should_stop: Callable[[], bool] | None = None, checkpoint_dir: str | Path | None = None,
          resume: bool = True) -> TrainResult:
    """Train ``model`` as ``spec`` says, tracking per-layer gradient norms all along.

    ``sink`` (a ``deepgrad_core.sink.Sink``) hears ``step`` after every step, ``norms`` with every
    flushed ``NormBlock``, ``epoch`` with each epoch's metrics and, when a checkpoint is continued, ``resume``
    first (its ``start``/``finish`` are ``Experiment.run``'s to call). ``should_stop`` is polled between steps
    (cooperative cancel). With ``checkpoint_dir`` a checkpoint is written after every ``checkpoint_every``
    epochs and, when ``resume`` is true and one exists, the run continues from it exactly.

    Resuming replays what came after the checkpoint, so ``norms`` and ``epoch`` send again steps and epochs
    an interrupted call may already have sent: ``resume(start_step)`` (also ``TrainResult.start_step``) says
    from where (see ``Sink``).

    The caller's random number generators are left as they were found.
    """
    spec = as_experiment_spec(spec)
    device = choose_device(str(device) if device is not None else None)
    train_data, test_data = load_splits(spec, data_root, train_data, test_data)
    model.to(device)
    train_loader = DeviceLoader(train_data, spec.train.batch_size, device=device, train=True,
                                augment=spec.data.augment, seed=spec.seed)
    test_loader = DeviceLoader(test_data, spec.train.batch_size, device=device, train=False, seed=spec.seed)
    training = _Training.create(model, spec, device, steps_per_epoch=len(train_loader), sink=sink,
                                should_stop=should_stop)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    start_epoch = 0
    if ckpt is not None and resume and ckpt.exists():
        start_epoch = _resume(training, ckpt)
        if sink is not None:
            sink.resume(start_epoch * training.steps_per_epoch)
    # Each epoch seeds the generators dropout draws from (so a resumed run matches): fork them,
    # so that the caller's state is restored afterwards.
    with torch.random.fork_rng(devices=_cuda_indices(device)), training.tracker:
        status = training.fit(start_epoch, train_loader, test_loader, checkpoint=ckpt)
    result = training.result(status, start_step=start_epoch * training.steps_per_epoch, device=device)
    if status == "succeeded":
        _finish(result, model, test_loader, test_data.classes, training.autocast)
    return result


def _resume(training: _Training, path: Path) -> int:
    """Restore weights, optimizer, scaler, history and norms from ``path``; return the next epoch."""
    check_spec(path, training.spec)  # before any weight is loaded
    meta, saved = load_checkpoint(path, model=training.model, optimizer=training.optimizer, scaler=training.scaler)
    training.history = meta["history"]
    for kind, block in saved.items():
        training.norms[kind].append(block)
    if "histograms" in meta:
        training.histograms = [meta.pop("histograms")]
    log.info("resumed from %s after epoch %d", path, meta["epoch"])
    return meta["epoch"] + 1


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _cuda_indices(device: torch.device) -> list[int]:
    """The GPU whose generator training uses, for ``fork_rng`` (forking all would wake every GPU)."""
    return [_cuda_index(device)] if device.type == "cuda" else []


def _seed_dropout(seed: int, device: torch.device) -> None:
    """Seed the generators dropout draws from on ``device``: the CPU's, and that one GPU's."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(_cuda_index(device)):
            torch.cuda.manual_seed(seed)


def _finish(result: TrainResult, model: nn.Module, test_loader: DeviceLoader, classes: tuple[str, ...],
            autocast: Callable) -> None:
    loss, acc, cm = evaluate(model, test_loader.epoch(0), result.spec.model.num_classes, autocast)
    best = max(result.history, key=lambda m: m["test_acc"]) if result.history else None
    last = result.history[-1] if result.history else {}
    result.final = {"test_loss": loss, "test_acc": acc, "train_loss": last.get("train_loss"),
                    "train_acc": last.get("train_acc"), "best_epoch": best["epoch"] if best else None,
                    "best_test_acc": best["test_acc"] if best else None,
                    "seconds": sum(m["seconds"] for m in result.history)}
    result.confusion = cm.tolist()
    result.per_class = classification_report(cm, classes)


@dataclass
class _Training:
    """State of one training shared by the epoch loop and the flush callback."""

    model: nn.Module
    spec: ExperimentSpec
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable
    criterion: nn.Module
    steps_per_epoch: int
    sink: Sink | None
    should_stop: Callable[[], bool] | None
    watch: DivergenceWatch
    first_bad_loss: Tensor  # first step with a non-finite loss (-1: none yet), kept on the device
    tracker: GradientTracker | None = None
    norms: dict[str, NormBuffer] = field(default_factory=lambda: {kind: NormBuffer() for kind in KINDS})
    histograms: list[HistBlock] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # "diverged" | "cancelled"
    diverged_at: int | None = None

    @classmethod
    def create(cls, model: nn.Module, spec: ExperimentSpec, device: torch.device, **callbacks: Any) -> _Training:
        """A training ready for its first step: optimizer, mixed precision, tracker."""
        ts, tracking = spec.train, spec.tracking
        scaler = torch.amp.GradScaler(device.type) if ts.precision == "fp16" else None
        autocast = (partial(torch.autocast, device.type, dtype=_AMP_DTYPES[ts.precision])
                    if ts.precision in _AMP_DTYPES else nullcontext)
        training = cls(model=model, spec=spec, optimizer=build_optimizer(model, ts), scaler=scaler, autocast=autocast,
                  criterion=nn.CrossEntropyLoss(label_smoothing=ts.label_smoothing),
                  watch=DivergenceWatch(scaled=scaler is not None),
                  first_bad_loss=torch.full((), -1, dtype=torch.int64, device=device), **callbacks)
        training.tracker = GradientTracker(model, layer_types=tracking.layer_types, mode=tracking.mode,
                                           activation_every=tracking.activation_every,
                                           flush_every=tracking.flush_every, scaler=scaler,
                                           on_flush=training.on_flush, histogram_every=tracking.histogram_every,
                                           on_histograms=training.on_histograms)
        return training

    def fit(self, start_epoch: int, train_loader: DeviceLoader, test_loader: DeviceLoader, *,
            checkpoint: Path | None) -> str:
        """Train the epochs from ``start_epoch`` on; return the status."""
        every = self.spec.checkpoint_every
        for epoch in range(start_epoch, self.spec.train.epochs):
            metrics = self.train_epoch(epoch, train_loader)
            self.tracker.flush()  # a checkpoint must hold every step up to it, so flush at epoch ends
            if self.stopped:
                return self.stopped
            metrics |= self.test_metrics(test_loader)
            self.history.append(metrics)
            if self.sink is not None:
                self.sink.epoch(metrics)
            if checkpoint is not None and every and (epoch + 1) % every == 0:
                save_checkpoint(checkpoint, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                                norms={k: v.block() for k, v in self.norms.items()},
                                histograms=self.joined_histograms(),
                                meta={"epoch": epoch, "history": self.history,
                                      "spec": self.spec.model_dump(mode="json")})
        return "succeeded"

    def train_epoch(self, epoch: int, loader: DeviceLoader) -> dict[str, Any]:
        model, ts = self.model, self.spec.train
        model.train()
        device = next(model.parameters()).device
        # Dropout draws from the global generator: seed it per epoch so a resumed run matches.
        _seed_dropout(self.spec.seed * 100_003 + epoch, device)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen, started = 0, time.perf_counter()
        lr = ts.lr
        for batch, (x, y) in enumerate(loader.epoch(epoch)):
            if self.should_stop is not None and self.should_stop():
                self.stopped = "cancelled"
                break
            step = epoch * self.steps_per_epoch + batch
            lr = lr_at(step, ts, self.steps_per_epoch)
            loss, logits = self._step(step, x, y, lr)
            loss_sum += loss.detach().double() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if self.sink is not None:
                self.sink.step(StepInfo(step, epoch, batch, self.steps_per_epoch, lr, loss.detach()))
            if self.stopped:
                break
        seconds = time.perf_counter() - started
        return {"epoch": epoch, "train_loss": float(loss_sum.item()) / max(seen, 1),
                "train_acc": float(correct.item()) / max(seen, 1), "lr": lr, "seconds": seconds,
                "images_per_sec": seen / seconds if seconds > 0 else 0.0}

    def _step(self, step: int, x: Tensor, y: Tensor, lr: float) -> tuple[Tensor, Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.tracker.start_step(step)
        with self.autocast():
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        # Remember the first step whose loss is not finite without reading the loss (a host sync):
        # the flush that already moves the norms to the host reads it.
        first = ~torch.isfinite(loss.detach()) & (self.first_bad_loss < 0)
        self.first_bad_loss = torch.where(first, step, self.first_bad_loss)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # true gradients for tracking and clipping
        else:
            loss.backward()
        clip = self.spec.train.grad_clip
        global_norm = None
        if clip is not None:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            global_norm = nn.utils.get_total_norm(grads, foreach=True)
        # Every norm is recorded before clipping: the study is about the gradient backprop delivers, and
        # the pre-clip global norm is what tells whether gradients explode. May flush -> on_flush below.
        self.tracker.record_step(global_norm=global_norm)
        if clip is not None:
            nn.utils.clip_grads_with_norm_(self.model.parameters(), clip, global_norm, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, logits

    def on_flush(self, block: NormBlock) -> None:
        """Keep the block, pass it on, and stop the run at the first sign of divergence."""
        self.norms[block.kind].append(block)
        if self.sink is not None:
            self.sink.norms(block)
        # Watch the kind recorded at every step: weights (fused mode) or outputs (the original mode).
        if block.kind != ("weight" if self.spec.tracking.mode == "fused" else "activation") or self.stopped:
            return
        first_bad_loss = int(self.first_bad_loss.item())  # the flush has just synced: this read waits for nothing
        verdict = self.watch.check(block, first_bad_loss if first_bad_loss >= 0 else None)
        if verdict is not None:
            self.stopped = "diverged"
            self.diverged_at, why = verdict
            log.warning("run diverged at step %d: %s", self.diverged_at, why)

    def on_histograms(self, block: HistBlock) -> None:
        self.histograms.append(block)
        if self.sink is not None:
            self.sink.histograms(block)

    def joined_histograms(self) -> HistBlock | None:
        """The histograms so far as one block, kept joined (few rows: one per ``histogram_every`` steps)."""
        self.histograms = [joined] if (joined := join(self.histograms)) is not None else []
        return joined

    def test_metrics(self, loader: DeviceLoader) -> dict[str, float]:
        loss, acc, _ = evaluate(self.model, loader.epoch(0), self.spec.model.num_classes, self.autocast)
        return {"test_loss": loss, "test_acc": acc}

    def result(self, status: str, *, start_step: int, device: torch.device) -> TrainResult:
        norms = {k: v.block() for k, v in self.norms.items()}
        return TrainResult(spec=self.spec, status=status, history=self.history, norms=norms,
                           steps_per_epoch=self.steps_per_epoch, start_step=start_step,
                           histograms=self.joined_histograms(),
                           layers=[la.to_dict() for la in self.tracker.layers],
                           diverged_at_step=self.diverged_at, environment=environment(device),
                           summary=summarize_run(norms, steps_per_epoch=self.steps_per_epoch,
                                                 fraction=self.spec.tracking.vanishing_fraction,
                                                 roles={la.name: la.role for la in self.tracker.layers}))
