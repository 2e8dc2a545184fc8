"""PostgreSQL through live ``deepgrad-server`` processes (each store operation is also run on it by
``test_server_store.py``).

Three processes on one database: two API processes (no worker) take 200 submissions at once, each
Idempotency-Key sent to both, while the third process's four workers claim the jobs. The workers' memory budget
(``DEEPGRAD_MAX_JOB_MEMORY_GIB``) fits a tiny job (~1 GiB estimated) but none of the 200 (~5 GiB each: the API
processes, without workers, do not size jobs), so each of those claims ends at once (``failed``, ``out_of_memory``,
unstarted): 200 claims in seconds instead of 200 runs. And a short end to end on the same processes: one tiny job
trained to ``succeeded``, then every route that reads it.
"""

from __future__ import annotations

import io
import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from live import TERMINAL, TINY, LiveServer, wait_for
from PIL import Image

from deepgrad_core.plots import JOB_KINDS

SUBMISSIONS = 200
CLAIMERS = 4
# Accepted by the API processes, refused by the workers' budget of 2 GiB (TINY: ~1 GiB).
LARGE = {**TINY, "model": {"arch": "resnet18", "width": 2.0}, "train": {"epochs": 2, "batch_size": 256},
         "data": {**TINY["data"], "image_size": 32}}


class Cluster:
    """Two API processes (no worker) and a worker process (four workers) on one PostgreSQL database."""

    def __init__(self, root: Path, url: str) -> None:
        env = {"DEEPGRAD_DATABASE_URL": url}
        self.apis = [LiveServer(root / f"api{i}", None, env={**env, "DEEPGRAD_WORKER": "false",
                                                              "DEEPGRAD_MAX_QUEUED": "1000"}) for i in range(2)]
        self.worker = LiveServer(root / "worker", None, env={**env, "DEEPGRAD_DEVICE": ",".join(["cpu"] * CLAIMERS),
                                                              "DEEPGRAD_MAX_JOB_MEMORY_GIB": "2"})
        self.all = [*self.apis, self.worker]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres) -> Iterator[Cluster]:  # noqa: ANN001 (PostgresServer)
    cluster = Cluster(tmp_path_factory.mktemp("pg"), postgres.create_database("live"))
    try:
        with ThreadPoolExecutor(len(cluster.all)) as pool:  # at once: they migrate the empty database together
            list(pool.map(LiveServer.start, cluster.all))
        yield cluster
    finally:
        for server in cluster.all:
            server.stop()


@pytest.fixture(scope="module")
def e2e_job(cluster: Cluster) -> str:
    """A tiny job, started before the submissions test (it trains meanwhile); its id."""
    with cluster.apis[0].client() as client:
        r = client.post("/jobs", json={**TINY, "name": "PG-e2e", "tracking": {"flush_every": 3}})
        assert r.status_code == 201, r.text
        return wait_for(client, r.json()["id"], {"running", *TERMINAL})["id"]


def test_concurrent_submissions_over_two_api_processes(cluster: Cluster, e2e_job: str) -> None:
    """Each key sent to both API processes at once: one job per key, no 5xx; each job claimed once, by one of the
    worker process's claimers."""
    keys = [f"key-{i:03d}" for i in range(SUBMISSIONS)]
    sends = [(key, server) for key in keys for server in (0, 1)]
    random.Random(0).shuffle(sends)
    clients = [server.client() for server in cluster.apis]

    def submit(send: tuple[str, int]) -> tuple[str, int, str]:
        key, server = send
        r = clients[server].post("/jobs", json={**LARGE, "name": key}, headers={"Idempotency-Key": key})
        assert r.status_code in (200, 201), (r.status_code, r.text)
        return key, r.status_code, r.json()["id"]

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(submit, sends))
        ids = {key: {job_id for k, _, job_id in answers if k == key} for key in keys}
        assert all(len(found) == 1 for found in ids.values())  # every answer for a key names the same job
        assert Counter(key for key, status, _ in answers if status == 201) == Counter(keys)  # created once each
        jobs = [job for job in _drain(clients[0]) if job["id"] != e2e_job]
    finally:
        for client in clients:
            client.close()
    assert sorted(j["name"] for j in jobs) == keys and {j["id"] for j in jobs} == {i for (i,) in ids.values()}
    assert {(j["state"], j["reason"], j["attempts"]) for j in jobs} == {("failed", "out_of_memory", 1)}
    log = cluster.worker.log.read_text()
    refused = Counter(re.findall(r"job ([0-9a-f]{12}): not started", log))
    assert refused == Counter(j["id"] for j in jobs)  # each claimed once, by one claimer
    for server in cluster.all:
        text = server.log.read_text()
        assert "Traceback" not in text and "worker loop error" not in text, text[-3000:]


