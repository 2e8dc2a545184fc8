"""How long does a figure take? Median ms per plot kind for a 100-epoch-sized job, uncached.

The job is synthetic but shaped like a real ResNet-18 run on CIFAR-10 at batch 128: 20 tracked
layers, 390 steps per epoch x 100 epochs = 39,000 steps of weight-gradient norms, activation
norms every 10th step (3,900 records), the whole-model norm at every step, 100 epochs of metrics,
a cost report and 64 first-layer 3x3 RGB filters. Norms fall with depth toward the input (a
vanishing-gradient run) and carry a few NaN/inf, so masking is exercised.

Each kind is timed end to end as the server serves it: ``render_job`` (masking, smoothing,
downsampling to ``--max-points``, building the figure) plus ``to_png``, split into the two.
Every repetition renders every kind once, in turn, after one warm-up round that is discarded.
The comparison kinds compare three such jobs. The issue's target is <= 300 ms per kind.

    python bench/plots.py                      # ~1 min on 2 CPU cores
    python bench/plots.py --reps 9 --json plots.json
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import matplotlib
import numpy as np

from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import COMPARE_KINDS, JOB_KINDS, JobData, render_compare, render_job, to_png

TARGET_MS = 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--steps-per-epoch", type=int, default=390)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--activation-every", type=int, default=10)
    p.add_argument("--max-points", type=int, default=2000, help="render_job's max_points (its default: 2000)")
    p.add_argument("--smooth", type=int, default=0, help="render_job's smooth window (default 0: off)")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per kind")
    p.add_argument("--json", metavar="PATH", help="also write the settings and timings as JSON to PATH")
    return p.parse_args(argv)


def synthetic_job(name: str, *, epochs: int, steps_per_epoch: int, layers: int, activation_every: int,
                  seed: int = 0) -> JobData:
    """A vanishing-gradient run of the given size (see the module docstring)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(epochs * steps_per_epoch, dtype=np.int64)
    names = tuple(f"conv{i + 1}" for i in range(layers - 1)) + ("fc1",)
    per_layer = 10.0 ** (0.3 * (np.arange(layers) - (layers - 1)))  # 10x smaller every ~3 layers toward the input
    decay = 0.3 + np.exp(-steps / (0.3 * len(steps)))[:, None]
    values = (per_layer * decay * rng.lognormal(0.0, 0.4, (len(steps), layers))).astype(np.float32)
    values[rng.integers(0, len(steps), 5), rng.integers(0, layers, 5)] = np.nan
    values[rng.integers(0, len(steps), 2)] = np.inf
    act = slice(None, None, activation_every)
    history = [{"epoch": e, "train_loss": 2.3 * np.exp(-e / 20), "test_loss": 2.3 * np.exp(-e / 25) + 0.2,
                "train_acc": 1 - 0.9 * np.exp(-e / 15), "test_acc": 0.92 - 0.82 * np.exp(-e / 15), "lr": 0.05,
                "seconds": 20.0, "images_per_sec": 2500.0} for e in range(epochs)]
    cost = {"total_params": 11_173_962, "flops_per_image": 1_112_000_000,
            "layers": [{"name": n, "path": f"layer.{i}", "kind": "conv", "params": int(1728 * 2 ** (i // 5)),
                        "flops": int(3.5e7 * (1 + i % 4)), "output_shape": [64, 32, 32]} for i, n in enumerate(names)]}
    return JobData(
        name=name, steps_per_epoch=steps_per_epoch, history=history, cost=cost,
        layers=[{"name": n, "path": f"layer.{i}", "kind": "linear" if n.startswith("fc") else "conv", "depth": i}
                for i, n in enumerate(names)],
        series={"weight": NormBlock("weight", steps, names, values),
                "activation": NormBlock("activation", steps[act], names, values[act] * 4),
                "global": NormBlock("global", steps, ("global",),
                                    np.linalg.norm(np.nan_to_num(values, posinf=0), axis=1, keepdims=True))},
        filters=rng.random((64, 3, 3, 3), dtype=np.float32))


def time_call(render: Callable[[], object]) -> tuple[float, float]:
    """(ms to build the figure, ms to encode it as PNG).

    The garbage of earlier calls is collected first, untimed: a figure is a web of reference
    cycles that only the cyclic collector frees, and without this one kind would keep paying for
    the full collections that all the others' garbage triggers (about +150 ms each, more once
    torch's objects are in the process).
    """
    gc.collect()
    start = time.perf_counter()
    fig = render()
    built = time.perf_counter()
    to_png(fig)
    return (built - start) * 1e3, (time.perf_counter() - built) * 1e3


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    size = {"epochs": args.epochs, "steps_per_epoch": args.steps_per_epoch, "layers": args.layers,
            "activation_every": args.activation_every}
    jobs = [synthetic_job(f"job{i}", seed=i, **size) for i in range(3)]
    opts = {"max_points": args.max_points, "smooth": args.smooth}
    cases: dict[str, Callable[[], object]] = {
        kind: (lambda k=kind: render_job(k, jobs[0], **opts)) for kind in JOB_KINDS}
    cases["norms activation"] = lambda: render_job("norms", jobs[0], norm_kind="activation", **opts)
    cases["heatmap activation"] = lambda: render_job("heatmap", jobs[0], norm_kind="activation", **opts)
    cases.update({f"compare {kind}": (lambda k=kind: render_compare(k, jobs)) for kind in COMPARE_KINDS})

    header = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
              "machine": platform.machine(), "processor": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(), "matplotlib": matplotlib.__version__,
              "numpy": np.__version__, "job": size, **opts, "reps": args.reps}
    print(json.dumps(header))
    for render in cases.values():  # warm-up: imports, font cache, first-use allocations
        time_call(render)
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.reps):
        for name, render in cases.items():
            timings[name].append(time_call(render))
    header["loadavg_end"] = os.getloadavg()

    print(f"\n{'kind':<20} {'render ms':>10} {'png ms':>8} {'total ms':>9}  target {TARGET_MS:.0f} ms")
    rows = {}
    for name, runs in timings.items():
        build, png = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        total = statistics.median(r[0] + r[1] for r in runs)
        rows[name] = {"render_ms": build, "png_ms": png, "total_ms": total, "runs": runs}
        print(f"{name:<20} {build:>10.0f} {png:>8.0f} {total:>9.0f}  {'ok' if total <= TARGET_MS else 'OVER'}")
    print(f"\nload average at start {header['loadavg_start']}, at end {header['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
