"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        models = []
    return models[0] if models else platform.processor() or platform.machine()


def hardware() -> str:
    """``<CPU model>, <n> cores``."""
    return f"{cpu_name()}, {os.cpu_count()} cores"
