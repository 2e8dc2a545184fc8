"""``Client``: the DeepGrad HTTP API (docs/api.md) as Python methods.

Every httpx error is translated here, in ``_send``, into the tree of ``_exceptions``.

Retries: a request is retried (``retries`` times, exponential backoff with jitter, honouring a
``Retry-After``) only when it failed on the way -- connection refused or reset, connect timeout, the
connection dropped before an answer -- or was answered 502, 503 or 504, and only if repeating it cannot
do anything twice. Every request the client makes is such a one:

- ``GET`` and ``DELETE`` by their nature (a ``delete`` whose retry finds the job gone has succeeded);
- ``POST /jobs`` because ``submit`` sends an ``Idempotency-Key`` (a fresh uuid4 unless given), so a retry
  whose first attempt did reach the server returns that same job, never a second one;
- ``POST /jobs/{id}/cancel``: cancelling twice leaves the job as cancelling once does; a retry answered
  409 because the first attempt already cancelled a queued job returns the cancelled job.
- ``POST /login-links``: a retry mints another one-time link; the first one, never seen, is never used.

A read timeout is not retried (the request may still be running), and neither is any other status.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ._config import config_path, resolve, token_file_path
from ._exceptions import APIError, AuthError, ConnectError, InputError, NotFound, WaitTimeout
from ._gradients import Gradients
from ._spec import load_spec
from ._sse import Event, parse_events

try:
    VERSION = metadata.version("deepgrad")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0+unknown"

Job = dict[str, Any]
"""A job as the server sends it (see docs/api.md): ``id``, ``name``, ``state``, ``progress``, ``final``, ..."""

# A job's states, listed once on this side (the server's list is its own: the client imports nothing of ours).
STATES = ("queued", "running", "succeeded", "failed", "cancelled", "diverged")
TERMINAL_STATES = frozenset(STATES) - {"queued", "running"}
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# The events stream sends a keep-alive comment every 15 s; a read timeout above that means a dead stream.
STREAM_READ_TIMEOUT = 60.0
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                httpx.RemoteProtocolError)
MAX_BACKOFF = 10.0
JOB_ID = re.compile(r"^[0-9a-f]{12}$")


class Client:
    """A connection to a DeepGrad server; use it as a context manager (or call ``close()``).

    ``base_url`` and ``token`` default as ``_config`` describes ($DEEPGRAD_URL / $DEEPGRAD_TOKEN, the
    config file, the local server's token file). ``transport`` is handed to httpx (tests, proxies).
    ``retries`` and ``backoff`` (seconds, doubled per retry) govern the retries in the module docstring.
    """

    def __init__(self, base_url: str | None = None, token: str | None = None, *,
                 timeout: float | httpx.Timeout = DEFAULT_TIMEOUT, transport: httpx.BaseTransport | None = None,
                 retries: int = 3, backoff: float = 0.5) -> None:
        settings = resolve(base_url, token)
        if not settings.url.startswith(("http://", "https://")):
            raise InputError(f"server URL {settings.url!r} (from {settings.url_source}) must start with "
                             "http:// or https://, e.g. http://127.0.0.1:8000")
        self.base_url = settings.url
        self.retries = retries
        self.backoff = backoff
        self._has_token = settings.token is not None
        headers = {"User-Agent": f"deepgrad-client/{VERSION}", "Accept": "application/json"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.base_url!r})"

    # -- jobs ---------------------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any] | str | os.PathLike[str] | Any, *, name: str | None = None,
               idempotency_key: str | None = None) -> Job:
        """Queue a job. ``spec``: a dict, a pydantic spec, or a path to a ``.json``/``.yaml``/``.yml`` file.

        ``name`` (1-100 characters) overrides a ``name`` in the spec. Pass ``idempotency_key`` to make
        repeated calls (say, after a crash of your own program) return the job the first one made.
        """
        body = _spec_body(spec)
        if name is not None:
            body["name"] = name
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return self._send("POST", "/jobs", json=body, headers=headers).json()

    def get(self, job_id: str) -> Job:
        """One job."""
        return self._send("GET", _job_path(job_id)).json()

    def list(self, *, state: str | None = None, name: str | None = None, limit: int | None = None,
             offset: int | None = None) -> dict[str, Any]:
        """Jobs newest first: ``{"data": [Job, ...], "count": <total matching>}``; ``name`` is a substring."""
        params = _params(state=state, name=name, limit=limit, offset=offset)
        return self._send("GET", "/jobs", params=params).json()

    def wait(self, job_id: str, *, progress: Callable[[Job], None] | None = None, poll: float = 2.0,
             timeout: float | None = None) -> Job:
        """Poll until the job ends and return it; ``progress(job)`` is called whenever it changed.

        Raises ``WaitTimeout`` after ``timeout`` seconds (the job goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            job = self.get(job_id)
            if progress is not None and (job.get("state"), job.get("progress")) != seen:
                seen = (job.get("state"), job.get("progress"))
                progress(job)
            if job.get("state") in TERMINAL_STATES:
                return job
            if deadline is not None and time.monotonic() + poll > deadline:
                raise WaitTimeout(f"job {job_id} is still {job.get('state')} after {timeout:g} s")
            time.sleep(poll)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once or a running one within seconds; 409 if it has already ended."""
        try:
            return self._send("POST", _job_path(job_id, "cancel")).json()
        except APIError as err:
            if err.status == 409 and err.retried:
                job = self.get(job_id)  # our first attempt got through and cancelled it
                if job.get("state") == "cancelled":
                    return job
            raise

    def delete(self, job_id: str) -> None:
        """Remove an ended job and all its data; 409 while it is queued or running (cancel it first)."""
        try:
            self._send("DELETE", _job_path(job_id))
        except NotFound as err:
            if not err.retried:  # else our first attempt got through and deleted it
                raise

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's server-sent events until it ends: ``progress``, ``state`` and a final ``end`` (the Job).

        A generator: the request is made, and its errors raised, at the first ``next()``.
        """
        timeout = self._http.timeout
        timeout = httpx.Timeout(timeout.connect, read=max(timeout.read or 0.0, STREAM_READ_TIMEOUT),
                                write=timeout.write, pool=timeout.pool)
        response = self._send("GET", _job_path(job_id, "events"), stream=True, timeout=timeout,
                              headers={"Accept": "text/event-stream"})
        try:
            with self._boundary():
                yield from parse_events(response)
        finally:
            response.close()

    # -- results ------------------------------------------------------------------------------------

    def metrics(self, job_id: str) -> dict[str, Any]:
        """Per-epoch metrics, final metrics, per-class scores and the confusion matrix."""
        return self._send("GET", _job_path(job_id, "metrics")).json()

    def gradients(self, job_id: str, kind: str = "weight", *, layers: Sequence[str] | None = None,
                  max_points: int | None = None, start: int | None = None, end: int | None = None) -> Gradients:
        """Per-layer gradient-norm series (``kind``: weight, activation or global) as numpy arrays.

        Series longer than ``max_points`` (server default 2000) come back downsampled min/max per bucket;
        ``start``/``end`` select a step range (end exclusive).
        """
        params = _params(kind=kind, layers=layers, max_points=max_points, start=start, end=end)
        return Gradients.from_json(self._send("GET", _job_path(job_id, "gradients"), params=params).json())

    def histograms(self, job_id: str, *, layers: Sequence[str] | None = None,
                   steps: Sequence[int] | None = None) -> dict[str, Any]:
        """Weight-gradient histograms (log10 |g| in fixed bins ``edges_log10``) of ``layers`` at ``steps``
        (default: every layer, the first and last recorded step): ``counts[step][layer][bin]``."""
        params = _params(layers=layers, steps=",".join(str(int(s)) for s in steps) if steps is not None else None)
        return self._send("GET", _job_path(job_id, "histograms"), params=params).json()

    def gradients_csv(self, job_id: str, kind: str = "weight") -> str:
        """The full series as CSV text: ``step,<layer>,...``, one row per step."""
        return self._send("GET", _job_path(job_id, "gradients.csv"), params={"kind": kind}).text

    def export(self, job_id: str, path: str | os.PathLike[str], kind: str = "weight") -> Path:
        """Stream the full series as CSV into ``path`` (written whole or not at all) and return it."""
        path = Path(path)
        partial = path.with_name(path.name + ".part")
        response = self._send("GET", _job_path(job_id, "gradients.csv"), params={"kind": kind}, stream=True)
        try:
            with self._boundary(), partial.open("wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
            partial.replace(path)
        finally:
            response.close()
            partial.unlink(missing_ok=True)
        return path

    def plot(self, job_id: str, kind: str, **params: Any) -> bytes:
        """A PNG figure of one job. ``kind``: norms, selected, heatmap, depth, metrics, filters, cost.

        ``params``: ``norm_kind`` (weight|activation), ``layers`` (for selected), ``epochs`` (1-based, for
        depth), ``smooth``, ``max_points``; lists are sent comma-separated.
        """
        return self._send("GET", _job_path(job_id, "plots", f"{_segment(kind)}.png"), params=_params(**params)).content

    def save_plot(self, job_id: str, kind: str, path: str | os.PathLike[str], **params: Any) -> Path:
        """``plot(...)`` written to ``path``."""
        path = Path(path)
        path.write_bytes(self.plot(job_id, kind, **params))
        return path

    # -- studies ------------------------------------------------------------------------------------

    def create_study(self, *, preset: str | None = None, base: Mapping[str, Any] | None = None,
                     grid: Mapping[str, Sequence[Any]] | None = None,
                     points: Sequence[Mapping[str, Any]] | None = None, overrides: Mapping[str, Any] | None = None,
                     name: str | None = None) -> dict[str, Any]:
        """Queue a study: a ``preset`` by name, or a ``base`` spec with a ``grid`` (every combination) or a list
        of ``points``; ``overrides`` (``{"train.epochs": 2}``) apply to the base of every job."""
        body = {k: v for k, v in {"preset": preset, "base": base, "grid": grid, "points": points,
                                  "set": dict(overrides or {}), "name": name}.items() if v is not None}
        return self._send("POST", "/studies", json=body).json()

    def study(self, study_id: str) -> dict[str, Any]:
        """One study with its jobs (each with ``label``, ``overrides`` and the Job)."""
        return self._send("GET", _study_path(study_id)).json()

    def studies(self, *, limit: int | None = None, offset: int | None = None) -> dict[str, Any]:
        """Studies newest first: ``{"data": [...], "count": N}`` (with job counts, without the jobs)."""
        return self._send("GET", "/studies", params=_params(limit=limit, offset=offset)).json()

    def study_summary(self, study_id: str) -> dict[str, Any]:
        """One row per job: what it varies, accuracy, loss, seconds, parameters, FLOPs, ratio, verdict."""
        return self._send("GET", _study_path(study_id, "summary")).json()

    def study_plot(self, study_id: str, kind: str) -> bytes:
        """A PNG of the study. ``kind``: accuracy, ratio, cost, depth, metrics."""
        return self._send("GET", _study_path(study_id, "plots", f"{_segment(kind)}.png")).content

    def cancel_study(self, study_id: str) -> dict[str, Any]:
        """Cancel every job of the study that has not ended."""
        return self._send("POST", _study_path(study_id, "cancel")).json()

    def delete_study(self, study_id: str) -> None:
        """Remove an ended study and all its jobs; 409 while any job is queued or running."""
        try:
            self._send("DELETE", _study_path(study_id))
        except NotFound as err:
            if not err.retried:
                raise

    def wait_study(self, study_id: str, *, progress: Callable[[dict[str, Any]], None] | None = None,
                   poll: float = 2.0, timeout: float | None = None) -> dict[str, Any]:
        """Poll until every job of the study has ended; ``progress(study)`` whenever its counts changed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            study = self.study(study_id)
            counts = study.get("counts")
            if progress is not None and counts != seen:
                seen = counts
                progress(study)
            if study.get("state") == "ended":
                return study
            if deadline is not None and time.monotonic() + poll > deadline:
                raise WaitTimeout(f"study {study_id} has not ended after {timeout:g} s: {counts}")
            time.sleep(poll)

    def presets(self) -> list[dict[str, Any]]:
        """The named studies the server runs: name, description, base, grid or points, number of jobs."""
        return self._send("GET", "/presets").json()

    # -- the browser: login links and reports -------------------------------------------------------

    def login_link(self, job_id: str | None = None, *, next_path: str | None = None) -> dict[str, Any]:
        """A one-time link that signs a browser in (valid 10 minutes, one use) and opens the job's page, or
        ``next_path`` (a path on the server), or the dashboard: ``{"url", "path", "next", "expires_at"}``.
        ``url`` is this client's base URL joined to ``path`` (what the browser here can reach, through a tunnel
        too)."""
        body: dict[str, Any] = {}
        if job_id is not None:
            _job_path(job_id)
            body["job_id"] = job_id
        if next_path is not None:
            body["next"] = next_path
        link = self._send("POST", "/login-links", json=body).json()
        link["url"] = self.base_url.rstrip("/") + link["path"]
        return link

    def report(self, job_id: str) -> bytes:
        """One job as a self-contained HTML file (figures and tables inline; opens offline, prints well)."""
        return self._html(_job_path(job_id, "report.html"))

    def compare_report(self, ids: Sequence[str]) -> bytes:
        """2-12 jobs side by side as a self-contained HTML file."""
        return self._html("/compare/report.html", params={"ids": _id_list(ids)})

    def study_report(self, study_id: str) -> bytes:
        """A study (its summary table and figures) as a self-contained HTML file."""
        return self._html(_study_path(study_id, "report.html"))

    def _html(self, path: str, **kwargs: Any) -> bytes:
        return self._send("GET", path, **kwargs).content

    # -- comparison and server ----------------------------------------------------------------------

    def compare(self, ids: Sequence[str]) -> dict[str, Any]:
        """2-12 jobs side by side: ``{"jobs": [...], "by_epoch": [...], "by_depth": {...}}``."""
        return self._send("GET", "/compare", params={"ids": _id_list(ids)}).json()

    def compare_plot(self, kind: str, ids: Sequence[str]) -> bytes:
        """A PNG comparing 2-12 jobs. ``kind``: metrics, depth, ratio, filters, cost."""
        path = f"/compare/plots/{_segment(kind)}.png"
        return self._send("GET", path, params={"ids": _id_list(ids)}).content

    def cost(self, spec: Mapping[str, Any] | str | os.PathLike[str] | Any) -> dict[str, Any]:
        """What a job of ``spec`` would cost, before it runs: ``{"spec", "cost", "memory", "limit_errors"}``
        (parameters, FLOPs with 1 multiply-add = 2 FLOPs, activation bytes; the job's estimated memory)."""
        return self._send("POST", "/cost", json=_spec_body(spec)).json()

    def models(self) -> dict[str, Any]:
        """Architectures, their options with allowed values and defaults, data sets and server limits."""
        return self._send("GET", "/models").json()

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version", "queued", "running", "worker"}``; needs no token."""
        return self._send("GET", "/health").json()

    # -- the one boundary ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        """Send with retries; return a successful response or raise one of ``_exceptions``."""
        attempt = 0
        while True:
            request = self._http.build_request(method, path, **kwargs)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as err:
                if isinstance(err, RETRY_ERRORS) and attempt < self.retries:
                    self._pause(attempt)
                    attempt += 1
                    continue
                raise self._connect_error(err) from None
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                response.close()
                self._pause(attempt, response.headers.get("Retry-After"))
                attempt += 1
                continue
            if response.is_error:
                with self._boundary():
                    response.read()
                response.close()
                raise self._api_error(response, retried=attempt > 0)
            return response

    def _pause(self, attempt: int, retry_after: str | None = None) -> None:
        delay = min(self.backoff * 2 ** attempt, MAX_BACKOFF) * random.uniform(0.5, 1.0)
        if retry_after and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), MAX_BACKOFF))
        time.sleep(delay)

    @contextlib.contextmanager
    def _boundary(self) -> Iterator[None]:
        """httpx transport errors raised inside (reading a streamed body) become ``ConnectError``."""
        try:
            yield
        except httpx.TransportError as err:
            raise self._connect_error(err) from None

    def _connect_error(self, err: httpx.TransportError) -> ConnectError:
        what = {httpx.ConnectError: "cannot connect to", httpx.ConnectTimeout: "timed out connecting to",
                httpx.ReadTimeout: "timed out waiting for an answer from"}.get(type(err), "lost the connection to")
        reason = str(err) or type(err).__name__
        hint = " (is the server running? set --url or DEEPGRAD_URL)" if isinstance(err, httpx.ConnectError) else ""
        return ConnectError(f"{what} the DeepGrad server at {self.base_url}: {reason}{hint}", url=self.base_url)

    def _api_error(self, response: httpx.Response, *, retried: bool) -> APIError:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text.strip()[:500] or response.reason_phrase
        status = response.status_code
        if status in (401, 403):
            hint = None if self._has_token else (
                f"no token was given: pass --token, set DEEPGRAD_TOKEN, or put {{\"token\": ...}} in "
                f"{config_path()}; on the server's own machine the token is read from {token_file_path()} "
                "(the server's data dir: set DEEPGRAD_DATA_DIR to where the server keeps it)")
            return AuthError(status, detail, hint=hint, retried=retried)
        return (NotFound if status == 404 else APIError)(status, detail, retried=retried)


