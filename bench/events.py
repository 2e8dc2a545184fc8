"""What do idle event streams cost the server? ``/health`` latency and the server's CPU with 0 and with
``--streams`` open server-sent-event streams, on a real ``deepgrad-server`` on loopback (issue 16).

A server starts with no worker and one queued job (its streams stay idle: nothing changes). A probe sends
``GET /health`` every ``--every`` s for ``--duration`` s in each window:

* **idle**: no streams;
* **job**: ``--streams`` streams on the job (``GET /jobs/{id}/events``);
* **list**: ``--streams`` streams on the job list (``GET /events``; new code only).

After the job window, five progress updates are written into the server's SQLite file (as a job process writes
them), about a second apart, and the seconds until each stream has each ``progress`` event are timed: the
delivery of a change (one store poll is 0.5 s).

With ``--baseline REF`` the same windows run against the server code at git ``REF`` (``git archive`` of
``server/`` and ``deepgrad_core/`` into a temporary folder, put first on ``PYTHONPATH``), one server after the
other, so the two are measured side by side in one run. The streams and the probe share the cores with the
server (one asyncio loop, bare sockets for the streams); the CPU seconds are the server process's own.

    python bench/events.py                                  # ~1 min on 2 cores
    python bench/events.py --baseline b6f0cba --json events.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import platform
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import hardware
from api import TINY, TOKEN, Server

REPO = Path(__file__).resolve().parent.parent
CHANGES = 5  # progress updates timed through the job streams


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", type=int, default=300, help="open streams in the job and list windows")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of /health probes per window")
    p.add_argument("--every", type=float, default=0.05, help="seconds between /health probes")
    p.add_argument("--baseline", metavar="REF", help="also measure the server code at this git ref")
    p.add_argument("--json", metavar="PATH", help="also write the settings and figures as JSON to PATH")
    args = p.parse_args(argv)
    if args.streams <= 0 or args.duration <= 0 or args.every <= 0:
        p.error("--streams, --duration and --every must be > 0")
    return args


def checkout(ref: str, into: Path) -> Path:
    """``server/`` and ``deepgrad_core/`` of ``ref``, extracted (no worktree: the repository is left as it is)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", ref, "server", "deepgrad_core"],
                             check=True, capture_output=True).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


