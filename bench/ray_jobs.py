"""Jobs per hour through the Ray executor with one worker node, then two (nodes simulated on loopback).

A local Ray cluster (the tests' launcher, ``tests/raycluster.py``: loopback, token auth) whose head takes no jobs
(``--num-cpus`` of the head is 0), a PostgreSQL server (``tests/pgserver.py``) and ``deepgrad-server --executor ray``
on it. ``--jobs`` small jobs (tiny ResNet-18s on synthetic data, ``--epochs`` each) are submitted at once and timed
from the first POST to the last job's end; then a second worker node joins and the same batch runs again. Both
runs in one process, side by side, and the ratio printed. Every node is a process on this machine: with two
nodes on a 2-core machine the jobs also compete for its cores, so the ratio is a floor for two real hosts.

    python bench/ray_jobs.py                 # ~3-4 min on 2 cores
    python bench/ray_jobs.py --jobs 8 --epochs 3
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

from _common import hardware

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "server")]  # the launchers the tests use

from live import TINY, LiveServer, wait_for  # noqa: E402
from pgserver import PostgresServer, free_port  # noqa: E402
from raycluster import RayCluster  # noqa: E402


def run_batch(server: LiveServer, jobs: int, epochs: int, tag: str) -> float:
    """Submit ``jobs`` jobs at once; seconds until the last one ended (all must succeed)."""
    spec = {**TINY, "train": {**TINY["train"], "epochs": epochs}}
    with server.client() as client:
        start = time.monotonic()
        ids = [client.post("/jobs", json={**spec, "name": f"{tag}-{i}"}).raise_for_status().json()["id"]
               for i in range(jobs)]
        for job_id in ids:
            job = wait_for(client, job_id)
            if job["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['state']}: {job.get('message')}")
        return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs per batch (default 6)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per job (default 2)")
    args = parser.parse_args()

    print(f"# {hardware()}; {datetime.date.today()}; {args.jobs} jobs of {args.epochs} epochs per batch")
    pg = PostgresServer(free_port()).start()
    cluster = RayCluster(cpus=0).start()  # the head runs the cluster, no jobs
    server = None
    try:
        cluster.add_node(cpus=1)
        work = Path(cluster.root) / "server"
        server = LiveServer(work, None, env={
            **cluster.env(), "DEEPGRAD_EXECUTOR": "ray", "DEEPGRAD_RAY_ADDRESS": cluster.address,
            "DEEPGRAD_DATABASE_URL": pg.create_database("bench"), "DEEPGRAD_RAY_GPUS_PER_JOB": "0",
            "DEEPGRAD_RAY_CPUS_PER_JOB": "1", "DEEPGRAD_RAY_PYTHON": sys.executable, "DEEPGRAD_MAX_QUEUED": "1000"})
        server.start()
        one = run_batch(server, args.jobs, args.epochs, "one-node")
        print(f"1 worker node : {args.jobs} jobs in {one:6.1f} s = {args.jobs / one * 3600:7.0f} jobs/hour")
        cluster.add_node(cpus=1)
        time.sleep(11)  # the executor asks the cluster for its size every 10 s
        with server.client() as client:
            slots = client.get("/health").json()["slots"]
        two = run_batch(server, args.jobs, args.epochs, "two-nodes")
        print(f"2 worker nodes: {args.jobs} jobs in {two:6.1f} s = {args.jobs / two * 3600:7.0f} jobs/hour "
              f"(slots {slots})")
        print(f"ratio 2 nodes / 1 node: {one / two:.2f}x")
    finally:
        if server is not None:
            server.stop()
        cluster.stop()
        pg.stop()


if __name__ == "__main__":
    main()
