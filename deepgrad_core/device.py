"""Pick the training device at run time; never assume CUDA."""

from __future__ import annotations

import torch


def choose_device(preferred: str | None = None) -> torch.device:
    """``preferred`` ("cpu", "cuda", "cuda:1") if given and available, else CUDA when present, else CPU."""
    if preferred:
        device = torch.device(preferred)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {preferred!r} was requested but CUDA is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
