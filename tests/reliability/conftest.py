"""Fixtures for the bad-input checks: the app in-process over a real SQLite file, jobs whose every kind of data
(norm series of all three kinds, epochs, layers, cost, filters, summary) is stored so requests reach the real read
paths, and every route of the app with its parameters. ``tests/server/live.py`` (a live ``deepgrad-server``,
``TOKEN``, ``TINY``) is put on the path for the test modules to import.

Helpers are handed out as fixtures, not imported from here: with several ``conftest.py`` in the tree, the module
name ``conftest`` means whichever pytest loaded last."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live import TINY, TOKEN  # noqa: E402

from deepgrad_core.histograms import BINS, HistBlock
from deepgrad_core.norms import NormBlock  # noqa: E402
from deepgrad_server import store  # noqa: E402
from deepgrad_server.app import create_app  # noqa: E402
from deepgrad_server.db import Database  # noqa: E402
from deepgrad_server.settings import Settings  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LAYERS = tuple(f"conv{i}" for i in range(1, 6))
STEPS_PER_EPOCH = 4


def _summary(block: NormBlock) -> dict[str, Any]:
    from deepgrad_core.analysis import summarize_run

    return summarize_run({"weight": block}, steps_per_epoch=STEPS_PER_EPOCH, fraction=1e-3)


def seed_job(db: Database, *, state: str, epochs: int = 2, name: str | None = None, nan: bool = False) -> str:
    """A job row in ``state`` with what a worker records: weight norms every step, activation norms every
    2nd step, the global norm, ``epochs`` epochs of metrics, layers, cost, first-layer filters, summary."""
    steps = epochs * STEPS_PER_EPOCH
    rng = np.random.default_rng(len(state) + epochs)
    with db.writing() as s:
        job, _ = store.create_job(s, spec={**TINY, "model": {**TINY["model"], "arch": "resnet18"}},
                                  name=name or f"seeded-{state}", idempotency_key=None, max_queued=10_000)
        layers = [{"name": n, "path": f"features.{i}", "kind": "conv", "depth": i + 1} for i, n in enumerate(LAYERS)]
        cost = {"total_params": 1234, "trainable_params": 1234, "flops_per_image": 56789,
                "activation_bytes_per_image": 4096, "peak_train_step_bytes": None, "input_shape": [3, 16, 16],
                "device": "cpu", "layers": [{"name": la["name"], "path": la["path"], "kind": "conv", "params": 100 * i,
                                             "flops": 1000 * i, "output_shape": [8, 16, 16]}
                                            for i, la in enumerate(layers, 1)]}
        fields: dict[str, Any] = {"state": state, "steps_per_epoch": STEPS_PER_EPOCH, "layers": layers, "cost": cost}
        if state != "queued":
            fields["started_at"] = store.now()
            fields["attempts"] = 1
            fields["progress"] = {"epoch": epochs, "epochs": 2, "step": steps, "total_steps": 2 * STEPS_PER_EPOCH,
                                  "loss": 1.5, "train_acc": 0.3, "test_acc": 0.25, "images_per_sec": 900.0,
                                  "updated_at": store.now()}
            fields["filters"] = store.encode_array(rng.standard_normal((8, 3, 3, 3)))
            fields["environment"] = {"torch": "test", "device": "cpu"}
        store.update_job(s, job_id=job.id, **fields)
        if steps:
            weight = (rng.random((steps, len(LAYERS))) * np.logspace(-4, 0, len(LAYERS))).astype(np.float32)
            if nan:
                weight[-1, :] = np.nan
                weight[-2, 0] = np.inf
            blocks = [NormBlock("weight", np.arange(steps), LAYERS, weight),
                      NormBlock("activation", np.arange(0, steps, 2), LAYERS,
                                rng.random((len(range(0, steps, 2)), len(LAYERS))).astype(np.float32)),
                      NormBlock("global", np.arange(steps), ("global",), rng.random((steps, 1)).astype(np.float32))]
            hist_steps = np.arange(0, steps, 3)  # every tracking.histogram_every (3 here) steps, from step 0
            store.append_histograms(s, job_id=job.id, block=HistBlock(
                hist_steps, LAYERS, rng.random((len(hist_steps), len(LAYERS), BINS)).astype(np.float32) * 100))
            for first in (True, False):  # two flushes per kind, as a worker writes them
                for b in blocks:
                    keep = (b.steps < steps // 2) == first
                    store.append_norms(s, job_id=job.id, block=NormBlock(b.kind, b.steps[keep], b.layers,
                                                                          b.values[keep]))
        for e in range(epochs):
            store.put_epoch(s, job_id=job.id, metrics={"epoch": e, "train_loss": 2.0 - e / 2, "train_acc": 0.2 + e / 10,
                                                       "test_loss": 2.1 - e / 2, "test_acc": 0.15 + e / 10, "lr": 0.1,
                                                       "seconds": 1.5, "images_per_sec": 800.0})
        if state in ("succeeded", "failed", "cancelled", "diverged"):
            final = {"test_acc": 0.35, "test_loss": 1.2, "train_acc": 0.4, "train_loss": 1.1, "best_epoch": 1,
                     "best_test_acc": 0.35, "seconds": 3.0} if state == "succeeded" else None
            store.update_job(s, job_id=job.id, finished_at=store.now(), final=final,
                             summary=_summary(blocks[0]) if steps else None,
                             reason={"failed": "error", "cancelled": "cancelled", "diverged": "diverged"}.get(state),
                             message=None if state == "succeeded" else f"seeded {state}",
                             per_class=[{"class": c, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4}
                                        for c in range(10)] if state == "succeeded" else None,
                             confusion=np.eye(10, dtype=int).tolist() if state == "succeeded" else None,
                             diverged_at_step=steps - 1 if state == "diverged" else None)
    return job.id


def seed_jobs(db: Database) -> dict[str, str]:
    """One job in every state the API distinguishes, by label."""
    return {"succeeded": seed_job(db, state="succeeded"), "running": seed_job(db, state="running", epochs=1),
            "queued": seed_job(db, state="queued", epochs=0), "diverged": seed_job(db, state="diverged", nan=True),
            "failed": seed_job(db, state="failed", epochs=0), "cancelled": seed_job(db, state="cancelled", epochs=1)}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    path_params: tuple[str, ...]
    query_params: tuple[str, ...]
    dependencies: tuple[str, ...]  # names of every dependency's function, nested ones included


def api_routes(app: Any) -> list[Route]:
    """Every HTTP route of ``app`` (one per method), with the parameters and dependencies it really has.

    Walks ``app.routes``, so a route added tomorrow is in the list; newer FastAPI keeps an included router as one
    lazy entry (``effective_route_contexts``), older ones copy its routes in: both are read.
    """
    from fastapi.routing import APIRoute

    out = []
    for entry in app.routes:
        contexts = entry.effective_route_contexts() if hasattr(entry, "effective_route_contexts") else [entry]
        for route in contexts:
            if not (isinstance(route, APIRoute) or hasattr(route, "dependant")):
                continue
            for method in sorted(route.methods - {"HEAD"}):
                out.append(Route(method, route.path, _walk(route.dependant, "path_params"),
                                 _walk(route.dependant, "query_params"), _walk(route.dependant, "dependencies")))
    return out


def _walk(dependant: Any, kind: str) -> tuple[str, ...]:
    """Names of a dependant's parameters of one kind (or of its dependencies' functions), nested ones included."""
    names = [getattr(d.call, "__name__", repr(d.call)) for d in dependant.dependencies] if kind == "dependencies" \
        else [p.alias for p in getattr(dependant, kind)]
    for sub in dependant.dependencies:
        names += _walk(sub, kind)
    return tuple(dict.fromkeys(names))


def seed_study(db: Database, job_ids: list[str]) -> str:
    """A study over already seeded jobs (its jobs are theirs: no job is added), as ``POST /studies`` links them."""
    from deepgrad_server.models import Study, StudyJob

    study_id = store.new_id()
    with db.writing() as s:
        s.add(Study(id=study_id, name="seeded-study", base=TINY, grid={"model.kernel_size": [3, 5]}, points=None,
                    preset=None, created_at=store.now()))
        s.flush()
        for position, job_id in enumerate(job_ids):
            s.add(StudyJob(study_id=study_id, job_id=job_id, position=position,
                           overrides={"model.kernel_size": 3 + 2 * position}))
    return study_id


def jobs_in_store(db: Database) -> int:
    with db.reading() as s:
        return store.list_jobs(s)[1]


@pytest.fixture(scope="session")
def seed_a_study() -> Any:
    """``seed_a_study(db, job_ids) -> study id`` (see ``seed_study``)."""
    return seed_study


@pytest.fixture(scope="session")
def seed() -> Any:
    """``seed(db) -> {state: job id}``: one job in every state, with all its data (see ``seed_jobs``)."""
    return seed_jobs


@pytest.fixture(scope="session")
def app_routes() -> Any:
    """``app_routes(app) -> [Route]``: every route of an app (see ``api_routes``)."""
    return api_routes


@pytest.fixture(scope="session")
def count_jobs() -> Any:
    """``count_jobs(db) -> int``: jobs in the store."""
    return jobs_in_store


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[Any]:
    """The app in-process (no worker) with the token header set; ``client.app.state.db`` is its store."""
    from fastapi.testclient import TestClient

    settings = Settings(data_dir=tmp_path / "app", token=TOKEN, worker=False)
    with TestClient(create_app(settings), headers=AUTH) as client:
        yield client
