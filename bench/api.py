"""How does the API hold up under load? Latency and throughput of a real ``deepgrad-server`` on loopback.

First one finished job is written into the server's SQLite file through ``deepgrad_server.store``,
shaped like a 100-epoch ResNet-18 run on CIFAR-10 (the resolved ``specs/resnet18.yaml`` spec, its 20
tracked convs, 39,100 steps of weight norms and activation norms every 10th step stored block by
block as the tracker flushes them, 100 epochs of metrics, cost, summary, per-class report, filters).
Then ``python -m deepgrad_server.main`` starts (embedded worker on; default settings but
``DEEPGRAD_MAX_QUEUED``) and closed-loop clients (asyncio, ``httpx.AsyncClient``) load it:

* **A** (issue 3): ``--clients`` clients for ``--duration`` s, each alternating ``GET /jobs/{id}`` and
  ``GET /jobs/{id}/gradients?layers=conv5&max_points=2000`` on that job.
* **B** (issue 6): while a longer synthetic job trains, ``--posts`` clients each send one ``POST /jobs``
  (a tiny spec, its own ``Idempotency-Key``) and their share of ``--gets`` GETs as in A, in random
  order. Targets: no 5xx, unique ids, p99 <= 200 ms. Then every job is cancelled, the server stopped.
* **C** (issue 11): ``GET /health`` every 50 ms, first idle, then while ``--renders`` clients each ask for an
  uncached heatmap of the seeded job at once: its latency side by side (a container's health check gives
  up after 4 s), and how many figures rendered or were refused (503, Retry-After) by the bounded queue.

The load generator shares the cores with the server (and in B with the training job); the CPU
seconds of both are printed.

    python bench/api.py                               # ~1-2 min on 2 cores
    python bench/api.py --duration 30 --clients 100 --json api.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from _common import hardware

TOKEN = "bench-token-0123456789abcdef"
TARGET_P99_MS = 200.0
SPEC_FILE = Path(__file__).resolve().parent.parent / "specs" / "resnet18.yaml"
TINY = {"model": {"arch": "resnet18", "width": 0.125}, "data": {"name": "synthetic", "subset": 8, "test_subset": 4,
        "image_size": 16}, "train": {"epochs": 1, "batch_size": 16}}
TRAINING = {"name": "bench-training", "model": {"arch": "resnet18", "width": 0.25},
            "data": {"name": "synthetic", "subset": 200, "image_size": 32}, "train": {"epochs": 20}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=15.0, help="seconds of scenario A")
    p.add_argument("--clients", type=int, default=50, help="concurrent clients in scenario A")
    p.add_argument("--posts", type=int, default=200, help="concurrent clients (one POST each) in scenario B")
    p.add_argument("--renders", type=int, default=24, help="concurrent uncached heatmaps in scenario C")
    p.add_argument("--gets", type=int, default=1000, help="GETs in scenario B, spread over its clients")
    p.add_argument("--seed", type=int, default=0, help="order of the requests in scenario B")
    p.add_argument("--json", metavar="PATH", help="also write the settings and figures as JSON to PATH")
    args = p.parse_args(argv)
    if min(args.duration, args.clients, args.posts) <= 0 or args.gets < 0:
        p.error("--duration, --clients and --posts must be > 0, --gets >= 0")
    return args


# ------------------------------------------------------------------------------------------ seeding


def seed_finished_job(database_url: str) -> str:
    """Store a finished 100-epoch ResNet-18 job as a job process would have; return its id."""
    from deepgrad_core.analysis import cost_report, first_layer_filters
    from deepgrad_core.analysis.summary import summarize_run
    from deepgrad_core.models import build_model, tracked_layers
    from deepgrad_core.norms import NormBlock, concat_blocks
    from deepgrad_core.spec import ExperimentSpec
    from deepgrad_core.strict_json import strict_json
    from deepgrad_server import store
    from deepgrad_server.db import Database
    from deepgrad_server.runner import split_summary

    epochs = 100
    raw = yaml.safe_load(SPEC_FILE.read_text())
    spec = ExperimentSpec.model_validate({**raw, "train": {**raw["train"], "epochs": epochs}})  # the spec it ran
    model = build_model(spec.model)
    layers = [la.to_dict() for la in tracked_layers(model, spec.tracking.layer_types)]
    names, spe = tuple(la["name"] for la in layers), 391
    rng = np.random.default_rng(0)
    steps = np.arange(spe * epochs)
    values = (10.0 ** (0.1 * (np.arange(len(names)) - len(names))) * (0.3 + np.exp(-steps / 12_000))[:, None]
              * rng.lognormal(0, 0.4, (len(steps), len(names)))).astype(np.float32)
    blocks: list[NormBlock] = []
    for e in range(epochs):  # as the tracker flushes: every 50 steps and at each epoch end
        for first in range(e * spe, (e + 1) * spe, 50):
            s = steps[first:min(first + 50, (e + 1) * spe)]
            blocks += [NormBlock("weight", s, names, values[s]),
                       NormBlock("activation", s[s % 10 == 0], names, values[s[s % 10 == 0]] * 3)]
    series = {k: concat_blocks(b for b in blocks if b.kind == k) for k in ("weight", "activation")}
    t0 = time.time() - 2200

    summary, layer_means = split_summary(strict_json(summarize_run(series, steps_per_epoch=spe, fraction=1e-3)))
    fields = {
        "state": "succeeded", "created_at": t0 - 60, "started_at": t0, "finished_at": t0 + 2100, "attempts": 1,
        "layers": layers,
        "steps_per_epoch": spe, "environment": {"torch": "2.14.1", "python": "3.11.7", "device": "cuda:0",
                                                 "cuda": "12.8", "gpu": "NVIDIA H200", "cpu_threads": 16},
        "progress": {"epoch": epochs, "epochs": epochs, "step": len(steps), "total_steps": len(steps), "loss": 0.02,
                     "train_acc": 0.999, "test_acc": 0.94, "images_per_sec": 2380.0, "updated_at": t0 + 2100},
        "final": {"test_acc": 0.94, "test_loss": 0.25, "train_acc": 0.999, "train_loss": 0.02, "best_epoch": 97,
                  "best_test_acc": 0.941, "seconds": 2100.0},
        "summary": summary, "layer_means": layer_means,  # stored as the job process stores them
        "cost": strict_json(cost_report(model, (3, 32, 32), measure_peak=False).to_dict()),
        "per_class": [{"class": c, "precision": 0.94, "recall": 0.94, "f1": 0.94, "support": 1000} for c in
                      "airplane automobile bird cat deer dog frog horse ship truck".split()],
        "confusion": (np.eye(10, dtype=int) * 930 + rng.integers(0, 15, (10, 10))).tolist(),
        "filters": store.encode_array(first_layer_filters(model))}
    db = Database(database_url)
    try:
        with db.writing() as s:
            job_id = store.create_job(s, spec=spec.model_dump(mode="json"), name="resnet18-cifar10-100ep",
                                      idempotency_key=None, max_queued=1)[0].id
        for block in blocks:
            with db.writing() as s:
                store.append_norms(s, job_id=job_id, block=block)
        with db.writing() as s:
            for e in range(epochs):
                store.put_epoch(s, job_id=job_id, metrics={
                    "epoch": e, "train_loss": 2.3 * np.exp(-e / 20), "train_acc": 1 - 0.9 * np.exp(-e / 15),
                    "test_loss": 2.3 * np.exp(-e / 25) + 0.2, "test_acc": 0.94 - 0.84 * np.exp(-e / 15),
                    "lr": 0.05 * (1 + np.cos(np.pi * e / epochs)) / 2, "seconds": 21.0, "images_per_sec": 2380.0})
            store.update_job(s, job_id=job_id, **fields)
    finally:
        db.dispose()
    return job_id


# ------------------------------------------------------------------------------------------- server


class Server:
    """``deepgrad-server`` on a free loopback port, as a user starts it."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url, self.data_dir = f"http://127.0.0.1:{self.port}", data_dir
        self.env = {**os.environ, "DEEPGRAD_TOKEN": TOKEN, **env}
        self.log = data_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "deepgrad_server.main", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()[-3000:]}")

    def cpu_seconds(self) -> float:  # of the server process only (a job runs in a child)
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def settle(self, limit: float = 30.0) -> float:
        """Wait until the server is idle (it imports PyTorch in the background at start, to size jobs):
        under 0.1 s of CPU in a second, at most ``limit`` s. Returns the seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < limit:
            before = self.cpu_seconds()
            time.sleep(1.0)
            if self.cpu_seconds() - before < 0.1:
                break
        return time.monotonic() - start

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -------------------------------------------------------------------------------------------- load


async def timed(client: httpx.AsyncClient, what: str, method: str, path: str, out: list,
                **kw: Any) -> httpx.Response | None:
    """One request, recorded as (endpoint, status, ms, bytes, error); a transport error is status 0."""
    start = time.perf_counter()
    try:
        response = await client.request(method, path, **kw)
    except httpx.TransportError as err:
        out.append((what, 0, (time.perf_counter() - start) * 1e3, 0, f"{type(err).__name__}: {err}"))
        return None
    out.append((what, response.status_code, (time.perf_counter() - start) * 1e3, len(response.content), None))
    return response


def gets(job_id: str, n: int, first: int = 0) -> list[tuple[str, str]]:
    """``n`` GETs alternating the job and its conv5 series, starting with the one ``first`` picks."""
    both = [("GET /jobs/{id}", f"/jobs/{job_id}"),
            ("GET gradients", f"/jobs/{job_id}/gradients?layers=conv5&max_points=2000")]
    return [both[(first + k) % 2] for k in range(n)]


async def drive(url: str, plans: list[list[tuple[str, str]]], until: float | None = None) -> tuple[list, list, float]:
    """One closed-loop client per plan, all at once; a plan is repeated until ``until`` when given.

    Returns the records, the ids of the jobs POSTed, and the wall time. Keep-alive connections are
    dropped after 4 s, before uvicorn's 5 s keep-alive timeout closes them: with equal timeouts a
    reused connection can be closed under a request (a ReadError that says nothing about the server).
    """
    out: list = []
    ids: list[str] = []
    limits = httpx.Limits(max_connections=len(plans), max_keepalive_connections=len(plans), keepalive_expiry=4)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                                 limits=limits) as client:

        async def one_client(i: int, plan: list[tuple[str, str]]) -> None:
            while True:
                for what, path in plan:
                    if until is not None and time.perf_counter() >= until:
                        return
                    if what != "POST /jobs":
                        await timed(client, what, "GET", path, out)
                        continue
                    r = await timed(client, what, "POST", path, out, json={**TINY, "name": f"bench-{i}", "seed": i},
                                    headers={"Idempotency-Key": f"bench-api-{os.getpid()}-{i}"})
                    if r is not None and r.status_code == 201:
                        ids.append(r.json()["id"])
                if until is None:
                    return

        start = time.perf_counter()
        await asyncio.gather(*(one_client(i, plan) for i, plan in enumerate(plans)))
        return out, ids, time.perf_counter() - start


def scenario_a(url: str, job_id: str, clients: int, duration: float) -> tuple[list, float]:
    """``clients`` clients alternating the two GETs for ``duration`` s (after an untimed warm-up)."""
    asyncio.run(drive(url, [gets(job_id, 6)]))
    records, _, seconds = asyncio.run(drive(url, [gets(job_id, 2, i) for i in range(clients)],
                                            until=time.perf_counter() + duration))
    return records, seconds


def scenario_b(url: str, job_id: str, posts: int, n_gets: int, seed: int) -> tuple[list, list[str], float]:
    """``posts`` clients, each with one POST and its share of ``n_gets`` GETs, in random order."""
    rng = random.Random(seed)
    plans = []
    for i in range(posts):
        plan = [("POST /jobs", "/jobs"), *gets(job_id, n_gets // posts + (i < n_gets % posts), i)]
        rng.shuffle(plan)
        plans.append(plan)
    return asyncio.run(drive(url, plans))


def summarize(records: list, seconds: float) -> dict[str, Any]:
    """Per endpoint and in all: count, rate, latency percentiles, non-2xx answers, 5xx, transport errors."""
    by: dict[str, list] = {"all": records}
    for r in records:
        by.setdefault(r[0], []).append(r)
    out: dict[str, Any] = {}
    for what in sorted(by, key=lambda w: (w == "all", w)):
        status, ms, size = (np.array([r[i] for r in by[what]]) for i in (1, 2, 3))
        out[what] = {"requests": len(ms), "per_s": len(ms) / seconds, "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
                     "kib": float(size[status > 0].mean()) / 1024 if (status > 0).any() else 0.0,
                     "non_2xx": int(((status < 200) | (status >= 300)).sum()), "5xx": int((status >= 500).sum()),
                     "errors": int((status == 0).sum())}
    out["all"]["error_kinds"] = sorted({e for *_, e in records if e})[:5]
    return out


def print_table(stats: dict[str, Any]) -> None:
    print(f"  {'endpoint':<16} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'KiB':>6} {'non-2xx':>7} {'5xx':>4} {'conn. errors':>12}")
    for what, s in stats.items():
        print(f"  {what:<16} {s['requests']:>8} {s['per_s']:>7.1f} {s['p50_ms']:>8.1f} {s['p99_ms']:>8.1f} "
              f"{s['max_ms']:>8.1f} {s['kib']:>6.1f} {s['non_2xx']:>7} {s['5xx']:>4} {s['errors']:>12}")
    for kind in stats["all"]["error_kinds"]:
        print(f"  connection error: {kind}")


def scenario_c(url: str, job_id: str, renders: int) -> dict[str, Any]:
    """/health latency idle, then while ``renders`` different heatmaps are asked for at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def probe(stop: threading.Event, out: list[float]) -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            while not stop.is_set():
                t = time.perf_counter()
                c.get("/health")
                out.append((time.perf_counter() - t) * 1e3)
                time.sleep(0.05)

    def render(i: int) -> int:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300) as c:
            return c.get(f"/jobs/{job_id}/plots/heatmap.png", params={"max_points": 1500 + i}).status_code

    idle: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(stop, idle))
    prober.start()
    time.sleep(3)
    stop.set()
    prober.join()
    busy: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(stop, busy))
    prober.start()
    t = time.perf_counter()
    with ThreadPoolExecutor(renders) as pool:
        codes = list(pool.map(render, range(renders)))
    seconds = time.perf_counter() - t
    stop.set()
    prober.join()

    def pct(xs: list[float]) -> dict[str, float]:
        return {"p50_ms": float(np.percentile(xs, 50)), "p95_ms": float(np.percentile(xs, 95)), "max_ms": max(xs),
                "n": len(xs)}

    return {"idle": pct(idle), "busy": pct(busy), "rendered": codes.count(200), "refused_503": codes.count(503),
            "other": len(codes) - codes.count(200) - codes.count(503), "seconds": seconds}