def _spec_body(spec: Mapping[str, Any] | str | os.PathLike[str] | Any) -> dict[str, Any]:
    """A spec as a JSON body: a dict as is, a pydantic spec dumped, a path read (``.json``/``.yaml``/``.yml``)."""
    if isinstance(spec, (str, os.PathLike)):
        return load_spec(spec)
    if hasattr(spec, "model_dump"):
        return spec.model_dump(mode="json")
    return dict(spec)


def _job_path(job_id: str, *parts: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        raise InputError(f"{job_id!r} is not a job id (12 lowercase hex characters, e.g. 3f2a9c0d1b7e)")
    return "/".join(["/jobs", job_id, *parts])


def _study_path(study_id: str, *parts: str) -> str:
    if not isinstance(study_id, str) or not JOB_ID.match(study_id):
        raise InputError(f"{study_id!r} is not a study id (12 lowercase hex characters, e.g. 3f2a9c0d1b7e)")
    return "/".join(["/studies", study_id, *parts])


def _segment(kind: str) -> str:
    return quote(kind, safe="")


def _id_list(ids: Sequence[str]) -> str:
    if isinstance(ids, str):
        ids = [ids]
    for job_id in ids:
        _job_path(job_id)
    return ",".join(ids)


def _params(**params: Any) -> dict[str, Any]:
    """Query parameters without the unset ones; lists and tuples comma-separated."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = str(value).lower()
        out[key] = value
    return out
