"""What the server offers (``/models``) and whether it is up (``/health``, no token)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request

from deepgrad_core import spec as core_spec
from deepgrad_server import __version__, store
from deepgrad_server.db import Database
from deepgrad_server.deps import DbDep, SettingsDep
from deepgrad_server.schemas import Health

router = APIRouter(tags=["meta"])
public = APIRouter(tags=["meta"])

_OPTIONS = {"kernel_size": core_spec.KERNEL_SIZES, "pooling": core_spec.POOLINGS,
            "activation": core_spec.ACTIVATIONS, "init": core_spec.INITS}


@router.get("/models")
def models(settings: SettingsDep) -> dict[str, Any]:
    """Architectures, their options with allowed values and defaults, data sets, this server's limits."""
    fields = core_spec.ModelSpec.model_fields
    options = {name: {"allowed": list(allowed), "default": fields[name].default,
                      "description": fields[name].description} for name, allowed in _OPTIONS.items()}
    for name in ("batch_norm", "dropout", "bottleneck", "bottleneck_factor", "residual", "extra_convs", "width",
                 "in_channels", "num_classes"):
        options[name] = {"default": fields[name].default, "description": fields[name].description}
    return {"archs": list(core_spec.ARCHS), "family_defaults": core_spec.FAMILY_DEFAULTS, "options": options,
            "datasets": list(core_spec.DATASETS), "optimizers": list(core_spec.OPTIMIZERS),
            "schedules": list(core_spec.SCHEDULES), "precisions": list(core_spec.PRECISIONS),
            "limits": {"max_epochs": settings.max_epochs, "max_batch_size": settings.max_batch_size,
                       "max_width": settings.max_width, "max_queued": settings.max_queued,
                       "max_steps": settings.max_steps, "max_job_memory_gib": settings.max_job_memory_gib},
            "spec_schema": core_spec.ExperimentSpec.model_json_schema()}


def _queue_counts(db: Database) -> dict[str, int]:
    with db.reading() as s:
        return store.queue_counts(s)


@public.get("/health", response_model=Health)
async def health(db: DbDep, request: Request) -> Health:
    """Liveness and queue depth; the one endpoint that needs no token."""
    # Threads of its own: /health never waits behind slow requests.
    counts = await anyio.to_thread.run_sync(_queue_counts, db, limiter=request.app.state.health_limiter)
    workers = request.app.state.workers
    state = "disabled" if not workers else ("alive" if all(w.alive for w in workers) else "stopped")
    settings = request.app.state.settings
    slots = None
    if workers:
        slots = workers[0].executor.describe().get("slots", len(workers)) if settings.executor == "ray" \
            else len(workers)
    return Health(status="ok", version=__version__, queued=counts.get("queued", 0),
                  running=counts.get("running", 0), worker=state, executor=settings.executor, slots=slots)