# -------------------------------------------------------------------------------------------- main


def wait_training(client: httpx.Client, job_id: str, timeout: float = 180) -> dict[str, Any]:
    """The job once it runs and has reported a step (its process has started and trains)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["state"] == "running" and (job["progress"] or {}).get("step", 0) > 0:
            return job
        if job["state"] not in ("queued", "running"):
            raise RuntimeError(f"the training job ended before the load: {job['state']} {job['message']}")
        time.sleep(0.5)
    raise RuntimeError(f"the training job did not start training within {timeout} s")


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    t = time.perf_counter()
    job_id = seed_finished_job(f"sqlite:///{tmp / 'deepgrad.db'}")
    print(f"# seeded job {job_id} (100 epochs x 391 steps x 20 layers) in {time.perf_counter() - t:.1f} s", flush=True)
    server = Server(tmp, {"DEEPGRAD_MAX_QUEUED": str(args.posts + 100)})
    server.start()
    print(f"# server idle after {server.settle():.1f} s (its start-up work is not measured)", flush=True)
    res: dict[str, Any] = {"seeded_job": job_id}
    try:
        cpu0, own0 = server.cpu_seconds(), time.process_time()
        records, seconds = scenario_a(server.url, job_id, args.clients, args.duration)
        res["A"] = {"stats": summarize(records, seconds), "seconds": seconds,
                    "server_cpu_s": server.cpu_seconds() - cpu0, "client_cpu_s": time.process_time() - own0}
        res["C"] = scenario_c(server.url, job_id, args.renders)
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as c:
            train_id = c.post("/jobs", json=TRAINING).raise_for_status().json()["id"]
            before = wait_training(c, train_id)
            cpu0, own0 = server.cpu_seconds(), time.process_time()
            records, ids, seconds = scenario_b(server.url, job_id, args.posts, args.gets, args.seed)
            after = c.get(f"/jobs/{train_id}").raise_for_status().json()
            res["B"] = {"stats": summarize(records, seconds), "seconds": seconds, "created": len(ids),
                        "unique_ids": len(set(ids)) == len(ids),
                        "server_cpu_s": server.cpu_seconds() - cpu0, "client_cpu_s": time.process_time() - own0,
                        "training": {"state_after": after["state"], "step_before": before["progress"]["step"],
                                     "step_after": (after["progress"] or {}).get("step")}}
            res["cancelled"] = sum(c.post(f"/jobs/{jid}/cancel").status_code == 202 for jid in [train_id, *ids])
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    res["server_log_errors"] = sum(line.startswith(("ERROR:", "Traceback")) or " ERROR " in line
                                   for line in log.splitlines())
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    head = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "hardware": hardware(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "httpx": httpx.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    print(f"# API under load  {head['date']}")
    print(f"# hardware: {head['hardware']}  Python {head['python']}  SQLite {head['sqlite']}  httpx {head['httpx']}  "
          f"load average: {head['load_average_at_start']}")
    with tempfile.TemporaryDirectory(prefix="deepgrad-bench-api-") as tmp:
        res = run(args, Path(tmp))
    a, b = res["A"], res["B"]
    print(f"A: {args.clients} clients, closed loop, {a['seconds']:.1f} s (server CPU {a['server_cpu_s']:.1f} s, "
          f"load generator CPU {a['client_cpu_s']:.1f} s)")
    print_table(a["stats"])
    c = res["C"]
    print(f"C: GET /health every 50 ms, idle and while {args.renders} uncached heatmaps are asked for at once "
          f"({c['rendered']} rendered, {c['refused_503']} refused with 503, {c['other']} other, "
          f"in {c['seconds']:.1f} s)")
    for label in ("idle", "busy"):
        h = c[label]
        print(f"  /health {label:<5} p50 {h['p50_ms']:7.1f} ms  p95 {h['p95_ms']:7.1f} ms  max {h['max_ms']:7.1f} ms "
              f"({h['n']} probes)")
    print(f"  ratio busy / idle: p95 {c['busy']['p95_ms'] / c['idle']['p95_ms']:.1f}x, max "
          f"{c['busy']['max_ms'] / c['idle']['max_ms']:.1f}x")
    tr = b["training"]
    print(f"B: {args.posts} clients, {args.posts} POST /jobs + {args.gets} GETs, {b['seconds']:.1f} s, while a "
          f"job trains (steps {tr['step_before']} -> {tr['step_after']}, {tr['state_after']}; server CPU "
          f"{b['server_cpu_s']:.1f} s, load generator CPU {b['client_cpu_s']:.1f} s)")
    print_table(b["stats"])
    p99 = b["stats"]["all"]["p99_ms"]
    checks = {"no 5xx (A and B)": b["stats"]["all"]["5xx"] == 0 and a["stats"]["all"]["5xx"] == 0,
              f"every POST created a job ({b['created']}/{args.posts})": b["created"] == args.posts,
              "ids unique": b["unique_ids"], f"p99 {p99:.0f} ms <= {TARGET_P99_MS:.0f} ms": p99 <= TARGET_P99_MS,
              f"C: /health max {c['busy']['max_ms']:.0f} ms < 4000 ms while rendering": c["busy"]["max_ms"] < 4000}
    for name, ok in checks.items():
        print(f"{'' if name.startswith('C:') else 'B: '}{name}: {'PASS' if ok else 'FAIL'}")
    print(f"# cancelled afterwards: {res['cancelled']} jobs (the training one and B's); errors in the server log: "
          f"{res['server_log_errors']}; load average at end: {[round(x, 2) for x in os.getloadavg()]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**head, "results": res, "checks": checks}, f, indent=2)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
