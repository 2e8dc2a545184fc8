"""The training loop: reads top to bottom, one epoch at a time.

Host syncs are kept out of the step: running loss and accuracy accumulate on the device and
are read once per epoch; gradient norms reach the host once per tracker flush, and that is
where divergence (non-finite loss or norms) is noticed and the run stopped.
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
from typing import Any

import torch
from torch import Tensor, nn

from deepgrad_core.analysis.summary import summarize_run
from deepgrad_core.data import ImageSplit, load_split
from deepgrad_core.device import choose_device
from deepgrad_core.loader import DeviceLoader
from deepgrad_core.norms import NormBlock, concat_blocks
from deepgrad_core.spec import ExperimentSpec, as_experiment_spec
from deepgrad_core.tracker import GradientTracker
from deepgrad_core.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from deepgrad_core.training.evaluate import classification_report, evaluate
from deepgrad_core.training.optim import build_optimizer, lr_at

log = logging.getLogger(__name__)

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class StepInfo:
    """Passed to ``on_step`` after every optimizer step. ``loss`` stays on the device:
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
          test_data: ImageSplit | None = None, on_step: Callable[[StepInfo], None] | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None,
          on_norms: Callable[[NormBlock], None] | None = None, should_stop: Callable[[], bool] | None = None,
          checkpoint_dir: str | Path | None = None, resume: bool = True) -> TrainResult:
    """Train ``model`` as ``spec`` says, tracking per-layer gradient norms all along.

    Callbacks: ``on_step`` after every step, ``on_epoch`` with each epoch's metrics, ``on_norms``
    with every flushed ``NormBlock``. ``should_stop`` is polled between steps (cooperative
    cancel). With ``checkpoint_dir`` a checkpoint is written after every ``checkpoint_every``
    epochs and, when ``resume`` is true and one exists, the run continues from it exactly.
    """
    spec = as_experiment_spec(spec)
    device = choose_device(str(device) if device is not None else None)
    model.to(device)
    ts = spec.train
    train_data = train_data or load_split(spec.data, "train", root=data_root,
                                          in_channels=spec.model.in_channels, seed=spec.seed)
    test_data = test_data or load_split(spec.data, "test", root=data_root,
                                        in_channels=spec.model.in_channels, seed=spec.seed)
    train_loader = DeviceLoader(train_data, ts.batch_size, device=device, train=True,
                                augment=spec.data.augment, seed=spec.seed)
    test_loader = DeviceLoader(test_data, ts.batch_size, device=device, train=False, seed=spec.seed)
    steps_per_epoch = len(train_loader)

    optimizer = build_optimizer(model, ts)
    scaler = torch.amp.GradScaler(device.type) if ts.precision == "fp16" else None
    autocast = (partial(torch.autocast, device.type, dtype=_AMP_DTYPES[ts.precision])
                if ts.precision in _AMP_DTYPES else nullcontext)
    criterion = nn.CrossEntropyLoss(label_smoothing=ts.label_smoothing)

    blocks: dict[str, list[NormBlock]] = {"weight": [], "activation": [], "global": []}
    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if ckpt is not None and resume and ckpt.exists():
        meta, saved = load_checkpoint(ckpt, model=model, optimizer=optimizer, scaler=scaler)
        if meta["spec"] != spec.model_dump(mode="json"):
            raise ValueError(f"checkpoint {ckpt} was written for a different spec; use another "
                             "checkpoint_dir or resume=False")
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        for kind, block in saved.items():
            blocks[kind].append(block)
        log.info("resumed from %s after epoch %d", ckpt, meta["epoch"])

    run = _Run(model=model, spec=spec, optimizer=optimizer, scaler=scaler, autocast=autocast,
               criterion=criterion, steps_per_epoch=steps_per_epoch, on_step=on_step,
               should_stop=should_stop)
    tracker = GradientTracker(model, layer_types=spec.tracking.layer_types, mode=spec.tracking.mode,
                              activation_every=spec.tracking.activation_every,
                              flush_every=spec.tracking.flush_every, scaler=scaler,
                              on_flush=partial(run.on_flush, blocks, on_norms))
    run.tracker = tracker
    status = "succeeded"
    with tracker:
        for epoch in range(start_epoch, ts.epochs):
            metrics = run.train_epoch(epoch, train_loader)
            tracker.flush()  # a checkpoint must hold every step up to it, so flush at epoch ends
            if run.stopped:
                status = run.stopped
                break
            metrics |= run.test_metrics(test_loader)
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics)
            if ckpt is not None and spec.checkpoint_every and (epoch + 1) % spec.checkpoint_every == 0:
                save_checkpoint(ckpt, model=model, optimizer=optimizer, scaler=scaler,
                                norms={k: concat_blocks(v) for k, v in blocks.items()},
                                meta={"epoch": epoch, "history": history, "spec": spec.model_dump(mode="json")})
    norms = {k: concat_blocks(v) for k, v in blocks.items()}
    result = TrainResult(spec=spec, status=status, history=history, norms=norms, steps_per_epoch=steps_per_epoch,
                         layers=[{"name": la.name, "path": la.path, "kind": la.kind, "depth": la.depth}
                                 for la in tracker.layers],
                         diverged_at_step=run.diverged_at, environment=environment(device),
                         summary=summarize_run(norms, steps_per_epoch=steps_per_epoch,
                                               fraction=spec.tracking.vanishing_fraction))
    if status == "succeeded":
        _finish(result, model, test_loader, test_data, autocast)
    return result


