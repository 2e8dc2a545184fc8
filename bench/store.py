"""How fast does the job store take and give back gradient norms? Values/s in, milliseconds out.

The job is synthetic but sized like a 100-epoch ResNet-18 run on CIFAR-10 at batch 128: 20 tracked
layers, 391 steps per epoch x 100 epochs = 39,100 steps of weight-gradient norms, plus activation
norms every 10th step. Everything goes through ``deepgrad_server.store`` on a real SQLite file
(WAL, the server's own ``Database``) in a temporary directory.

* **ingest**: the blocks a job process writes, in its order: the tracker flushes every
  ``flush_every`` steps and at every epoch end, one weight block and one activation block per flush,
  and the job process stores each block in its own write transaction (``store.append_norms`` inside
  ``db.writing()``). Timed end to end, commits included; the median of ``--rounds`` jobs.
* **read**: what ``GET /jobs/{id}/gradients`` does with the store: ``store.load_norms`` of the whole
  weight series in one read transaction, then ``store.downsample`` of the chosen columns to
  ``--max-points``. The first read goes through a freshly opened ``Database`` (new connection,
  empty SQLite page cache; the OS file cache stays warm); then ``--repeat`` reads give the median
  and p95. JSON encoding and HTTP are not included (``bench/api.py`` measures those).

Targets (issue 3): ingest >= 1,000,000 values/s; one layer-series downsampled to <= 2,000 points
in <= 100 ms.

    python bench/store.py                       # ~10 s on 2 cores
    python bench/store.py --steps 78200 --repeat 50 --json store.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy
from _common import hardware

from deepgrad_core.norms import NormBlock
from deepgrad_server import store
from deepgrad_server.db import Database

INGEST_TARGET = 1_000_000  # values/s
READ_TARGET_MS = 100.0
CONTEXT_FLUSH_EVERY = 500  # larger blocks, reported for context


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=39_100, help="training steps (default: 100 epochs of 391)")
    p.add_argument("--steps-per-epoch", type=int, default=391, help="the tracker also flushes at epoch ends")
    p.add_argument("--layers", type=int, default=20, help="tracked layers (ResNet-18's convs + fc: 20)")
    p.add_argument("--activation-every", type=int, default=10)
    p.add_argument("--flush-every", type=int, default=50, help="the tracker's default, the target's setting")
    p.add_argument("--rounds", type=int, default=3, help="jobs ingested per setting (median reported)")
    p.add_argument("--repeat", type=int, default=20, help="timed reads per read case, after the cold one")
    p.add_argument("--max-points", type=int, default=2000)
    p.add_argument("--json", metavar="PATH", help="also write the settings and timings as JSON to PATH")
    args = p.parse_args(argv)
    if min(args.steps, args.steps_per_epoch, args.layers, args.flush_every, args.rounds, args.repeat) < 1:
        p.error("--steps, --steps-per-epoch, --layers, --flush-every, --rounds and --repeat must be >= 1")
    return args


# ------------------------------------------------------------------------------------------- data


def synthetic_series(steps: int, layers: int, seed: int = 0) -> tuple[tuple[str, ...], np.ndarray]:
    """Weight-gradient norms of a vanishing-gradient run: smaller toward the input, decaying, noisy."""
    rng = np.random.default_rng(seed)
    names = tuple(f"conv{i + 1}" for i in range(layers - 1)) + ("fc1",)
    per_layer = 10.0 ** (0.3 * (np.arange(layers) - (layers - 1)))
    decay = 0.3 + np.exp(-np.arange(steps) / (0.3 * steps))[:, None]
    return names, (per_layer * decay * rng.lognormal(0.0, 0.4, (steps, layers))).astype(np.float32)


def tracker_blocks(names: tuple[str, ...], values: np.ndarray, *, steps_per_epoch: int, flush_every: int,
                   activation_every: int) -> list[NormBlock]:
    """The blocks ``GradientTracker`` hands the job process, in order: per flush (every ``flush_every``
    steps and at each epoch end) one weight block and, if any step was sampled, one activation block."""
    blocks = []
    for epoch_start in range(0, len(values), steps_per_epoch):
        epoch_end = min(epoch_start + steps_per_epoch, len(values))
        for first in range(epoch_start, epoch_end, flush_every):
            steps = np.arange(first, min(first + flush_every, epoch_end), dtype=np.int64)
            blocks.append(NormBlock("weight", steps, names, values[steps]))
            sampled = steps[steps % activation_every == 0] if activation_every else steps[:0]
            if len(sampled):
                blocks.append(NormBlock("activation", sampled, names, values[sampled] * 4))
    return blocks


def new_job(db: Database, name: str) -> str:
    with db.writing() as s:
        job, _ = store.create_job(s, spec={"model": {"arch": "resnet18"}}, name=name, idempotency_key=None,
                                  max_queued=1_000_000)
    return job.id


# ----------------------------------------------------------------------------------------- timing


def ingest(db: Database, job_id: str, blocks: list[NormBlock]) -> float:
    """Seconds to store ``blocks`` as the job process does: one write transaction per block, the layer
    names checked once per kind (``registered``), then bare INSERTs."""
    registered: set[str] = set()
    start = time.perf_counter()
    for block in blocks:
        with db.writing() as s:
            store.append_norms(s, job_id=job_id, block=block, registered=registered)
    return time.perf_counter() - start


def read(db: Database, job_id: str, cols: list[int], max_points: int) -> tuple[float, float, int]:
    """(load ms, downsample ms, points) of one read as ``GET /jobs/{id}/gradients`` does it."""
    t0 = time.perf_counter()
    with db.reading() as s:
        block = store.load_norms(s, job_id=job_id, kind="weight")
    t1 = time.perf_counter()
    steps, _ = store.downsample(block.steps, block.values[:, cols], max_points)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, len(steps)


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


def bench_reads(url: str, job_id: str, cols: list[int], args: argparse.Namespace) -> dict[str, Any]:
    db = Database(url)  # fresh engine: the first read opens a connection with an empty page cache
    try:
        cold = read(db, job_id, cols, args.max_points)
        warm = [read(db, job_id, cols, args.max_points) for _ in range(args.repeat)]
    finally:
        db.dispose()
    totals = [a + b for a, b, _ in warm]
    return {"cold_ms": cold[0] + cold[1], "median_ms": statistics.median(totals), "p95_ms": p95(totals),
            "max_ms": max(totals), "load_median_ms": statistics.median(a for a, _, _ in warm),
            "downsample_median_ms": statistics.median(b for _, b, _ in warm), "points": cold[2]}


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    names, values = synthetic_series(args.steps, args.layers)
    url = f"sqlite:///{tmp / 'deepgrad.db'}"
    db = Database(url)
    results: dict[str, Any] = {"ingest": {}}
    try:
        for flush_every in dict.fromkeys((args.flush_every, CONTEXT_FLUSH_EVERY)):
            blocks = tracker_blocks(names, values, steps_per_epoch=args.steps_per_epoch, flush_every=flush_every,
                                    activation_every=args.activation_every)
            n_values = sum(b.values.size for b in blocks)
            job_ids = [new_job(db, f"ingest-{flush_every}-{r}") for r in range(args.rounds)]
            seconds = [ingest(db, job_id, blocks) for job_id in job_ids]
            results["ingest"][flush_every] = {
                "values": n_values, "blocks": len(blocks), "seconds": seconds,
                "values_per_s": n_values / statistics.median(seconds),
                "transactions_per_s": len(blocks) / statistics.median(seconds)}
            results.setdefault("read_job", job_ids[0])  # a job as the default tracker stores it
    finally:
        db.dispose()
    results["db_bytes"] = sum(f.stat().st_size for f in tmp.iterdir() if f.name.startswith("deepgrad.db"))
    job_id = results.pop("read_job")
    last = [args.layers - 1]  # conv5 or fc1: which column is read makes no difference to the store
    results["read_one"] = bench_reads(url, job_id, last, args)
    results["read_all"] = bench_reads(url, job_id, list(range(args.layers)), args)
    return results


# ----------------------------------------------------------------------------------------- report


def header(args: argparse.Namespace) -> dict[str, Any]:
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "hardware": hardware(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": sqlalchemy.__version__, "numpy": np.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "settings": {k: v for k, v in vars(args).items() if k != "json"}}


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(head: dict[str, Any], args: argparse.Namespace, res: dict[str, Any]) -> bool:
    print(f"# job store  {head['date']}")
    print(f"# hardware: {head['hardware']}  Python {head['python']}  SQLite {head['sqlite']}  "
          f"SQLAlchemy {head['sqlalchemy']}  numpy {head['numpy']}  load average: {head['load_average_at_start']}")
    epochs = -(-args.steps // args.steps_per_epoch)
    print(f"# job: {args.layers} layers x {args.steps:,} steps ({args.steps_per_epoch}/epoch, {epochs} epochs) "
          f"of weight norms + activation norms every {args.activation_every}th step, float32; "
          f"{args.rounds} ingest rounds, {args.repeat} warm reads per case")
    row = "{:<52} {:>36}  {:<16} {}"
    print(row.format("measure", "figure", "target", "result"))
    ok = True
    for flush_every, r in res["ingest"].items():
        main = flush_every == args.flush_every
        passed = r["values_per_s"] >= INGEST_TARGET
        ok &= passed or not main
        print(row.format(f"ingest, flush_every {flush_every}: {r['values']:,} values",
                         f"{r['values_per_s']:,.0f} values/s", ">= 1,000,000" if main else "(context)",
                         verdict(passed) if main else ""))
        print(row.format(f"  in {r['blocks']:,} write transactions", f"{r['transactions_per_s']:,.0f} txns/s", "", ""))
    for key, what, target in (("read_one", "1 layer", True), ("read_all", f"all {args.layers} layers", False)):
        r = res[key]
        passed = r["p95_ms"] <= READ_TARGET_MS and r["cold_ms"] <= READ_TARGET_MS
        ok &= passed or not target
        label = f"read {what} -> {r['points']:,} points"
        print(row.format(f"{label}, cold (first)", f"{r['cold_ms']:.1f} ms", "", ""))
        print(row.format(f"{label}, warm", f"median {r['median_ms']:.1f} / p95 {r['p95_ms']:.1f} ms",
                         "<= 100 ms" if target else "(context)", verdict(passed) if target else ""))
        print(row.format("  of which load_norms / downsample (median)",
                         f"{r['load_median_ms']:.1f} / {r['downsample_median_ms']:.1f} ms", "", ""))
    print(f"# database: {res['db_bytes'] / 2**20:.1f} MiB for {len(res['ingest']) * args.rounds} jobs "
          f"(WAL included); load average at end: {[round(x, 2) for x in os.getloadavg()]}")
    print(f"# overall: {verdict(ok)}")
    return ok


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    head = header(args)
    with tempfile.TemporaryDirectory(prefix="deepgrad-bench-store-") as tmp:
        results = run(args, Path(tmp))
    ok = report(head, args, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**head, "results": results, "pass": ok}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
