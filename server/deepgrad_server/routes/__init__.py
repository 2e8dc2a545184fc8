"""One router per resource, gathered here."""

from fastapi import APIRouter, Depends

from deepgrad_server.deps import require_token
from deepgrad_server.routes import compare, cost, events, jobs, meta, plots, series, studies
from deepgrad_server.schemas import errors

api_router = APIRouter()
api_router.include_router(meta.public)  # /health: no token
# Before jobs: /jobs/events must not reach /jobs/{job_id} (a 422: 'events' is no job id).
api_router.include_router(events.router, dependencies=[Depends(require_token)], responses=errors(401))
for module in (jobs, studies, series, plots, compare, cost, meta):
    api_router.include_router(module.router, dependencies=[Depends(require_token)], responses=errors(401))
