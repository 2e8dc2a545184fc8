"""Reports: a job, a comparison or a study as one self-contained HTML file that opens offline and prints well.

Figures are the plot endpoints' own (``routes.plots``: the same render threads, the same cache keys, so a figure
a page or a report drew once is served from memory to the next), inlined as ``data:`` PNG; tables are the JSON
API's data. Nothing refers outside the file: no script, no font, no stylesheet, no image by URL, and the file
says so itself (its Content-Security-Policy allows only inline styles and ``data:`` images).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import anyio
import jinja2
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.exceptions import RequestValidationError

from deepgrad_server import __version__, store
from deepgrad_server.db import Database
from deepgrad_server.deps import DbDep, Ids, JobId, StudyId, load_job, parse_ids
from deepgrad_server.jobdata import study_row
from deepgrad_server.rendering import RETRY_AFTER_S
from deepgrad_server.routes import compare, plots
from deepgrad_server.schemas import errors, job_public

router = APIRouter(tags=["reports"])
log = logging.getLogger(__name__)

MAX_REPORTS = 2  # reports assembled at once (each draws up to 8 figures on the render threads)
REPORT_QUEUE = 4  # more wait; beyond, 503 as for figures
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
HTML = {200: {"content": {"text/html": {}}, "description": "one self-contained HTML file (figures inline)"}}

# (kind, title, caption): what each report shows, in order.
JOB_FIGURES = (
    ("metrics", "Loss and accuracy", "Per epoch: train dashed, test solid."),
    ("norms", "Gradient norms by layer", "Every tracked layer's weight-gradient norm over the steps (log scale)."),
    ("heatmap", "Layers by steps", "Weight-gradient norm of each layer (rows, first layer on top) at each step."),
    ("depth", "Depth profile", "Mean weight-gradient norm of each layer, by depth, for several epochs."),
    ("ratio", "First/last layer ratio", "First over last main-path layer's mean gradient norm, per epoch: far "
                                        "below 1 is a vanishing gradient."),
    ("histogram", "Gradient distributions", "Weight-gradient values of each layer at the first and the last "
                                            "recorded step."),
    ("filters", "First-layer filters", "The first convolution's filters, learned beside initial."),
    ("cost", "Cost by layer", "Parameters, FLOPs and activation memory of each layer."),
)
COMPARE_FIGURES = (
    ("metrics", "Loss and accuracy", "Per epoch, one colour per job: train dashed, test solid."),
    ("depth", "Depth profiles", "Mean weight-gradient norm by relative depth (0: first layer, 1: last), last "
                                "epoch."),
    ("ratio", "First/last layer ratio", "Per epoch, one line per job."),
    ("histogram", "Gradient distributions", "Each job's first main-path layer at its last recorded step."),
    ("filters", "First-layer filters", "Each job's learned first-layer filters."),
    ("cost", "Cost", "Parameters, FLOPs and activation memory per image of each model."),
)
STUDY_FIGURES = (
    ("accuracy", "Accuracy", "Test accuracy of each job."),
    ("ratio", "First/last layer ratio", "Each job's first/last main-path gradient ratio (last epoch)."),
    ("cost", "Accuracy against cost", "Test accuracy against parameters and FLOPs per image."),
    ("depth", "Depth profiles", "Main-path layers' mean weight-gradient norm by relative depth, overlaid."),
    ("metrics", "Loss and accuracy", "Every job's loss and accuracy per epoch."),
    ("histogram", "Gradient distributions", "Each job's first main-path layer at its last recorded step."),
)


@dataclass
class Figure:
    kind: str
    title: str
    caption: str
    src: str | None = None  # a data: URI
    missing: str | None = None  # why it is not drawn


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("deepgrad_server", "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_num, pct=_pct, when=_when, value=_value)
    return env


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _when(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):  # the store's Unix seconds
        value = datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str):  # the API's ISO 8601
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _value(value: Any) -> str:
    """A spec value as text: JSON for lists and null, as is otherwise."""
    return json.dumps(value) if value is None or isinstance(value, (list, dict, bool)) else str(value)


_ENV = _environment()


@asynccontextmanager
async def _report_slot(request: Request) -> AsyncIterator[None]:
    """One of ``MAX_REPORTS`` places; 503 with Retry-After when ``REPORT_QUEUE`` reports already wait."""
    state = request.app.state
    if getattr(state, "report_limiter", None) is None:  # made on first use: limiters belong to the running loop
        state.report_limiter = anyio.CapacityLimiter(MAX_REPORTS)
    limiter: anyio.CapacityLimiter = state.report_limiter
    if limiter.available_tokens == 0 and limiter.statistics().tasks_waiting >= REPORT_QUEUE:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=f"{MAX_REPORTS} reports are being made "
                            f"and {REPORT_QUEUE} wait; retry in {RETRY_AFTER_S} s",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    async with limiter:
        yield


async def _figures(specs: tuple[tuple[str, str, str], ...],
                   draw: Callable[[str], Awaitable[Response]]) -> list[Figure]:
    """Every figure of ``specs`` drawn at once on the render threads; one that cannot be drawn says why."""
    out = [Figure(kind, title, caption) for kind, title, caption in specs]
    busy: list[HTTPException] = []

    async def one(figure: Figure) -> None:
        try:
            png = (await draw(figure.kind)).body
            figure.src = "data:image/png;base64," + base64.b64encode(png).decode()
        except HTTPException as err:
            if err.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
                busy.append(err)
            figure.missing = str(err.detail)
        except RequestValidationError as err:  # a figure this data cannot have (too many jobs, say)
            figure.missing = "; ".join(e["msg"] for e in err.errors())
        except Exception:  # one figure's bug must not cost the whole report: it says so, the log has the rest
            log.exception("report figure %s failed", figure.kind)
            figure.missing = "it failed to draw (the server's log says why)"

    async with anyio.create_task_group() as group:
        for figure in out:
            group.start_soon(one, figure)
    if busy:
        raise busy[0]
    return out


def _page(template: str, filename: str, **context: Any) -> Response:
    html = _ENV.get_template(template).render(csp=CSP, version=__version__,
                                              generated=datetime.now(timezone.utc), **context)
    return Response(html, media_type="text/html; charset=utf-8",
                    headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                             "Cache-Control": "no-store",
                             "Content-Disposition": f'inline; filename="{filename}"'})


@router.get("/jobs/{job_id}/report.html", response_class=Response, responses={**HTML, **errors(404, 503)})
async def job_report(job_id: JobId, db: DbDep, request: Request) -> Response:
    """One job as a self-contained HTML file: verdict, metrics per epoch, per-class scores, cost, the spec and
    what it changes, every figure."""
    async with _report_slot(request):
        context = await anyio.to_thread.run_sync(_job_context, db, job_id)
        figures = await _figures(JOB_FIGURES, lambda kind: plots.job_plot(
            job_id, kind, db, request, norm_kind="weight", layers=None, epochs=None, smooth=0, max_points=2000,
            main_path=False))
    return _page("report_job.html", f"deepgrad-job-{job_id}.html", figures=figures, **context)


@router.get("/compare/report.html", response_class=Response, responses={**HTML, **errors(404, 503)})
async def compare_report(db: DbDep, request: Request, ids: Ids) -> Response:
    """Several jobs side by side as a self-contained HTML file: final results, how their specs differ, metrics by
    epoch, overlaid figures."""
    job_ids = parse_ids(ids)
    async with _report_slot(request):
        context = await anyio.to_thread.run_sync(_compare_context, db, ",".join(job_ids))
        figures = await _figures(COMPARE_FIGURES, lambda kind: plots.compare_plot(
            kind, db, request, ",".join(job_ids), norm_kind="weight", epochs=None, main_path=False, layers=None))
    return _page("report_compare.html", f"deepgrad-compare-{'-'.join(job_ids)}.html", figures=figures, **context)


@router.get("/studies/{study_id}/report.html", response_class=Response, responses={**HTML, **errors(404, 503)})
async def study_report(study_id: StudyId, db: DbDep, request: Request) -> Response:
    """A study as a self-contained HTML file: its summary table (one row per job) and its figures."""
    async with _report_slot(request):
        context = await anyio.to_thread.run_sync(_study_context, db, study_id)
        figures = await _figures(STUDY_FIGURES, lambda kind: plots.study_plot(
            study_id, kind, db, request, norm_kind="weight", main_path=True))
    return _page("report_study.html", f"deepgrad-study-{study_id}.html", figures=figures, **context)


# -- the tables ------------------------------------------------------------------------------------------------

def _verdicts(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per norm kind that has data: its first/last ratio, weakest layer, vanishing flag."""
    summary = summary or {}
    return [{"kind": kind, **{k: part.get(k) for k in ("first_layer", "last_layer", "first_last_ratio",
                                                        "min_layer", "vanishing", "nonfinite_steps")},
             "decides": kind == summary.get("vanishing_source")}
            for kind in ("weight", "activation", "global")
            if isinstance(part := summary.get(kind), dict) and part.get("has_data")]


