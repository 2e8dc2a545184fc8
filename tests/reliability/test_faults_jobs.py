"""Faults a job service must survive: a killed job process, a restart, out of memory, divergence, cancel,
a missing or deleted data set. Each runs against a real ``deepgrad-server`` process."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live import TINY, LiveServer, wait_for  # noqa: E402


def tiny(**train: object) -> dict:
    return {**TINY, "train": {**TINY["train"], **train}}


def longer(epochs: int, subset: int = 60, **extra: object) -> dict:
    """A job of a few seconds: ``epochs`` epochs of ``subset * 10 / 16`` steps."""
    return {**TINY, "data": {**TINY["data"], "subset": subset}, "train": {"epochs": epochs, "batch_size": 16},
            **extra}


def assert_series_whole(client: httpx.Client, job_id: str, total_steps: int, epochs: int) -> None:
    """Every step exactly once, in order; every epoch exactly once."""
    weight = client.get(f"/jobs/{job_id}/gradients", params={"max_points": 100_000}).json()
    assert weight["steps"] == list(range(total_steps))
    act = client.get(f"/jobs/{job_id}/gradients", params={"kind": "activation", "max_points": 100_000}).json()
    assert act["steps"] == list(range(0, total_steps, 10))
    history = client.get(f"/jobs/{job_id}/metrics").json()["epochs"]
    assert [e["epoch"] for e in history] == list(range(epochs))


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Limits raised so that a job can ask for more memory than the machine has (the memory estimate that would
    refuse it at submit is lifted too: the job must reach the allocator).

    Shared by every test here (one start, and one torch warm-up, instead of one each): each leaves no job
    queued or running, puts back what it changes (the restart test leaves it running as it found it, the
    deleted-data test removes its data set) and reads only its own part of the log (``log_since``)."""
    server = LiveServer(tmp_path_factory.mktemp("roomy"), None,
                        env={"DEEPGRAD_MAX_WIDTH": "4", "DEEPGRAD_MAX_BATCH_SIZE": "8192",
                             "DEEPGRAD_MAX_JOB_MEMORY_GIB": "100000"}).start()
    yield server
    server.stop()


