"""How fast does the job store take and give back gradient norms? Values/s in, milliseconds out.

The job is synthetic but sized like a 100-epoch ResNet-18 run on CIFAR-10 at batch 128: 20 tracked
layers, 391 steps per epoch x 100 epochs = 39,100 steps of weight-gradient norms, plus activation
norms every 10th step. Everything goes through ``deepgrad_server.store`` on a real SQLite file
(WAL, the server's own ``Database``) in a temporary directory.

* **ingest**: the blocks a job process writes, in its order: the tracker flushes every
  ``flush_every`` steps and at every epoch end, one weight block and one activation block per flush,
  and the job process stores each block in its own write transaction (``store.append_norms`` inside
  ``db.writing()``). Timed end to end, commits included; the median of ``--rounds`` jobs.
* **read**: what ``GET /jobs/{id}/gradients`` does with the store (``jobdata.downsampled``): the series
  in pages of steps, each read in its own transaction and min/max downsampled to ``--max-points`` as it
  streams. The first read goes through a freshly opened ``Database`` (new connection, empty SQLite page
  cache; the OS file cache stays warm); then ``--repeat`` reads give the median and p95. JSON encoding
  and HTTP are not included (``bench/api.py`` measures those).
* **long series** (issue 11): a 2,000,000-step x 17-layer weight series (40 epochs at batch 1 on
  CIFAR-10), read by the streaming path and, side by side, the way reads worked before (the whole series
  loaded, then downsampled): time and peak RSS growth of one read, of four concurrent cold reads, and of
  the CSV export. Peak RSS is the kernel's high-water mark (``VmHWM``), reset before each read.

Targets: ingest >= 1,000,000 values/s; one layer-series downsampled to <= 2,000 points in <= 100 ms
(issue 3); a read of the 2M-step series <= 1 s with peak RSS growth <= 64 MiB (issue 11).

    python bench/store.py                       # ~2 min on 2 cores (the long series takes most of it)
    python bench/store.py --long-steps 0        # without the long series: ~10 s
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
from deepgrad_core.series import downsample
from deepgrad_server import jobdata, store
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
    p.add_argument("--long-steps", type=int, default=2_000_000, help="steps of the long series (0: skip it)")
    p.add_argument("--long-layers", type=int, default=17, help="its layers (VGG-Deep's convs: 17)")
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


def read(db: Database, job_id: str, cols: list[int], max_points: int) -> tuple[float, int]:
    """(ms, points) of one read as ``GET /jobs/{id}/gradients`` does it: streamed and downsampled."""
    t0 = time.perf_counter()
    _, steps, _ = jobdata.downsampled(db, job_id, "weight", cols, start=None, end=None, max_points=max_points)
    return (time.perf_counter() - t0) * 1e3, len(steps)


def read_whole(db: Database, job_id: str, cols: list[int], max_points: int) -> tuple[float, int]:
    """(ms, points) of a read as it was before issue 11: the whole series loaded, then downsampled."""
    t0 = time.perf_counter()
    with db.reading() as s:
        block = store.load_norms(s, job_id=job_id, kind="weight")
    steps, _ = downsample(block.steps, block.values[:, cols], max_points)
    return (time.perf_counter() - t0) * 1e3, len(steps)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_growth(fn: Any) -> tuple[float, Any]:
    """(MiB the process's peak RSS rose above its RSS before ``fn()``, what ``fn`` returned). The peak
    (VmHWM) is reset first through /proc/self/clear_refs (Linux)."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    out = fn()
    return (_status_kib("VmHWM") - before) / 1024, out


def p95(xs: list[float]) -> float:
    return float(np.percentile(xs, 95))


def bench_reads(url: str, job_id: str, cols: list[int], args: argparse.Namespace) -> dict[str, Any]:
    db = Database(url)  # fresh engine: the first read opens a connection with an empty page cache
    try:
        cold = read(db, job_id, cols, args.max_points)
        warm = [read(db, job_id, cols, args.max_points) for _ in range(args.repeat)]
    finally:
        db.dispose()
    totals = [a for a, _ in warm]
    return {"cold_ms": cold[0], "median_ms": statistics.median(totals), "p95_ms": p95(totals),
            "max_ms": max(totals), "points": cold[1]}


def _measure_reads(url: str, job_id: str, layers: int, max_points: int, label: str, threads: int) -> dict[str, Any]:
    """In a child: ``threads`` concurrent cold reads of the long series, the streamed or the whole-series way."""
    from concurrent.futures import ThreadPoolExecutor

    fn = read if label == "streamed" else read_whole
    db = Database(url)
    try:
        with ThreadPoolExecutor(threads) as pool:
            growth, results = peak_rss_growth(lambda: list(pool.map(
                lambda _: fn(db, job_id, list(range(layers)), max_points), range(threads))))
    finally:
        db.dispose()
    return {"ms": max(ms for ms, _ in results), "points": results[0][1], "peak_rss_growth_mib": growth}


def _measure_csv(url: str, job_id: str, names: tuple[str, ...]) -> dict[str, Any]:
    db = Database(url)
    try:
        t0 = time.perf_counter()
        growth, size = peak_rss_growth(lambda: sum(len(t) for t in jobdata.csv_text(db, job_id, "weight", names)))
        return {"seconds": time.perf_counter() - t0, "mib": size / 2**20, "peak_rss_growth_mib": growth}
    finally:
        db.dispose()


def _in_child(fn: Any, *args: Any) -> Any:
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def bench_long(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """The long series: ingest it, then each read path cold, side by side, with its peak RSS growth."""
    names, values = synthetic_series(args.long_steps, args.long_layers, seed=1)
    blocks = tracker_blocks(names, values, steps_per_epoch=50_000, flush_every=args.flush_every,
                            activation_every=0)
    del values
    db = Database(url)
    try:
        job_id = new_job(db, "long")
        seconds = ingest(db, job_id, blocks)
    finally:
        db.dispose()
    del blocks
    out: dict[str, Any] = {"steps": args.long_steps, "layers": args.long_layers, "ingest_s": seconds,
                           "stored_mib": args.long_steps * (args.long_layers * 4 + 8) / 2**20}
    # Each read in a fresh process: its peak RSS growth is the read's own, not the ingest's leftovers.
    for label in ("streamed", "whole"):
        out[label] = _in_child(_measure_reads, url, job_id, args.long_layers, args.max_points, label, 1)
        out[label]["four_concurrent_peak_rss_growth_mib"] = _in_child(
            _measure_reads, url, job_id, args.long_layers, args.max_points, label, 4)["peak_rss_growth_mib"]
    out["csv"] = _in_child(_measure_csv, url, job_id, names)
    return out


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
    if args.long_steps:
        results["long"] = bench_long(f"sqlite:///{tmp / 'long.db'}", args)
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
    if "long" in res:
        r = res["long"]
        print(f"# long series: {r['steps']:,} steps x {r['layers']} layers ({r['stored_mib']:.0f} MiB of steps and "
              f"values), ingested in {r['ingest_s']:.1f} s; every read cold, all layers -> <= {args.max_points} points")
        s, w = r["streamed"], r["whole"]
        passed = s["ms"] <= 1000 and s["peak_rss_growth_mib"] <= 64
        ok &= passed
        print(row.format("read, streamed (now): time / peak RSS growth",
                         f"{s['ms']:.0f} ms / {s['peak_rss_growth_mib']:.1f} MiB", "<= 1 s / 64 MiB", verdict(passed)))
        print(row.format("read, whole series (before): time / peak RSS growth",
                         f"{w['ms']:.0f} ms / {w['peak_rss_growth_mib']:.1f} MiB", "(side by side)", ""))
        rss_ratio = w["peak_rss_growth_mib"] / max(s["peak_rss_growth_mib"], 0.1)
        print(row.format("  ratio before / now: time, peak RSS growth", f"{w['ms'] / s['ms']:.2f}x, {rss_ratio:.0f}x",
                         "", ""))
        print(row.format("4 concurrent cold reads: peak RSS growth now / before",
                         f"{s['four_concurrent_peak_rss_growth_mib']:.1f} / "
                         f"{w['four_concurrent_peak_rss_growth_mib']:.1f} MiB", "", ""))
        c = r["csv"]
        print(row.format(f"CSV export, streamed: {c['mib']:.0f} MiB", f"{c['seconds']:.1f} s, peak RSS "
                         f"+{c['peak_rss_growth_mib']:.1f} MiB", "", ""))
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
