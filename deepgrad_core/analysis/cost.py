"""What a model costs: parameters, FLOPs, activation memory and (on CUDA) the peak of one training step.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, not a hand count, so they follow
its conventions: a multiply-add is 2 FLOPs, and only the matrix ops it knows (convolutions,
matmuls, attention) are counted; element-wise ops (activations, batch norm, pooling, adds)
count 0. ``cost_report`` leaves the model exactly as it found it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from deepgrad_core.device import choose_device
from deepgrad_core.models.tracked import tracked_layers
from deepgrad_core.spec import ExperimentSpec, ModelSpec

log = logging.getLogger(__name__)

# The activation estimate runs two images: a train-mode BatchNorm refuses a batch of one
# when it normalizes a single value per channel (after a Linear, or on a 1x1 feature map).
_ACT_BATCH = 2


@dataclass
class LayerCost:
    """One tracked layer: ``params`` counts weight and bias; ``flops`` and ``output_shape`` are per image."""

    name: str
    path: str
    kind: str
    params: int
    flops: int
    output_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "kind": self.kind, "params": self.params,
                "flops": self.flops, "output_shape": list(self.output_shape)}


@dataclass
class CostReport:
    """The cost of one model at one input shape (per image unless named otherwise).

    ``activation_bytes_per_image`` estimates what autograd keeps for backward: the bytes of
    every leaf module's outputs in a training-mode forward pass (storage shared by in-place ops
    and views counted once). ``peak_train_step_bytes`` is measured, not estimated: CUDA's peak
    allocated memory over one forward + backward + SGD-with-momentum step at the report's batch
    size, model weights included; None when not measured (CPU, or ``measure_peak=False``).
    """

    total_params: int
    trainable_params: int
    flops_per_image: int
    activation_bytes_per_image: int
    layers: list[LayerCost]
    peak_train_step_bytes: int | None
    input_shape: tuple[int, ...]
    device: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (lists, not tuples)."""
        return {"total_params": self.total_params, "trainable_params": self.trainable_params,
                "flops_per_image": self.flops_per_image,
                "activation_bytes_per_image": self.activation_bytes_per_image,
                "layers": [layer.to_dict() for layer in self.layers],
                "peak_train_step_bytes": self.peak_train_step_bytes,
                "input_shape": list(self.input_shape), "device": self.device}


def cost_report(model: nn.Module, input_shape: tuple[int, int, int] = (3, 32, 32), *,
                layer_types: Sequence[str] = ("conv", "linear"), device: str | torch.device | None = None,
                measure_peak: bool = True, batch_size: int = 32) -> CostReport:
    """Parameters, FLOPs and memory of ``model`` on images of ``input_shape`` (C, H, W).

    ``device`` (default: where the model's parameters are) runs the passes; the model is moved
    there and back if needed. Training/eval flags, parameters, buffers (BatchNorm running
    stats), gradients, hooks and the global RNG state are all as before when this returns.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = tracked_layers(model, layer_types)
    params = list(model.parameters())
    home = _model_device(model)
    run_on = choose_device(str(device)) if device is not None else home
    with _preserved(model, home, run_on):
        dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
        x = torch.randn(1, *input_shape, device=run_on, dtype=dtype)
        flops_total, flops_by_path = _count_flops(model, x)
        x = torch.randn(_ACT_BATCH, *input_shape, device=run_on, dtype=dtype)
        act_bytes, shapes = _trace_outputs(model, x, [t.path for t in layers])
        peak = None
        if measure_peak and run_on.type == "cuda":
            peak = _peak_step_bytes(model, torch.randn(batch_size, *input_shape, device=run_on, dtype=dtype))
    costs = [LayerCost(t.name, t.path, t.kind, sum(p.numel() for p in t.module.parameters()),
                       flops_by_path.get(t.path, 0), shapes.get(t.path, ())) for t in layers]
    return CostReport(total_params=sum(p.numel() for p in params),
                      trainable_params=sum(p.numel() for p in params if p.requires_grad),
                      flops_per_image=flops_total, activation_bytes_per_image=act_bytes // _ACT_BATCH,
                      layers=costs, peak_train_step_bytes=peak, input_shape=tuple(input_shape),
                      device=str(run_on))


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextmanager
def _preserved(model: nn.Module, home: torch.device, run_on: torch.device) -> Iterator[None]:
    """Run on ``run_on``; afterwards restore device, buffers, modes and the RNG streams.

    Buffers are saved by name and restored after the move home, because ``Module.to`` replaces
    buffer tensors (parameters keep their identity). They are saved on the CPU so that the
    snapshot does not count toward a measured CUDA peak.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = {name: b.detach().to("cpu", copy=True) for name, b in model.named_buffers()}
    cuda_devices = [run_on.index if run_on.index is not None else torch.cuda.current_device()] \
        if run_on.type == "cuda" else []
    moved = run_on != home
    try:
        if moved:
            model.to(run_on)
        with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
            yield
    finally:
        if moved:
            model.to(home)
        with torch.no_grad():
            for name, buf in model.named_buffers():
                buf.copy_(buffers[name])
        for module, training in modes:
            module.training = training