def _finish(result: TrainResult, model: nn.Module, test_loader: DeviceLoader, test_data: ImageSplit,
            autocast: Callable) -> None:
    loss, acc, cm = evaluate(model, test_loader.epoch(0), len(test_data.classes), autocast)
    best = max(result.history, key=lambda m: m["test_acc"]) if result.history else None
    last = result.history[-1] if result.history else {}
    result.final = {"test_loss": loss, "test_acc": acc, "train_loss": last.get("train_loss"),
                    "train_acc": last.get("train_acc"), "best_epoch": best["epoch"] if best else None,
                    "best_test_acc": best["test_acc"] if best else None,
                    "seconds": sum(m["seconds"] for m in result.history)}
    result.confusion = cm.tolist()
    result.per_class = classification_report(cm, test_data.classes)


@dataclass
class _Run:
    """State of one training run shared by the epoch loop and the flush callback."""

    model: nn.Module
    spec: ExperimentSpec
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    autocast: Callable
    criterion: nn.Module
    steps_per_epoch: int
    on_step: Callable[[StepInfo], None] | None
    should_stop: Callable[[], bool] | None
    tracker: GradientTracker | None = None
    stopped: str | None = None  # "diverged" | "cancelled"
    diverged_at: int | None = None
    _bad_loss: Tensor | None = None  # count of non-finite losses since the last flush, on device
    _first_step_of_window: int = 0

    def train_epoch(self, epoch: int, loader: DeviceLoader) -> dict[str, Any]:
        model, ts = self.model, self.spec.train
        model.train()
        device = next(model.parameters()).device
        # Dropout draws from the global generator: seed it per epoch so a resumed run matches.
        torch.manual_seed(self.spec.seed * 100_003 + epoch)
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        self._bad_loss = torch.zeros((), device=device, dtype=torch.int64)
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
            if self.on_step is not None:
                self.on_step(StepInfo(step, epoch, batch, self.steps_per_epoch, lr, loss.detach()))
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
        self._bad_loss += (~torch.isfinite(loss)).long()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # true gradients for tracking and clipping
        else:
            loss.backward()
        global_norm = None
        if self.spec.train.grad_clip is not None:
            # The pre-clip norm is what tells whether gradients explode; it is what we record.
            global_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip,
                                                   foreach=True)
        self.tracker.record_step(global_norm=global_norm)  # may flush -> on_flush below
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, logits

    def on_flush(self, blocks: dict[str, list[NormBlock]], on_norms: Callable | None, block: NormBlock) -> None:
        """Keep the block, pass it on, and stop the run at the first sign of divergence."""
        blocks[block.kind].append(block)
        if on_norms is not None:
            on_norms(block)
        if block.kind != ("weight" if self.spec.tracking.mode == "fused" else "activation"):
            return
        bad_norm = block.nonfinite_steps
        # Under fp16 a GradScaler skips overflowing steps on its own; only a window where every
        # step overflowed means the run has diverged.
        diverged_norms = len(bad_norm) == len(block) if self.scaler is not None else len(bad_norm) > 0
        bad_loss = self._bad_loss is not None and int(self._bad_loss.item()) > 0
        if (diverged_norms or bad_loss) and not self.stopped:
            self.stopped = "diverged"
            self.diverged_at = int(bad_norm[0]) if len(bad_norm) else int(block.steps[0])
            log.warning("run diverged: non-finite %s at step %d", "loss" if bad_loss else "gradient norms",
                        self.diverged_at)
        if self._bad_loss is not None:
            self._bad_loss.zero_()

    def test_metrics(self, loader: DeviceLoader) -> dict[str, float]:
        loss, acc, _ = evaluate(self.model, loader.epoch(0), self._num_classes(), self.autocast)
        return {"test_loss": loss, "test_acc": acc}

    def _num_classes(self) -> int:
        return self.spec.model.num_classes