def _job_context(db: Database, job_id: str) -> dict[str, Any]:
    job = load_job(db, job_id)
    with db.reading() as s:
        history = store.epochs(s, job_id=job_id)
    public = job_public(job).model_dump(mode="json")
    changes = public["changes"]
    spec = [{"key": k, "value": v, "set": k in changes} for k, v in compare.flat(job.spec or {}).items()]
    per_class = job.per_class or []
    return {"title": f"DeepGrad job {job.name} ({job.id})", "job": public, "history": history,
            "final": job.final or {}, "summary": job.summary or {}, "verdicts": _verdicts(job.summary),
            "cost": job.cost or {}, "per_class": per_class, "confusion": job.confusion or [],
            "classes": [str(row.get("class", i)) for i, row in enumerate(per_class)], "spec": spec,
            "changes": changes, "environment": job.environment or {}}


def _compare_context(db: Database, ids: str) -> dict[str, Any]:
    body = compare.compare(db, ids)
    jobs = body["jobs"]
    for row in jobs:
        row["verdicts"] = _verdicts(row["summary"])
    return {"title": f"DeepGrad comparison of {len(jobs)} jobs", "jobs": jobs, "differences": body["differences"],
            "by_epoch": body["by_epoch"]}


def _study_context(db: Database, study_id: str) -> dict[str, Any]:
    with db.reading() as s:
        study = store.get_study(s, study_id=study_id)
        if study is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no study with id {study_id!r}")
        links = store.study_jobs(s, study_id=study_id)
    rows = [study_row(link, job).model_dump(mode="json") for link, job in links]
    varied = list(dict.fromkeys(key for link, _ in links for key in link.overrides))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {"title": f"DeepGrad study {study.name} ({study.id})",
            "study": {"id": study.id, "name": study.name, "preset": study.preset, "created_at": study.created_at,
                      "grid": study.grid, "points": study.points},
            "base": [{"key": k, "value": v} for k, v in compare.flat(study.base or {}).items()], "varied": varied,
            "rows": rows, "counts": counts}