class Stream:
    """One event stream over a bare asyncio connection: its bytes, and when each ``progress`` event came."""

    def __init__(self) -> None:
        self.data = b""
        self.progress_at: list[float] = []

    async def follow(self, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Accept: text/event-stream\r\n\r\n".encode())
        try:
            while chunk := await reader.read(65536):
                self.data += chunk
                now = time.perf_counter()
                self.progress_at += [now] * (self.data.count(b"event: progress") - len(self.progress_at))
        finally:
            writer.close()


async def probe(url: str, duration: float, every: float) -> list[float]:
    """``GET /health`` every ``every`` s for ``duration`` s: each one's milliseconds (errors: infinite)."""
    out: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        end = time.perf_counter() + duration
        while (start := time.perf_counter()) < end:
            try:
                ok = (await client.get("/health")).status_code == 200
            except httpx.TransportError:
                ok = False
            out.append((time.perf_counter() - start) * 1e3 if ok else float("inf"))
            await asyncio.sleep(max(0.0, every - (time.perf_counter() - start)))
    return out


async def window(server: Server, path: str | None, args: argparse.Namespace, job_id: str) -> dict[str, Any]:
    """The probe with ``args.streams`` streams on ``path`` open (none: ``path`` None)."""
    streams = [Stream() for _ in range(args.streams if path else 0)]
    tasks = [asyncio.create_task(s.follow(server.port, path)) for s in streams]
    deadline = time.perf_counter() + 60
    while not all(b"event: " in s.data for s in streams):  # every stream answered: all are open
        if time.perf_counter() > deadline or any(t.done() for t in tasks):
            raise RuntimeError(f"{path}: {sum(b'event: ' in s.data for s in streams)}/{len(streams)} streams opened")
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # past the opening burst
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    ms = await probe(server.url, args.duration, args.every)
    cpu, wall = server.cpu_seconds() - cpu0, time.perf_counter() - t0
    row = {"streams": len(streams), "path": path, "probes": len(ms), "failed": int(np.isinf(ms).sum()),
           "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
           "p99_ms": float(np.percentile(ms, 99)), "cpu_s": cpu, "wall_s": wall, "cores": cpu / wall}
    if path and path.endswith(f"{job_id}/events"):  # delivery of a few changes to every stream
        rng, delays = random.Random(0), []
        for k in range(CHANGES):
            await asyncio.sleep(rng.uniform(0.6, 1.2))  # apart by more than a tick: none coalesced
            written = await asyncio.to_thread(write_progress, server.data_dir, job_id, k + 1)
            deadline = time.perf_counter() + 30
            while not all(len(s.progress_at) > k for s in streams) and time.perf_counter() < deadline:
                await asyncio.sleep(0.01)
            delays += [s.progress_at[k] - written for s in streams if len(s.progress_at) > k]
        row.update(changes=CHANGES, delivered=len(delays), deliver_p50_s=float(np.median(delays)),
                   deliver_max_s=max(delays))
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return row


def write_progress(data_dir: Path, job_id: str, step: int) -> float:
    """A progress update as a job process writes it; returns when it was committed (perf_counter)."""
    from deepgrad_server import store
    from deepgrad_server.db import Database

    db = Database(f"sqlite:///{data_dir / 'deepgrad.db'}")
    try:
        with db.writing() as s:
            store.update_job(s, job_id=job_id, progress={"epoch": 0, "epochs": 1, "step": step, "total_steps": 99,
                                                         "updated_at": store.now()})
        return time.perf_counter()
    finally:
        db.dispose()


def measure(label: str, pythonpath: Path | None, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    data_dir = tmp / label
    data_dir.mkdir()
    env = {"DEEPGRAD_WORKER": "false", "DEEPGRAD_LOG_LEVEL": "warning"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath / "server"), str(pythonpath)])
    server = Server(data_dir, env)
    server.start()
    try:
        server.settle()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
            job_id = c.post("/jobs", json=TINY).raise_for_status().json()["id"]
        has_list = _has_list_stream(server.url)
        paths = [None, f"/jobs/{job_id}/events"] + (["/events"] if has_list else [])
        rows = []
        for path in paths:
            row = asyncio.run(window(server, path, args, job_id))
            rows.append({"code": label, **row})
            print_row(rows[-1])
            server.settle(10)
        return rows
    finally:
        server.stop()


def _has_list_stream(url: str) -> bool:
    """Whether this server has ``GET /events`` (older code answers 404)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("GET", url + "/events", headers=headers, timeout=10) as r:
        return r.status_code == 200


def print_row(r: dict[str, Any]) -> None:
    path = r["path"] if r["path"] in (None, "/events") else "/jobs/{id}/events"
    what = "no streams" if path is None else f"{r['streams']} x {path}"
    line = (f"  {r['code']:<9} {what:<28} /health p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
            f"p99 {r['p99_ms']:7.1f} ms  failed {r['failed']}  server CPU {r['cpu_s']:5.2f} s / {r['wall_s']:.1f} s "
            f"= {r['cores']:.2f} cores")
    if "delivered" in r:
        line += (f"\n{'':40}{r['changes']} changes, each to {r['streams']} streams: {r['delivered']} delivered, "
                 f"after {r['deliver_p50_s']:.2f} s (median), {r['deliver_max_s']:.2f} s (last)")
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    header = {"date": datetime.date.today().isoformat(), "hardware": hardware(), "python": platform.python_version(),
              "repository": rev, "baseline": args.baseline, "streams": args.streams, "duration_s": args.duration,
              "probe_every_s": args.every}
    print(json.dumps(header), flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="deepgrad-bench-events-") as tmp:
        rows += measure("new", None, args, Path(tmp))
        if args.baseline:
            old = checkout(args.baseline, Path(tmp) / "baseline-code")
            rows += measure(args.baseline[:9], old, args, Path(tmp))
    if args.baseline:
        new_job, old_job = (next(r for r in rows if r["code"] == code and r["path"] and r["path"] != "/events")
                            for code in ("new", args.baseline[:9]))
        print(f"{args.streams} idle streams on one job, baseline/new: server cores "
              f"{old_job['cores'] / max(new_job['cores'], 1e-3):.1f}x, /health p95 "
              f"{old_job['p95_ms'] / new_job['p95_ms']:.1f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**header, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