def log_since(server: LiveServer, offset: int) -> str:
    """What the server logged after ``offset`` (its log's size when a test began): that test's lines only."""
    with open(server.log, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def mid_epoch_after_a_checkpoint(job: dict) -> bool:
    """Running, with an epoch checkpoint on disk, and (as a rule) mid-epoch.

    A job reports an epoch's end before it writes that epoch's checkpoint, so "epoch >= 1" alone may be seen
    before any checkpoint exists. A progress write inside epoch >= 1 comes after epoch 0's checkpoint; so does
    anything in epoch >= 2 (taken only if every write inside epoch 1 was missed: an epoch shorter than the
    1 s between progress writes, on a much faster machine)."""
    progress = job["progress"] or {}
    epoch, step, spe = progress.get("epoch", 0), progress.get("step", 0), job["steps_per_epoch"]
    return job["state"] == "running" and bool(spe) and (epoch >= 2 or (epoch >= 1 and step % spe != 0))


def test_killed_job_process_resumes_from_checkpoint(roomy_server: LiveServer) -> None:
    """Celery's early acknowledgement lost tasks whose worker died: a job whose process is killed -9
    mid-epoch goes back to the queue and resumes from its checkpoint, its series whole (no gap, no duplicate)."""
    server, offset = roomy_server, roomy_server.log.stat().st_size
    with server.client() as client:
        job_id = client.post("/jobs", json=longer(epochs=3)).json()["id"]
        wait_for(client, job_id, until=mid_epoch_after_a_checkpoint)
        pids = server.job_pids()
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        job = wait_for(client, job_id)
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2
        spe = job["steps_per_epoch"]
        assert_series_whole(client, job_id, 3 * spe, 3)
    log = log_since(server, offset)
    assert "killed by SIGKILL" in log and "resumed from" in log


def test_restart_keeps_queue_in_order(roomy_server: LiveServer) -> None:
    """A restart (graceful, then kill -9) loses no queued job and keeps their order; the running one resumes first."""
    server, as_found = roomy_server, True  # as_found: running with its worker, as the other tests use it
    try:
        with server.client() as client:
            # Stopped as soon as it is seen running: long enough (150 steps) to be still running when the server
            # has stopped (a tiny job ends within a second of its submit). Two queued jobs behind it show their
            # order as well as more would.
            first = client.post("/jobs", json={**longer(epochs=2), "name": "first"}).json()["id"]
            queued = [client.post("/jobs", json={**tiny(), "name": f"q{i}"}).json()["id"] for i in range(2)]
            wait_for(client, first, until=lambda j: j["state"] == "running")
        server.stop()  # SIGTERM: the running job goes back to the queue, uncounted
        as_found = False
        server.start(DEEPGRAD_WORKER="false")
        with server.client() as client:
            listed = client.get("/jobs", params={"state": "queued"}).json()
            assert [j["id"] for j in listed["data"]] == [*reversed(queued), first]  # newest first: all 3 queued
            assert client.get(f"/jobs/{first}").json()["attempts"] == 0
        server.stop(signal.SIGKILL)  # and a hard stop loses nothing either
        server.start()
        as_found = True
        with server.client() as client:
            jobs = [wait_for(client, j) for j in (first, *queued)]
        assert [j["state"] for j in jobs] == ["succeeded"] * 3
        starts = [j["started_at"] for j in jobs]
        assert starts == sorted(starts)  # oldest first
    finally:
        if not as_found or server.proc is None or server.proc.poll() is not None:
            server.stop()
            server.start()


def test_out_of_memory_fails_clearly_and_next_job_runs(roomy_server: LiveServer) -> None:
    """An out-of-memory job must not take the server (or the queue) down: it fails with ``out_of_memory``."""
    # conv1's output alone: 8192 images x 256 channels x 64 x 64 x 4 bytes = 34 GB, more than this machine has.
    huge = {"model": {"arch": "vgg16", "width": 4.0}, "data": {"name": "synthetic", "subset": 820, "test_subset": 1,
                                                                "image_size": 64},
            "train": {"epochs": 1, "batch_size": 8192}}
    with roomy_server.client() as client:
        big = client.post("/jobs", json=huge).json()["id"]
        after = client.post("/jobs", json=tiny()).json()["id"]
        job = wait_for(client, big, stall=240)
        assert job["state"] == "failed" and job["reason"] == "out_of_memory", job
        assert "batch_size" in job["message"]
        assert wait_for(client, after)["state"] == "succeeded"


def test_huge_learning_rate_diverges_and_keeps_what_was_recorded(roomy_server: LiveServer) -> None:
    """lr 1e6: the run ends ``diverged`` (not failed, not silently NaN) and keeps everything recorded before."""
    with roomy_server.client() as client:
        job_id = client.post("/jobs", json=tiny(lr=1e6, epochs=3)).json()["id"]
        job = wait_for(client, job_id)
        assert job["state"] == "diverged" and job["reason"] == "diverged", job
        assert job["diverged_at_step"] is not None and "lr" in job["message"]
        series = client.get(f"/jobs/{job_id}/gradients").json()
        assert series["steps"] and series["steps"][0] == 0
        assert client.get(f"/jobs/{job_id}/plots/norms.png").status_code == 200


def test_cancel_running_and_queued(roomy_server: LiveServer) -> None:
    """Cancel stops a running job within seconds and a queued one at once (it never starts)."""
    with roomy_server.client() as client:
        running = client.post("/jobs", json=longer(epochs=50)).json()["id"]
        queued = client.post("/jobs", json=tiny()).json()["id"]
        wait_for(client, running, until=lambda j: j["state"] == "running" and j["progress"])
        r = client.post(f"/jobs/{queued}/cancel")
        assert r.status_code == 202 and r.json()["state"] == "cancelled"
        asked = time.monotonic()
        assert client.post(f"/jobs/{running}/cancel").status_code == 202
        job = wait_for(client, running, limit=30)
        assert job["state"] == "cancelled" and time.monotonic() - asked < 10
        assert client.post(f"/jobs/{running}/cancel").status_code == 409
        assert client.get(f"/jobs/{queued}").json()["started_at"] is None  # never ran


def test_missing_data_set_fails_with_its_path(roomy_server: LiveServer) -> None:
    """A data set that is not installed: ``failed`` with reason ``data_missing`` naming it."""
    with roomy_server.client() as client:
        spec = {"model": {"arch": "resnet18", "width": 0.125}, "data": {"name": "cifar10", "subset": 2},
                "train": {"epochs": 1}}
        job = wait_for(client, client.post("/jobs", json=spec).json()["id"])
        assert job["state"] == "failed" and job["reason"] == "data_missing", job
        assert "cifar10" in job["message"]


def test_running_job_cannot_be_deleted(roomy_server: LiveServer) -> None:
    """Deleting a running job would pull its data from under its writer: 409 until it is cancelled."""
    with roomy_server.client() as client:
        job_id = client.post("/jobs", json=longer(epochs=50)).json()["id"]
        wait_for(client, job_id, until=lambda j: j["state"] == "running")
        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 409 and "cancel" in r.json()["detail"]
        client.post(f"/jobs/{job_id}/cancel")
        assert wait_for(client, job_id)["state"] == "cancelled"
        assert client.delete(f"/jobs/{job_id}").status_code == 204


def test_data_set_deleted_mid_queue(roomy_server: LiveServer, cifar10_root: Path) -> None:
    """A data set deleted while its job waits in the queue: the job fails ``data_missing``, the next one runs."""
    server, root = roomy_server, roomy_server.data_dir / "data"  # the server's data root (the default)
    shutil.copytree(cifar10_root / "cifar10", root / "cifar10")
    try:
        with server.client() as client:
            # Holds the queue while the data set goes, deleted as soon as it is seen running: 150 steps, so it
            # is still running then (a tiny job ends within a second of its submit).
            first = client.post("/jobs", json=longer(epochs=2)).json()["id"]
            cifar = {"model": {"arch": "resnet18", "width": 0.125}, "data": {"name": "cifar10", "subset": 2,
                                                                             "test_subset": 2},
                     "train": {"epochs": 1, "batch_size": 10}}
            doomed = client.post("/jobs", json=cifar).json()["id"]
            last = client.post("/jobs", json=tiny()).json()["id"]
            wait_for(client, first, until=lambda j: j["state"] == "running")
            shutil.rmtree(root / "cifar10")
            job = wait_for(client, doomed)
            assert job["state"] == "failed" and job["reason"] == "data_missing", job
            assert str(root / "cifar10") in job["message"]
            assert wait_for(client, first)["state"] == "succeeded"
            assert wait_for(client, last)["state"] == "succeeded"
    finally:
        shutil.rmtree(root / "cifar10", ignore_errors=True)  # the shared server's other tests have no cifar10


def test_delete_right_after_a_job_ends_keeps_the_worker_going(roomy_server: LiveServer) -> None:
    """In the seconds between a job writing its end and its process exiting, a DELETE made the worker read a job
    that was gone (AttributeError, "worker loop error; retrying in 5 s"): the next job waited ~6 s."""
    offset = roomy_server.log.stat().st_size
    with roomy_server.client() as client:
        first = client.post("/jobs", json=tiny()).json()["id"]
        second = client.post("/jobs", json=tiny()).json()["id"]
        ended = wait_for(client, first)
        assert client.delete(f"/jobs/{first}").status_code == 204  # at once, while its process still exits
        job = wait_for(client, second)
        assert job["state"] == "succeeded"
    from datetime import datetime

    gap = (datetime.fromisoformat(job["started_at"]) - datetime.fromisoformat(ended["finished_at"])).total_seconds()
    assert gap < 4.5, f"the next job started {gap:.1f} s after the deleted one ended"
    assert "worker loop error" not in log_since(roomy_server, offset)
