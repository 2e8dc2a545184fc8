"""What this server agrees to run: a spec inside its settings' limits, as a whole job and field by field.

Checked at submit (a 422 naming the field and the limit) and again by the worker before it starts a
job (a job queued under other settings, or by an API-only server, fails ``out_of_memory`` there
instead of being OOM-killed). The bounds: epochs, batch size and width (fields), total steps, and
the estimated memory of the job against what this host can give one job.
"""

from __future__ import annotations

import logging
from typing import Any

from deepgrad_core.spec import ExperimentSpec, planned_steps
from deepgrad_server import hostmem
from deepgrad_server.settings import Settings

log = logging.getLogger(__name__)

GiB = 1 << 30
AUTO_MEMORY_SHARE = 0.85  # of this server's memory limit, less what the server itself holds


def _error(loc: tuple[str, ...], value: Any, msg: str, limit: Any) -> dict[str, Any]:
    return {"type": "less_than_equal", "loc": ("body", *loc), "input": value, "msg": msg, "ctx": {"le": limit}}


def memory_budget(settings: Settings) -> int | None:
    """Bytes one job may use on this host; None when not bounded here (an API-only server, auto)."""
    if settings.max_job_memory_gib is not None:
        return int(settings.max_job_memory_gib * GiB)
    if not settings.worker:
        return None
    free = AUTO_MEMORY_SHARE * hostmem.memory_limit_bytes() - hostmem.rss_bytes()
    return max(int(free) // len(settings.devices), 0)


def warm_up() -> None:
    """Import torch and run one estimate, so that the first submission does not wait ~5 s for them."""
    from deepgrad_core.analysis.memory import estimate_memory

    try:
        estimate_memory(ExperimentSpec.model_validate({"model": {"arch": "resnet18", "width": 0.125}}))
    except Exception:  # only a warm-up: a real failure shows on the first submission
        log.exception("memory-estimate warm-up failed")


def device_type(settings: Settings) -> str:
    """``cuda`` when this server's workers train on a GPU, else ``cpu``."""
    if settings.device:
        return "cuda" if any(d.startswith("cuda") for d in settings.devices) else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_errors(spec: ExperimentSpec, settings: Settings, *, memory: bool = True) -> list[dict[str, Any]]:
    """FastAPI-shaped errors (``loc``, ``msg``, ``input``, ``ctx``) for every limit ``spec`` breaks (``memory``:
    the memory estimate too)."""
    errors = []
    for loc, value, limit, setting in ((("train", "epochs"), spec.train.epochs, settings.max_epochs, "MAX_EPOCHS"),
                                       (("train", "batch_size"), spec.train.batch_size, settings.max_batch_size,
                                        "MAX_BATCH_SIZE"),
                                       (("model", "width"), spec.model.width, settings.max_width, "MAX_WIDTH")):
        if value > limit:
            errors.append(_error(loc, value, f"this server allows at most {limit} (DEEPGRAD_{setting})", limit))
    per_epoch, steps = planned_steps(spec)
    if steps > settings.max_steps:
        errors.append(_error(("train", "epochs"), spec.train.epochs,
                             f"this server allows at most {settings.max_steps:,} steps per job (DEEPGRAD_MAX_STEPS); "
                             f"{spec.train.epochs} epochs x {per_epoch:,} steps per epoch is {steps:,}: train fewer "
                             "epochs, on a smaller data.subset, or with a larger train.batch_size", settings.max_steps))
    if errors or not memory:  # the memory estimate builds the model: only for a spec inside the other limits
        return errors
    budget = memory_budget(settings)
    if budget is None:
        return []
    error = memory_error(spec, settings, budget)
    return [error] if error else []


def memory_error(spec: ExperimentSpec, settings: Settings, budget: int) -> dict[str, Any] | None:
    """The error for a job whose estimated host memory exceeds ``budget`` bytes, or None."""
    from deepgrad_core.analysis.memory import estimate_memory  # torch: only once a job is submitted

    estimate = estimate_memory(spec, device_type(settings))
    if estimate.host_bytes <= budget:
        return None
    part, field = estimate.main_cause()
    parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in estimate.parts.items())
    section, name = field.split(".")
    value = getattr(getattr(spec, section), name)
    return _error((section, name), value,
                  f"this job needs about {estimate.host_bytes / GiB:.1f} GiB of memory ({parts} GiB) and this server "
                  f"gives one job at most {budget / GiB:.1f} GiB (DEEPGRAD_MAX_JOB_MEMORY_GIB; unset: "
                  f"{AUTO_MEMORY_SHARE:.0%} of its memory limit, less its own); most of it is {part}: lower {field}",
                  round(budget / GiB, 2))
