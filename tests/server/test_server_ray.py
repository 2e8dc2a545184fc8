"""Jobs on a real Ray cluster: a ``deepgrad-server --executor ray`` on PostgreSQL dispatches jobs to a local Ray
head (loopback, token auth) through the Jobs SDK; each job's process writes straight to PostgreSQL.

- jobs run there (as Ray jobs, each named after its DeepGrad job) and their series are whole;
- a Ray job's process killed mid-job: the job resumes from its checkpoint (a second run, a new Ray job) and ends
  with every step recorded once;
- a cancel: the job ends ``cancelled`` and its Ray job is stopped.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import TINY, LiveServer, wait_for
from raycluster import RayCluster, ray_installed


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    if not ray_installed():
        if os.environ.get("DEEPGRAD_REQUIRE_RAY") == "1":
            pytest.fail("Ray is required (DEEPGRAD_REQUIRE_RAY=1) but not installed: pip install -e '.[ray]'")
        pytest.skip("Ray is not installed (pip install -e '.[ray]')")
    c = RayCluster(cpus=2).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def server(cluster: RayCluster, postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("ray-server"), None, env={
        **cluster.env(), "DEEPGRAD_EXECUTOR": "ray", "DEEPGRAD_RAY_ADDRESS": cluster.address,
        "DEEPGRAD_DATABASE_URL": postgres.create_database("ray"), "DEEPGRAD_RAY_GPUS_PER_JOB": "0",
        "DEEPGRAD_RAY_CPUS_PER_JOB": "1", "DEEPGRAD_RAY_PYTHON": sys.executable, "DEEPGRAD_RAY_MAX_JOBS": "4"})
    s.start()
    yield s
    s.stop()


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def ray_runs(cluster: RayCluster, job_id: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The Ray jobs that ran DeepGrad job ``job_id``, as the cluster's Jobs API lists them, once they have ended
    (a job's process exits a moment after it recorded its result)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [j for j in cluster.jobs() if (j.get("metadata") or {}).get("deepgrad_job") == job_id]
        if all(j["status"] not in ("PENDING", "RUNNING") for j in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.5)


def steps_of(client: httpx.Client, job_id: str) -> list[int]:
    text = client.get(f"/jobs/{job_id}/gradients.csv", params={"kind": "weight"}).raise_for_status().text
    return [int(row["step"]) for row in csv.DictReader(io.StringIO(text))]


def entry_pids(job_id: str) -> list[int]:
    """Pids of the Python processes running ``job_id`` as a Ray job (by their command line and environment; not
    the shell Ray starts them with)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            mine = job_id.encode() in (entry / "environ").read_bytes()
            if argv[1:3] == [b"-m", b"deepgrad_server.ray_entry"] and mine:
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def steps_per_epoch(subset: int) -> int:
    return subset * 10 // TINY["train"]["batch_size"]  # synthetic data: ``subset`` images per class


def job(epochs: int, subset: int = 8, **extra: Any) -> dict[str, Any]:
    return {**TINY, "data": {**TINY["data"], "subset": subset}, "train": {**TINY["train"], "epochs": epochs},
            **extra}


def test_the_cluster_listens_on_loopback_only(cluster: RayCluster) -> None:
    import psutil  # Ray's own dependency

    listening = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status != psutil.CONN_LISTEN or conn.pid is None:
            continue
        try:
            cmdline = " ".join(psutil.Process(conn.pid).cmdline())
        except psutil.Error:
            continue
        if "ray" in cmdline and str(cluster.root) in cmdline or "ray::" in cmdline:
            listening.append((conn.laddr.ip, conn.laddr.port, cmdline[:80]))
    assert listening, "found none of the cluster's sockets"
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _, _ in listening), listening


def test_jobs_run_on_the_cluster_with_whole_series(client: httpx.Client, cluster: RayCluster) -> None:
    ids = [client.post("/jobs", json=job(2, name=f"ray-{i}")).raise_for_status().json()["id"] for i in range(2)]
    health = client.get("/health").json()
    assert health["executor"] == "ray" and health["slots"] == 2, health  # 2 CPUs, 1 per job
    for job_id in ids:
        done = wait_for(client, job_id)
        assert done["state"] == "succeeded", done
        assert done["attempts"] == 1
        assert steps_of(client, job_id) == list(range(2 * steps_per_epoch(8)))
        assert len(client.get(f"/jobs/{job_id}/metrics").json()["epochs"]) == 2
    for job_id in ids:
        runs = ray_runs(cluster, job_id)
        assert len(runs) == 1 and runs[0]["status"] == "SUCCEEDED", runs
        assert runs[0]["submission_id"].startswith(f"deepgrad-{job_id}-")


def test_a_killed_ray_job_resumes_from_its_checkpoint(client: httpx.Client, cluster: RayCluster) -> None:
    epochs, subset = 10, 16  # 10 steps an epoch: time to kill it between checkpoints
    job_id = client.post("/jobs", json=job(epochs, subset, name="ray-kill")).raise_for_status().json()["id"]
    wait_for(client, job_id, until=lambda j: (j.get("progress") or {}).get("epoch", 0) >= 2)
    pids = entry_pids(job_id)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    done = wait_for(client, job_id)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2, done
    assert steps_of(client, job_id) == list(range(epochs * steps_per_epoch(subset)))  # every step once, none lost
    assert [e["epoch"] for e in client.get(f"/jobs/{job_id}/metrics").json()["epochs"]] == list(range(epochs))
    runs = ray_runs(cluster, job_id)
    assert sorted(j["status"] for j in runs) == ["FAILED", "SUCCEEDED"], runs  # two Ray jobs: killed, resumed


def test_cancel_stops_the_ray_job(client: httpx.Client, cluster: RayCluster) -> None:
    job_id = client.post("/jobs", json=job(200, 16, name="ray-cancel")).raise_for_status().json()["id"]
    wait_for(client, job_id, until=lambda j: (j.get("progress") or {}).get("step", 0) >= 2)
    assert client.post(f"/jobs/{job_id}/cancel").status_code in (200, 202)
    done = wait_for(client, job_id)
    assert done["state"] == "cancelled", done
    runs = ray_runs(cluster, job_id)
    assert len(runs) == 1 and runs[0]["status"] == "STOPPED", runs
    assert not entry_pids(job_id)
