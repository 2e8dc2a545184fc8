"""The dashboard: HTML pages over the JSON API, and their static files.

A page is a shell: its script fetches every number it shows from the same JSON API the client uses (series
downsampled by the server, verdicts and spec differences computed by the server), and follows the job's
server-sent events. Pages and their assets are gathered with the API's routes and need what they need (the
browser session, ``deepgrad_server.sessions``): a browser without one is sent to the login page, which says how
to get a login link (``deepgrad-client open``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from deepgrad_server import __version__
from deepgrad_server.deps import IDS_PATTERN, JobId, StudyId

router = APIRouter(include_in_schema=False)

HERE = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=HERE / "templates")
static_files = StaticFiles(directory=HERE / "static")

# Scripts and styles only from this server, no inline code, no framing: a job name is data, never markup.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _page(request: Request, name: str, **context: Any) -> Response:
    return templates.TemplateResponse(request, name, {"version": __version__, **context}, headers=HEADERS)


@router.get("/")
def jobs_page(request: Request) -> Response:
    """The jobs: a live table with state, progress and verdict, filtered by name and state; the studies."""
    return _page(request, "page_jobs.html", title="Jobs")


@router.get("/ui/jobs/{job_id}")
def job_page(request: Request, job_id: JobId) -> Response:
    """One job: live per-layer norms, heatmap, depth profile, metrics, filters, cost, verdict and spec."""
    return _page(request, "page_job.html", title=f"Job {job_id}", job_id=job_id)


@router.get("/ui/compare")
def compare_page(request: Request,
                 ids: Annotated[str | None, Query(max_length=400, pattern=IDS_PATTERN)] = None) -> Response:
    """Jobs side by side: pick them; overlaid metrics and depth profiles; how their specs differ."""
    return _page(request, "page_compare.html", title="Compare", ids=(ids or "").replace(" ", ""))


@router.get("/ui/studies/{study_id}")
def study_page(request: Request, study_id: StudyId) -> Response:
    """One study: its summary table and its figures."""
    return _page(request, "page_study.html", title=f"Study {study_id}", study_id=study_id)


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    """The pages' scripts, styles and the vendored uPlot; behind the session like everything else."""
    response = await static_files.get_response(path, request.scope)
    response.headers["Cache-Control"] = "private, no-cache"  # revalidated (ETag): a new version shows at once
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
