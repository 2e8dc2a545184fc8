"""GradientTracker: per-layer gradient norms every step, without slowing training.

Where the cost of tracking comes from (measured on an H200, see docs/benchmarks.md): not only
the host sync of ``.item()``, but the hook machinery and one small reduction kernel per layer.
So the default ``fused`` mode

* reads weight gradients *after* backward with one ``torch._foreach_norm`` over all tracked
  layers (a handful of fused kernels, no hooks) and writes the row into a preallocated device
  buffer: no host sync in a step;
* records the gradient of each layer's output (the original study's signal) only on sampled
  steps, by registering forward hooks just for that step and removing them after it, so the
  other steps pay nothing;
* moves the buffers to the host once per flush, in one transfer, and hands ``NormBlock``s to
  ``on_flush``; non-finite values are found there, not by syncing every step;
* on every ``histogram_every``-th step, counts each tracked layer's weight-gradient elements in fixed
  log10 |g| bins (``deepgrad_core.histograms``) on the device, with ``histc``: no host sync either; the
  rows travel with the norms at the flush and reach ``on_histograms`` as a ``HistBlock``.

``mode="full_backward_hook"`` is the original method (a hook on every layer's full backward pass,
reading its ``grad_output`` with ``.norm().item()`` per layer per step), kept for comparison and
benchmarks.

The tracker follows the model: buffers are allocated on the device of the tracked weights, and
moved there again at the next ``start_step`` when the model has moved (with nothing pending).

Typical use (see ``deepgrad_core.training`` for the whole loop)::

    with GradientTracker(model, on_flush=store) as tracker:
        for step, (x, y) in enumerate(batches):
            tracker.start_step(step)
            loss_fn(model(x), y).backward()
            tracker.record_step()
            optimizer.step()
        tracker.flush()
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from deepgrad_core import histograms
from deepgrad_core.histograms import HistBlock
from deepgrad_core.models.tracked import TrackedLayer, tracked_layers
from deepgrad_core.norms import NormBlock

log = logging.getLogger(__name__)

MODES = ("fused", "full_backward_hook")


class GradientTracker:
    """Record per-layer gradient L2 norms of any ``nn.Module``.

    Args:
        model: the network; tracked layers default to every conv layer in registration order.
        layers: explicit ``TrackedLayer`` list (overrides ``layer_types``).
        mode: ``fused`` (default) or ``full_backward_hook`` (the original study's method).
        activation_every: record output-gradient norms every N steps (1: every step, 0: never).
        flush_every: steps between host transfers; ``on_flush`` receives one block per kind.
        histogram_every: record weight-gradient histograms every N steps (0: never); ``on_histograms``
            receives them, one ``HistBlock`` per flush.
        scaler: a ``torch.amp.GradScaler``; activation norms (both modes) are divided by its
            scale, and ``record_step`` must run after ``scaler.unscale_(optimizer)`` so weight
            norms are the true ones (this is checked).
    """

    def __init__(self, model: nn.Module, *, layers: Sequence[TrackedLayer] | None = None,
                 layer_types: Sequence[str] = ("conv",), mode: str = "fused", activation_every: int = 10,
                 flush_every: int = 50, on_flush: Callable[[NormBlock], None] | None = None,
                 scaler: torch.amp.GradScaler | None = None, histogram_every: int = 0,
                 on_histograms: Callable[[HistBlock], None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if activation_every < 0 or flush_every < 1 or histogram_every < 0:
            raise ValueError("activation_every and histogram_every must be >= 0, and flush_every >= 1")
        self.model = model
        self.layers = list(layers) if layers is not None else tracked_layers(model, layer_types)
        if not self.layers:
            raise ValueError(f"model has no layer of types {list(layer_types)} to track")
        self.names = tuple(layer.name for layer in self.layers)
        self.mode = mode
        self.activation_every = 1 if mode == "full_backward_hook" else activation_every
        self.flush_every = flush_every
        self.histogram_every = histogram_every
        self.on_flush = on_flush
        self.on_histograms = on_histograms
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.device = self.layers[0].weight.device
        self.flushes = 0  # number of device->host transfers made (one per flush with data)
        self.nonfinite: dict[str, list[int]] = {"weight": [], "activation": [], "global": []}
        self._handles: list[RemovableHandle] = []
        self._step_handles: list[RemovableHandle] = []
        self._step: int | None = None
        self._sampled = False
        self._act: list[Tensor | float | None] = [None] * len(self.layers)
        self._reset_buffers()

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self) -> GradientTracker:
        if self.mode == "full_backward_hook" and not self._handles:
            # The *pre*-hook of the full backward hook machinery: same BackwardHook wrapping, same
            # grad_output. The post-hook would make torch warn at every step for the first conv,
            # whose input needs no gradient, and silencing that would take a process-wide
            # warnings filter (the warning is attributed to whoever calls backward()).
            for i, layer in enumerate(self.layers):
                self._handles.append(layer.module.register_full_backward_pre_hook(
                    functools.partial(self._full_backward_hook, i)))
        return self

    def detach(self) -> None:
        """Remove every hook this tracker registered (recorded data stays until flushed)."""
        for handle in self._handles + self._step_handles:
            handle.remove()
        self._handles.clear()
        self._step_handles.clear()

    def __enter__(self) -> GradientTracker:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    # -- per step ----------------------------------------------------------------------------
    def start_step(self, step: int) -> None:
        """Call before the forward pass of global step ``step``."""
        self._follow_model()
        self._step = step
        self._sampled = self.activation_every > 0 and step % self.activation_every == 0
        self._act = [None] * len(self.layers)
        if self._sampled and self.mode == "fused":
            for i, layer in enumerate(self.layers):
                self._step_handles.append(layer.module.register_forward_hook(
                    functools.partial(self._forward_hook, i)))

    def record_step(self, *, global_norm: Tensor | None = None) -> None:
        """Call after backward (and after ``scaler.unscale_``), before ``optimizer.step``."""
        if self._step is None:
            raise RuntimeError("record_step() called without start_step()")
        for handle in self._step_handles:
            handle.remove()
        self._step_handles.clear()
        if self.mode == "fused":
            self._check_unscaled()
            self._record_weights()
            if global_norm is not None:
                self._gbuf[self._wn] = global_norm.detach().float()
                self._has_global = True
            self._wsteps.append(self._step)
            self._wn += 1
        if self._sampled:
            self._record_activations()
        if self.histogram_every and self._step % self.histogram_every == 0:
            self._record_histograms()
        self._step = None
        if self._wn >= self.flush_every or self._an >= self.flush_every or (self._hcap and self._hn >= self._hcap):
            self.flush()

    def _record_weights(self) -> None:
        grads = [layer.weight.grad for layer in self.layers]
        present = [g for g in grads if g is not None]
        if len(present) == len(grads):
            # One fused reduction over all layers, computed in float32 whatever the grad dtype.
            norms = torch._foreach_norm(present, 2, dtype=torch.float32)
            self._wbuf[self._wn] = torch.stack(norms)
        else:  # a layer unused this step: its gradient norm is 0
            row = self._wbuf[self._wn]
            row.zero_()
            idx = [i for i, g in enumerate(grads) if g is not None]
            if idx:
                row[idx] = torch.stack(torch._foreach_norm(present, 2, dtype=torch.float32))

    def _record_histograms(self) -> None:
        """One row of per-layer counts of log10 |g| in the fixed bins, computed where the gradients are."""
        lo, hi = histograms.LOW, histograms.HIGH
        row = self._hbuf[self._hn]
        for j, layer in enumerate(self.layers):
            grad = layer.weight.grad
            if grad is None:
                row[j].zero_()
                continue
            logs = grad.detach().float().abs().log10_()
            # Zeros (-inf) and tiny values land in the first bin, large ones and NaN/inf in the last.
            logs = torch.nan_to_num_(logs, nan=hi, posinf=hi, neginf=lo).clamp_(lo, hi)
            row[j] = torch.histc(logs, bins=histograms.BINS, min=lo, max=hi)
        self._hsteps.append(self._step)
        self._hn += 1

    def _record_activations(self) -> None:
        if self.mode == "full_backward_hook":
            row = torch.tensor([math.nan if v is None else v for v in self._act], dtype=torch.float32)
            if self.scaler is not None:
                # As below, but this mode has synced once per layer already: one more read is cheap.
                row /= self.scaler.get_scale()
            self._abuf[self._an] = row
        else:
            zero = torch.zeros((), device=self.device)
            row = torch.stack([zero if v is None else v for v in self._act])
            if self.scaler is not None:
                # Output gradients were computed on the scaled loss: divide by the scale that
                # backward used (still unchanged: scaler.update() comes after this call).
                row = row / self.scaler._get_scale_async().float()
            self._abuf[self._an] = row
        self._asteps.append(self._step)
        self._an += 1

    def _check_unscaled(self) -> None:
        if self.scaler is None:
            return
        states = self.scaler._per_optimizer_states.values()
        if not any(s["stage"].name == "UNSCALED" for s in states):
            raise RuntimeError("with a GradScaler, call scaler.unscale_(optimizer) before "
                               "tracker.record_step() so the recorded weight norms are unscaled")

    # -- hooks ---------------------------------------------------------------------------------
    def _forward_hook(self, i: int, module: nn.Module, inputs: object, output: Tensor) -> None:
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(functools.partial(self._tensor_hook, i))

    def _tensor_hook(self, i: int, grad: Tensor) -> None:
        # float32 accumulation even when autocast produced a bf16/fp16 gradient.
        self._act[i] = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32)

    def _full_backward_hook(self, i: int, module: nn.Module, grad_output: tuple[Tensor, ...]) -> None:
        # The original study's method: one reduction and one host sync per layer per step.
        if self._step is not None and grad_output[0] is not None:
            self._act[i] = grad_output[0].norm().item()

    # -- flushing -------------------------------------------------------------------------------
    def flush(self) -> list[NormBlock]:
        """Move what was recorded to the host (one transfer) and hand it to ``on_flush``."""
        wn, an, hn = self._wn, self._an, self._hn
        if wn == 0 and an == 0 and hn == 0:
            return []
        parts = [self._wbuf[:wn].flatten(), self._abuf[:an].flatten()]
        if self._has_global:
            parts.append(self._gbuf[:wn])
        parts.append(self._hbuf[:hn].flatten())
        host = torch.cat([p.to(self.device) for p in parts]).cpu().numpy()
        self.flushes += 1
        L = len(self.layers)
        blocks = []
        if wn:
            blocks.append(NormBlock("weight", np.asarray(self._wsteps, np.int64), self.names,
                                    host[: wn * L].reshape(wn, L).copy()))
        if an:
            blocks.append(NormBlock("activation", np.asarray(self._asteps, np.int64), self.names,
                                    host[wn * L: (wn + an) * L].reshape(an, L).copy()))
        end = (wn + an) * L
        if self._has_global:
            blocks.append(NormBlock("global", np.asarray(self._wsteps, np.int64), ("global",),
                                    host[end:end + wn].reshape(wn, 1).copy()))
            end += wn
        hist = HistBlock(np.asarray(self._hsteps, np.int64), self.names,
                         host[end:].reshape(hn, L, histograms.BINS).copy()) if hn else None
        for block in blocks:
            bad = block.nonfinite_steps
            if len(bad):
                self.nonfinite[block.kind].extend(int(s) for s in bad)
                log.warning("non-finite %s gradient norms at %d step(s), first at step %d",
                            block.kind, len(bad), int(bad[0]))
        self._reset_buffers()
        if self.on_flush is not None:
            for block in blocks:
                self.on_flush(block)
        if hist is not None and self.on_histograms is not None:
            self.on_histograms(hist)
        return blocks

    @property
    def first_nonfinite_step(self) -> int | None:
        """Earliest step with a NaN/inf norm among what has been flushed (None: all finite)."""
        steps = [s for kind in self.nonfinite.values() for s in kind]
        return min(steps) if steps else None

    def _follow_model(self) -> None:
        """Adopt the device of the tracked weights: the model may have moved since construction."""
        device = self.layers[0].weight.device
        if device == self.device:
            return
        pending = max(self._wn, self._an, self._hn)
        if pending:
            raise RuntimeError(f"the model moved from {self.device} to {device} while {pending} recorded "
                               "step(s) were waiting in the tracker's buffers; call tracker.flush() before "
                               "moving the model")
        self.device = device
        self._reset_buffers()

    def _reset_buffers(self) -> None:
        L, n = len(self.layers), self.flush_every
        self._wbuf = torch.zeros(n, L, device=self.device)
        self._gbuf = torch.zeros(n, device=self.device)
        # Activation rows are filled on the host in full_backward_hook mode.
        act_device = "cpu" if self.mode == "full_backward_hook" else self.device
        self._abuf = torch.zeros(n, L, device=act_device)
        # Histogram rows come every histogram_every steps: room for those of one flush interval (and one more).
        self._hcap = min(n, -(-n // self.histogram_every) + 1) if self.histogram_every else 0
        self._hbuf = torch.zeros(self._hcap, L, histograms.BINS, device=self.device)
        self._wsteps: list[int] = []
        self._asteps: list[int] = []
        self._hsteps: list[int] = []
        self._wn = self._an = self._hn = 0
        self._has_global = False
