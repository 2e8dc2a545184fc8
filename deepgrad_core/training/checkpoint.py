"""Epoch checkpoints in safetensors: weights, optimizer state and the series so far.

Never pickle: a checkpoint is tensors plus JSON metadata, so loading one cannot run code.
Written to a temporary file and renamed, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from deepgrad_core.histograms import HistBlock
from deepgrad_core.norms import NormBlock

CHECKPOINT_NAME = "last.safetensors"


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, norms: dict[str, NormBlock | None],
                    meta: dict[str, Any], histograms: HistBlock | None = None) -> None:
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    for kind, block in norms.items():
        if block is not None:
            tensors[f"norms/{kind}/steps"] = torch.from_numpy(block.steps)
            tensors[f"norms/{kind}/values"] = torch.from_numpy(block.values)
            meta.setdefault("norm_layers", {})[kind] = list(block.layers)
    if histograms is not None:
        tensors["hist/steps"] = torch.from_numpy(np.ascontiguousarray(histograms.steps))
        tensors["hist/counts"] = torch.from_numpy(np.ascontiguousarray(histograms.counts))
        meta["hist_layers"] = list(histograms.layers)
    metadata = {
        "meta": json.dumps(meta),
        "optim_groups": json.dumps(opt_state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler.state_dict() if scaler is not None else None),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not stay full of half a checkpoint
        raise


class CheckpointError(ValueError):
    """A file at the checkpoint path that is not a DeepGrad checkpoint (never unpickled, never run)."""


@contextmanager
def _open(path: Path) -> Iterator[Any]:
    """``safe_open`` of a checkpoint; a file that is not one is a ``CheckpointError`` naming it."""
    try:
        handle = safe_open(str(path), framework="pt")
        metadata = handle.metadata() or {}
    except Exception as err:  # safetensors says "header too large" and the like, not which file
        raise CheckpointError(f"{path} is not a DeepGrad checkpoint (safetensors): {err}") from err
    if "meta" not in metadata:
        raise CheckpointError(f"{path} is a safetensors file but not a DeepGrad checkpoint (no 'meta')")
    with handle as f:
        yield f


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's metadata (epoch, history, spec) without loading a tensor."""
    with _open(path) as f:
        return json.loads(f.metadata()["meta"])


class CheckpointMismatch(ValueError):
    """A checkpoint written for another spec: resuming from it would mix two experiments."""


def check_spec(path: Path, spec: Any) -> None:
    """Raise ``CheckpointMismatch`` unless the checkpoint at ``path`` was written for ``spec`` (validated, so
    resolved: a spec file that leaves a default out matches the checkpoint that recorded it)."""
    recorded = read_meta(path).get("spec")
    try:
        same = type(spec).model_validate(recorded) == spec
    except ValueError:  # a spec this version no longer accepts
        same = False
    if not same:
        raise CheckpointMismatch(f"checkpoint {path} was written for a different spec; start over (resume=False, "
                                 "or --no-resume) or use another checkpoint folder")


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None) -> tuple[dict[str, Any], dict[str, NormBlock]]:
    """Restore model, optimizer and scaler in place; return (meta, norms recorded so far). The histograms
    recorded so far are in ``meta["histograms"]`` (a ``HistBlock``; absent when none were)."""
    device = next(model.parameters()).device
    with _open(path) as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(metadata["meta"])
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    state: dict[int, dict[str, Any]] = {}
    for pid, values in json.loads(metadata["optim_scalars"]).items():
        state.setdefault(int(pid), {}).update(values)
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, pid, name = key.split("/", 2)
            state.setdefault(int(pid), {})[name] = value.to(device) if name != "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["optim_groups"])})
    scaler_state = json.loads(metadata["scaler"])
    if scaler is not None and scaler_state:
        scaler.load_state_dict(scaler_state)
    norms = {}
    for kind, layers in meta.get("norm_layers", {}).items():
        norms[kind] = NormBlock(kind, tensors[f"norms/{kind}/steps"].numpy().astype(np.int64),
                                tuple(layers), tensors[f"norms/{kind}/values"].numpy())
    if "hist_layers" in meta:
        meta["histograms"] = HistBlock(tensors["hist/steps"].numpy().astype(np.int64), tuple(meta["hist_layers"]),
                                       tensors["hist/counts"].numpy())
    return meta, norms
