"""Estimated against measured memory of real training runs, side by side (the server refuses jobs by the estimate).

Each case runs in its own process: load the data, build the model, train a few steps as a job does (tracker,
optimizer, evaluation), then report the process's peak resident memory. The ratio measured / estimated must
stay below 1 (the estimate is what a job may not exceed) and not far below it (or fitting jobs are refused).

    python bench/memory_estimate.py            # CPU: a spread of models, widths and batch sizes
    python bench/memory_estimate.py --quick    # three cases
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import hardware  # noqa: E402

CASES: list[dict[str, Any]] = [
    {"model": {"arch": "resnet18", "width": 0.5}, "train": {"batch_size": 128}},
    {"model": {"arch": "resnet18", "width": 1.0}, "train": {"batch_size": 128}},
    {"model": {"arch": "resnet18", "width": 1.0}, "train": {"batch_size": 256, "optimizer": "adam", "lr": 1e-3}},
    {"model": {"arch": "vgg_deep", "width": 1.0}, "train": {"batch_size": 128}},
    {"model": {"arch": "vgg16", "width": 2.0}, "train": {"batch_size": 64}},
    {"model": {"arch": "resnet18", "width": 0.5}, "train": {"batch_size": 64},
     "data": {"name": "synthetic", "subset": 200, "image_size": 64}},
    {"model": {"arch": "vgg_deep", "width": 0.5, "bottleneck": True}, "train": {"batch_size": 256}},
]


def _spec(case: dict[str, Any]) -> dict[str, Any]:
    data = {"name": "synthetic", "subset": 40, "test_subset": 10, **case.get("data", {})}
    return {"model": case["model"], "data": data, "train": {"epochs": 1, **case["train"]},
            "tracking": {"flush_every": 10}}


def _run(spec: dict[str, Any], out: Any) -> None:
    import torch

    from deepgrad_core.data import load_split
    from deepgrad_core.models import build_model
    from deepgrad_core.spec import ExperimentSpec
    from deepgrad_core.training import train

    torch.set_num_threads(2)
    spec = ExperimentSpec.model_validate(spec)
    splits = [load_split(spec.data, s, in_channels=spec.model.in_channels) for s in ("train", "test")]
    start = time.perf_counter()
    train(build_model(spec.model), spec, device="cpu", train_data=splits[0], test_data=splits[1])
    out.put((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - start))


def measure(spec: dict[str, Any]) -> tuple[int, float]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(spec, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    from deepgrad_core.analysis.memory import estimate_memory
    from deepgrad_core.spec import ExperimentSpec

    cases = CASES[:3] if args.quick else CASES
    print(f"# {hardware()}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"{'case':<58} {'estimate MiB':>12} {'peak RSS MiB':>12} {'ratio':>6}")
    rows = []
    for case in cases:
        spec = _spec(case)
        estimate = estimate_memory(ExperimentSpec.model_validate(spec), "cpu")
        peak, seconds = measure(spec)
        ratio = peak / estimate.host_bytes
        label = json.dumps({**case["model"], **case["train"], **case.get("data", {})}, separators=(",", ":"))
        print(f"{label[:58]:<58} {estimate.host_bytes / 2**20:12.0f} {peak / 2**20:12.0f} {ratio:6.2f}")
        rows.append((ratio, estimate.parts))
    ratios = [r for r, _ in rows]
    print(f"measured / estimated: min {min(ratios):.2f}, max {max(ratios):.2f} (the estimate must stay above: < 1)")


if __name__ == "__main__":
    main()
