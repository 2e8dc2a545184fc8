"""How much memory a run will need, estimated from its spec before anything is loaded or allocated.

The model is built on PyTorch's ``meta`` device (shapes without storage, a fraction of a second even
for full-size models) and run forward once, so parameters, tracked layers and what autograd keeps
for backward come from the real builder, not from a second description of each architecture.

Host memory of a run on the CPU = the Python/PyTorch runtime + the data set as loaded + weights,
gradients and optimizer state + the activations of a training step + the recorded norm history.
On a GPU the model and the activations live on the device instead (``device_bytes``); the host keeps
the runtime (larger: CUDA's libraries), the data and the norms. The constants were measured on the
CPU with ``bench/memory_estimate.py`` (peak RSS of real runs against this estimate, side by side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepgrad_core.analysis.cost import meta_cost
from deepgrad_core.spec import (
    DATASET_CLASSES,
    DATASET_IMAGES_PER_CLASS,
    ExperimentSpec,
    images_per_class,
    planned_steps,
)

MiB = 1 << 20
# Resident memory of a training process beyond its data, weights and activations: Python, NumPy, PyTorch's
# CPU kernels (~550 MB) and what a training loop adds over its first steps (oneDNN's caches, allocator slack).
RUNTIME_BYTES = 1000 * MiB
# What CUDA adds on the host (its libraries and the context's host-side state), and on the device: not
# measured here (no GPU at hand when these were set); generous on purpose.
CUDA_HOST_BYTES = 1200 * MiB
CUDA_CONTEXT_BYTES = 600 * MiB
# Autograd keeps ~75% of the leaf modules' outputs for backward, and backward adds the gradients flowing
# through the widest layers: measured peaks sit at 0.8-0.95x of the saved outputs plus the runtime
# (bench/memory_estimate.py), so 1.1x of the leaf outputs bounds them. Mixed precision halves most of it.
ACTIVATION_FACTOR = 1.1
HALF_PRECISION_FACTOR = 0.6
# Optimizer state per parameter, in copies of the weights.
_OPTIMIZER_COPIES = {"sgd": 1, "adam": 2, "adamw": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak bytes of one run: on the host, and on the training device when that is a GPU."""

    host_bytes: int
    device_bytes: int  # 0 when training on the CPU (then everything is host memory)
    parts: dict[str, int]  # runtime, data, model, activations, norms (bytes each)
    device_type: str

    def main_cause(self) -> tuple[str, str]:
        """The largest part, and the spec field that most directly shrinks it."""
        part = max(("data", "model", "activations", "norms"), key=lambda k: self.parts[k])
        return part, {"data": "data.subset", "model": "model.width", "activations": "train.batch_size",
                      "norms": "train.epochs"}[part]

    def to_dict(self) -> dict[str, Any]:
        return {"host_bytes": self.host_bytes, "device_bytes": self.device_bytes, "device_type": self.device_type,
                "parts": dict(self.parts)}


def _model_shape(spec: ExperimentSpec) -> tuple[int, int, int]:
    """(parameters, tracked layers, saved-activation bytes per image) of the spec's model, from its meta-device
    cost report (cached, shared with ``POST /cost``)."""
    cost = meta_cost(spec.model, spec.input_shape)
    kinds = set(spec.tracking.layer_types)
    return cost.total_params, sum(la.kind in kinds for la in cost.layers), cost.activation_bytes_per_image


def _loaded_images(spec: ExperimentSpec, split: str) -> tuple[int, int]:
    """(images decoded while loading, images kept) of one split: real data sets are read whole, then subset."""
    kept = images_per_class(spec.data, split) * DATASET_CLASSES[spec.data.name]
    if spec.data.name == "synthetic":
        return 0, kept
    return DATASET_IMAGES_PER_CLASS[spec.data.name][split] * DATASET_CLASSES[spec.data.name], kept


def estimate_memory(spec: ExperimentSpec, device_type: str = "cpu") -> MemoryEstimate:
    """Peak memory of running ``spec`` on a device of ``device_type`` (``cpu`` or ``cuda``)."""
    channels, side, _ = spec.input_shape
    params, tracked, act_per_image = _model_shape(spec)
    image = channels * side * side  # uint8 bytes
    data = kept_bytes = 0
    for split in ("train", "test"):
        read, kept = _loaded_images(spec, split)
        kept_bytes += kept * (image + 8)  # images and int64 labels
        data += read * image + kept * (image + 8)  # the whole split is read before the subset is taken
    ts = spec.train
    copies = 2 + (_OPTIMIZER_COPIES[ts.optimizer] if ts.optimizer != "sgd" or ts.momentum > 0 else 0)
    model = params * 4 * copies
    batch = ts.batch_size
    # Saved outputs of a training step, plus the batch itself: padded uint8, gathered, float, normalized.
    factor = ACTIVATION_FACTOR * (HALF_PRECISION_FACTOR if ts.precision != "fp32" else 1.0)
    activations = int(act_per_image * batch * factor) + batch * image * 16
    _, steps = planned_steps(spec)
    every = spec.tracking.activation_every
    rows = steps * (1 + (1 / every if every else 0)) + (steps if ts.grad_clip is not None else 0)
    norms = int(rows * max(tracked, 1) * 4 * 2)  # kept whole, and concatenated for each checkpoint
    parts = {"runtime": RUNTIME_BYTES, "data": data, "model": model, "activations": activations, "norms": norms}
    if device_type == "cuda":
        parts["runtime"] += CUDA_HOST_BYTES
        host = parts["runtime"] + data + norms
        device = CUDA_CONTEXT_BYTES + kept_bytes + model + activations
    else:
        host, device = sum(parts.values()), 0
    return MemoryEstimate(host_bytes=int(host), device_bytes=int(device), parts=parts, device_type=device_type)