def _drain(client: httpx.Client, limit: float = 120) -> list[dict]:
    """Every job, once the 200 are neither queued nor running."""
    deadline = time.monotonic() + limit
    while True:
        page = client.get("/jobs", params={"limit": 500, "name": "key-"}).raise_for_status().json()
        if page["count"] == SUBMISSIONS and all(j["state"] in TERMINAL for j in page["data"]):
            return page["data"]
        assert time.monotonic() < deadline, Counter(j["state"] for j in page["data"])
        time.sleep(0.5)


@pytest.fixture(scope="module")
def finished(cluster: Cluster, e2e_job: str) -> Iterator[httpx.Client]:
    with cluster.apis[1].client() as client:
        job = wait_for(client, e2e_job)
        assert job["state"] == "succeeded", job
        yield client


def test_job_runs_to_succeeded_and_every_read_answers(finished: httpx.Client, e2e_job: str) -> None:
    client, url = finished, f"/jobs/{e2e_job}"
    job = client.get(url).json()
    assert job["attempts"] == 1 and job["final"] and job["summary"]["weight"]["first_last_ratio"] > 0
    assert [j["id"] for j in client.get("/jobs", params={"name": "pg-E2E"}).json()["data"]] == [e2e_job]
    steps = job["progress"]["total_steps"]
    metrics = client.get(f"{url}/metrics").json()
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1] and metrics["layer_means"]["weight"]
    series = client.get(f"{url}/gradients").json()
    assert series["steps"] == list(range(steps)) and series["records"] == steps
    assert client.get(f"{url}/gradients", params={"start": 2, "end": 4}).json()["steps"] == [2, 3]
    beyond = client.get(f"{url}/gradients", params={"start": 2**40})  # past int32: no overflow in the query
    assert beyond.status_code == 200 and beyond.json()["steps"] == [], beyond.text
    rows = client.get(f"{url}/gradients.csv").text.strip().split("\n")
    assert len(rows) == 1 + steps
    hist = client.get(f"{url}/histograms").json()
    assert hist["steps"] == [0] and hist["counts"]
    assert client.get(f"{url}/histograms", params={"steps": str(2**40)}).status_code == 422
    for kind in JOB_KINDS:
        r = client.get(f"{url}/plots/{kind}.png")
        assert r.status_code == 200, (kind, r.text)
        Image.open(io.BytesIO(r.content)).load()
    compare = client.get("/compare", params={"ids": e2e_job}).json()
    assert compare["jobs"][0]["epochs_completed"] == 2
    with client.stream("GET", f"{url}/events") as r:
        assert "event: end" in r.read().decode()


def test_study_cancel_and_delete(finished: httpx.Client, e2e_job: str) -> None:
    """Studies' writes on PostgreSQL: created together, cancelled together (queued: at once), deleted with their
    jobs; and a job deleted with its series."""
    client = finished
    # Long enough (1,000 steps) that a job a worker takes at once cannot end before its worker sees the cancel
    # (a job that completes first ends succeeded, as it should: TINY's 10 steps take under a second).
    base = {**TINY, "train": {**TINY["train"], "epochs": 200}}
    r = client.post("/studies", json={"name": "pg", "base": base, "points": [{"train.lr": 0.1},
                                                                             {"train.lr": 0.01}]})
    assert r.status_code == 201, r.text
    study = r.json()
    assert [j["job"]["name"] for j in study["jobs"]] == ["pg/1 lr=0.1", "pg/2 lr=0.01"]
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 202
    for j in study["jobs"]:  # cancelled while queued, or stopped by its worker if one took it first
        assert wait_for(client, j["job"]["id"])["state"] == "cancelled"
    assert client.get(f"/studies/{study['id']}/summary").json()["varied"] == ["train.lr"]
    assert client.delete(f"/studies/{study['id']}").status_code == 204
    assert client.get(f"/jobs/{study['jobs'][0]['job']['id']}").status_code == 404
    assert client.delete(f"/jobs/{e2e_job}").status_code == 204
    assert client.get(f"/jobs/{e2e_job}/gradients").status_code == 404
    assert client.get("/jobs", params={"name": "e2e"}).json()["count"] == 0