def _count_flops(model: nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total and per-module-path FLOPs of one eval-mode forward pass of ``x``.

    FlopCounterMode names the top module by its class name ("Global" is the grand total) and
    its children by their path under it: ``VGG.features.0``; strip that prefix.
    """
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    root = type(model).__name__
    by_path: dict[str, int] = {}
    for fqn, ops in counter.get_flop_counts().items():
        if fqn == root:
            by_path[""] = sum(ops.values())
        elif fqn.startswith(root + "."):
            by_path[fqn[len(root) + 1:]] = sum(ops.values())
    return int(counter.get_total_flops()), by_path


def _trace_outputs(model: nn.Module, x: torch.Tensor,
                   paths: Sequence[str]) -> tuple[int, dict[str, tuple[int, ...]]]:
    """Bytes of all leaf-module outputs of a train-mode forward, and per-image output shapes at ``paths``."""
    model.train()
    modules = dict(model.named_modules())
    kept: list[torch.Tensor] = []  # alive until the end, so a freed storage's address is never reused
    seen: set[int] = set()
    shapes: dict[str, tuple[int, ...]] = {}
    total = 0

    def on_output(path: str, leaf: bool):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            nonlocal total
            tensors = [t for t in tree_leaves(output) if isinstance(t, torch.Tensor)]
            if path in wanted and tensors:
                shapes[path] = tuple(tensors[0].shape[1:])
            for t in tensors if leaf else ():
                if t.is_meta:  # shapes only, no storage to share: each output tensor counts once
                    key, size = id(t), t.numel() * t.element_size()
                else:
                    storage = t.untyped_storage()
                    key, size = storage.data_ptr(), storage.nbytes()
                if key not in seen:
                    seen.add(key)
                    kept.append(t)
                    total += size
        return hook

    wanted = set(paths)
    handles = [m.register_forward_hook(on_output(p, not any(m.children())))
               for p, m in modules.items() if p in wanted or not any(m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return total, shapes


def _peak_step_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak CUDA memory of forward + backward + an SGD-with-momentum update at ``x``'s batch size.

    The update is computed into fresh momentum buffers but never applied: applying it in place
    allocates nothing more, and this way the parameters stay untouched. Existing gradients wait
    on the CPU so that they do not inflate the peak.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    saved_grads = [None if p.grad is None else p.grad.to("cpu") for p in params]
    for p in params:
        p.grad = None
    model.train()
    try:
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        model(x).float().mean().backward()
        grads = [p.grad for p in params if p.grad is not None]
        momentum = [torch.zeros_like(g) for g in grads]
        torch._foreach_mul_(momentum, 0.9)
        torch._foreach_add_(momentum, grads)
        torch.cuda.synchronize(x.device)
        peak = int(torch.cuda.max_memory_allocated(x.device))
        del grads, momentum
    finally:
        for p, grad in zip(params, saved_grads, strict=True):
            p.grad = None if grad is None else grad.to(p.device)
    log.debug("peak train step at batch %d: %d bytes", x.shape[0], peak)
    return peak


def spec_cost(spec: ExperimentSpec) -> CostReport:
    """The cost report of the model a spec describes, at full size, before any training: built on PyTorch's
    ``meta`` device (shapes without storage), so that it takes a fraction of a second and no memory
    (``POST /cost``). The same numbers as ``cost_report`` of the real model (tests check it)."""
    return meta_cost(spec.model, spec.input_shape)


@functools.lru_cache(maxsize=128)
def meta_cost(model_spec: ModelSpec, input_shape: tuple[int, int, int]) -> CostReport:
    """``spec_cost`` by model spec and input shape, cached (the memory estimate of every submission uses it)."""
    from deepgrad_core.models import build_model

    with torch.device("meta"):
        model = build_model(model_spec)
    layers = tracked_layers(model, ("conv", "linear"))
    flops_total, flops_by_path = _count_flops(model, torch.empty(1, *input_shape, device="meta"))
    act_bytes, shapes = _trace_outputs(model, torch.empty(_ACT_BATCH, *input_shape, device="meta"),
                                       [t.path for t in layers])
    params = list(model.parameters())
    costs = [LayerCost(t.name, t.path, t.kind, sum(p.numel() for p in t.module.parameters()),
                       flops_by_path.get(t.path, 0), shapes.get(t.path, ())) for t in layers]
    return CostReport(total_params=sum(p.numel() for p in params),
                      trainable_params=sum(p.numel() for p in params if p.requires_grad),
                      flops_per_image=flops_total, activation_bytes_per_image=act_bytes // _ACT_BATCH,
                      layers=costs, peak_train_step_bytes=None, input_shape=tuple(input_shape), device="meta")
