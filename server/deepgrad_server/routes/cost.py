"""What a job would cost, before it runs: ``POST /cost`` with a spec, no data, no training."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from deepgrad_server import admission
from deepgrad_server.deps import SettingsDep
from deepgrad_server.schemas import CostPublic, JobCreate, errors
from deepgrad_server.settings import Settings

router = APIRouter(tags=["cost"])


def _cost(body: JobCreate, settings: Settings) -> dict[str, Any]:
    from deepgrad_core.analysis import estimate_memory, spec_cost  # torch: loaded on the first call

    spec = body
    estimate = estimate_memory(spec, admission.device_type(settings))
    budget = admission.memory_budget(settings)
    return {"spec": spec.model_dump(mode="json", exclude={"name"}), "cost": spec_cost(spec).to_dict(),
            "memory": {**estimate.to_dict(), "budget_bytes": budget,
                       "fits": None if budget is None else estimate.host_bytes <= budget},
            "limit_errors": [e["msg"] for e in admission.limit_errors(spec, settings)]}


@router.post("/cost", response_model=CostPublic, responses=errors(400, 413, 503))
async def cost(body: JobCreate, request: Request, settings: SettingsDep) -> CostPublic:
    """The model's parameters, FLOPs and activation memory at full size, and the job's estimated memory."""
    # Building a full-size model is a second of CPU work: it runs on the render threads, not the request ones.
    return CostPublic(**await request.app.state.render_pool.run(lambda: _cost(body, settings)))
