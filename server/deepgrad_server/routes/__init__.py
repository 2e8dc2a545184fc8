"""One router per resource, gathered here."""

from fastapi import APIRouter, Depends

from deepgrad_server.deps import require_token
from deepgrad_server.routes import auth, compare, cost, events, jobs, meta, pages, plots, reports, series, studies
from deepgrad_server.schemas import errors

api_router = APIRouter()
api_router.include_router(meta.public)  # /health: no token
api_router.include_router(auth.public)  # the login page and POST /login: they sign a browser in
# The job streams: GET /events (the job list; not under /jobs/, where 'events' would meet /jobs/{job_id}'s other
# methods) and /jobs/{job_id}/events.
api_router.include_router(events.router, dependencies=[Depends(require_token)], responses=errors(401))
for module in (jobs, studies, series, plots, compare, cost, meta, auth, reports):
    api_router.include_router(module.router, dependencies=[Depends(require_token)], responses=errors(401))
api_router.include_router(pages.router, dependencies=[Depends(require_token)])  # the dashboard: "/", /ui, /static
