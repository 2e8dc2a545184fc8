"""How long a local job takes to start: a job process forked by the fork server (torch imported once) against a
fresh interpreter per job (``spawn``), side by side in one run.

Two ``deepgrad-server`` processes on loopback, ``DEEPGRAD_JOB_START=forkserver`` and ``=spawn``, each given time to
warm up; then ``--jobs`` one-step jobs (a tiny ResNet-18 on synthetic data) in turn on each, alternating between the
servers, timed from ``POST /jobs`` to the job's first recorded step (``progress.step >= 1``) and to its end.

    python bench/job_start.py             # ~2 min on 2 cores
    python bench/job_start.py --jobs 10
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import hardware

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "server")]  # the launcher the tests use

from live import TINY, LiveServer, wait_for  # noqa: E402

SPEC = {**TINY, "train": {**TINY["train"], "epochs": 1}}


def one_job(server: LiveServer) -> tuple[float, float]:
    """Seconds from POST to the first recorded step, and to the job's end."""
    with server.client() as client:
        start = time.monotonic()
        job_id = client.post("/jobs", json=SPEC).raise_for_status().json()["id"]
        wait_for(client, job_id, until=lambda j: (j.get("progress") or {}).get("step", 0) >= 1
                 or j["state"] == "succeeded")
        first = time.monotonic() - start
        job = wait_for(client, job_id)
        if job["state"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {job['state']}: {job.get('message')}")
        return first, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs per server (default 6)")
    args = parser.parse_args()
    print(f"# {hardware()}; {datetime.date.today()}; {args.jobs} one-epoch jobs per server, alternating")
    root = Path(tempfile.mkdtemp())
    servers = {m: LiveServer(root / m, None, env={"DEEPGRAD_JOB_START": m}) for m in ("forkserver", "spawn")}
    try:
        for server in servers.values():
            server.start()
        time.sleep(15)  # the fork server imports torch once, at start
        times: dict[str, list[tuple[float, float]]] = {m: [] for m in servers}
        for _ in range(args.jobs):
            for method, server in servers.items():
                times[method].append(one_job(server))
        for method, rows in times.items():
            first = statistics.median(r[0] for r in rows)
            total = statistics.median(r[1] for r in rows)
            print(f"{method:10s}: first step after {first:5.2f} s, done after {total:5.2f} s (medians)")
        ratio = statistics.median(r[0] for r in times["spawn"]) / statistics.median(r[0] for r in times["forkserver"])
        print(f"ratio spawn / forkserver, time to the first step: {ratio:.1f}x")
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
