"""The executor seam: the worker runs, cancels and records jobs through any ``Executor``, not only the local child
process. A second executor (each job on a thread of this process, through ``runner.run`` as a cluster's task
would call it) drives the same worker, store and queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from live import TINY

from deepgrad_core.spec import ExperimentSpec
from deepgrad_server import runner, store
from deepgrad_server import worker as worker_module
from deepgrad_server.db import Database
from deepgrad_server.executors import Launch, Outcome
from deepgrad_server.settings import Settings
from deepgrad_server.worker import Worker


class ThreadExecution:
    def __init__(self, launch: Launch) -> None:
        self._stop = threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, args=(launch,), daemon=True)
        self.thread.start()

    def _run(self, launch: Launch) -> None:
        self.code = runner.run(launch, should_stop=self._stop.is_set)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)

    def stop(self) -> None:
        self._stop.set()

    def kill(self) -> None:  # a thread cannot be killed: it stops at the next step
        self._stop.set()

    def outcome(self) -> Outcome:
        return Outcome(exitcode=self.code, reason=runner.EXIT_REASONS.get(self.code))


class ThreadExecutor:
    name = "thread"

    def __init__(self) -> None:
        self.launched: list[Launch] = []

    def try_reserve(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def start(self, launch: Launch) -> ThreadExecution:
        self.launched.append(launch)
        return ThreadExecution(launch)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[tuple[Worker, Database, ThreadExecutor]]:
    settings = Settings(data_dir=tmp_path, token=None, worker=False, lease_seconds=10, heartbeat_seconds=1)
    db = Database(settings.resolved_database_url)
    executor = ThreadExecutor()
    w = Worker(settings, db, "cpu", threads=None, executor=executor)
    w.start()
    yield w, db, executor
    w.stop()
    db.dispose()


def _submit(db: Database, spec: dict) -> str:
    with db.writing() as s:
        job, _ = store.create_job(s, spec=ExperimentSpec.model_validate(spec).model_dump(mode="json"), name="t",
                                  idempotency_key=None, max_queued=10)
        return job.id


def _wait(db: Database, job_id: str, until: Callable, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.reading() as s:
            job = store.get_job(s, job_id=job_id)
            if until(job):
                return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is still {job.state}")


def test_a_job_runs_and_is_recorded_through_another_executor(worker) -> None:
    w, db, executor = worker
    job_id = _submit(db, TINY)
    job = _wait(db, job_id, lambda j: j.state not in ("queued", "running"))
    assert job.state == "succeeded" and job.attempts == 1, (job.state, job.message)
    assert [launch.job_id for launch in executor.launched] == [job_id]
    launch = executor.launched[0]
    assert launch.device == "cpu" and launch.database_url == w.settings.resolved_database_url
    with db.reading() as s:
        extent = store.series_extent(s, job_id=job_id, kind="weight")
        assert extent.rows == 2 * job.steps_per_epoch and extent.last_step == 2 * job.steps_per_epoch - 1
        assert [m["epoch"] for m in store.epochs(s, job_id=job_id)] == [0, 1]


def test_cancel_reaches_the_job_through_the_executor(worker) -> None:
    w, db, _ = worker
    job_id = _submit(db, {**TINY, "train": {**TINY["train"], "epochs": 500}})
    _wait(db, job_id, lambda j: j.state == "running" and (j.progress or {}).get("step", 0) > 0)
    with db.writing() as s:
        store.request_cancel(s, job_id=job_id)
    job = _wait(db, job_id, lambda j: j.state not in ("queued", "running"), timeout=60)
    assert job.state == "cancelled" and job.reason == "cancelled"


def test_a_queued_job_wakes_an_idle_worker(worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /jobs and /studies wake this process's workers (``wake_workers``): an idle worker claims the job at
    once, not at its next poll (here an hour away)."""
    w, db, _ = worker
    monkeypatch.setattr(worker_module, "POLL_S", 3600.0)
    time.sleep(1.0)  # the worker's 0.5 s wait ends: it is now in an hour-long one
    job_id = _submit(db, TINY)
    worker_module.wake_workers([w])
    job = _wait(db, job_id, lambda j: j.state not in ("queued", "running"), timeout=60)
    assert job.state == "succeeded", (job.state, job.message)
