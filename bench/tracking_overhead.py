"""What does gradient tracking cost? Images/s of a training step, tracked and untracked, side by side.

For each architecture, three configurations are timed INTERLEAVED in one run, so slow drifts of the
machine (clock, other processes) hit all three alike:

* ``none``: forward, backward, SGD step, no tracker;
* ``fused``: the default ``GradientTracker`` (mode "fused", activation_every=10, flush_every=50);
* ``full_backward_hook``: the original study's method (a full backward hook and ``.item()`` per
  layer per step);
* ``hist1``: ``fused`` plus a weight-gradient histogram of every layer at EVERY step. The default records
  one every ``tracking.histogram_every`` = 100 steps, so its cost is (cost of ``hist1`` over ``fused``) / 100:
  the report prints that estimate (a round of 100+ steps per configuration would be too slow on a CPU).

Each round runs ``--steps`` steps of every configuration in turn (the order rotates by one each
round); the first ``--warmup-rounds`` rounds are discarded; the reported figure per configuration is
the median of its per-round images/s. Every round starts from the same weights and optimizer state
(restored outside the timed region), so the three configurations do the same arithmetic and only
the tracking differs. Batches are real-shaped CIFAR batches ([B, 3, 32, 32], normalized) from the
synthetic data set, prepared on the device before timing: data loading is not measured.

    python bench/tracking_overhead.py                          # CPU defaults: a few minutes on 2 cores
    python bench/tracking_overhead.py --device cuda --json overhead.json
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from typing import Any

import torch
from _common import hardware as common_hardware
from torch import Tensor, nn

from deepgrad_core.data import load_split
from deepgrad_core.device import choose_device
from deepgrad_core.loader import DeviceLoader
from deepgrad_core.models import build_model
from deepgrad_core.spec import ARCHS, DataSpec
from deepgrad_core.tracker import GradientTracker

# Tracker settings per configuration; None: no tracker at all.
CONFIGS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "fused": {"mode": "fused", "activation_every": 10, "flush_every": 50},
    "full_backward_hook": {"mode": "full_backward_hook"},
    "hist1": {"mode": "fused", "activation_every": 10, "flush_every": 50, "histogram_every": 1},
}
HISTOGRAM_EVERY = 100  # tracking.histogram_every's default
# SGD as the training loop's default TrainSpec runs it (lr is irrelevant to speed, kept small).
SGD = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
# Device-dependent defaults: a full-width model on a GPU, a small one on a few CPU cores.
DEFAULTS = {"cuda": {"width": 1.0, "batch_size": 128, "steps": 50, "rounds": 8},
            "cpu": {"width": 0.25, "batch_size": 32, "steps": 10, "rounds": 12}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=["vgg16", "vgg_deep", "resnet18"])
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present, else CPU)")
    p.add_argument("--width", type=float, default=None, help="channel multiplier (default 1.0 CUDA, 0.25 CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 32 on CPU")
    p.add_argument("--steps", type=int, default=None,
                   help="steps per configuration per round; keep it a multiple of activation_every=10 "
                        "(default 50 on CUDA, 10 on CPU)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 8 on CUDA, 12 on CPU)")
    p.add_argument("--warmup-rounds", type=int, default=1, help="rounds run first and discarded")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    try:
        args.device = choose_device(args.device)
    except (ValueError, RuntimeError) as e:
        p.error(str(e))
    for name, value in DEFAULTS["cuda" if args.device.type == "cuda" else "cpu"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if min(args.batch_size, args.steps, args.rounds) < 1 or args.warmup_rounds < 0 or args.width <= 0:
        p.error("--batch-size, --steps and --rounds must be >= 1, --warmup-rounds >= 0, --width > 0")
    return args


# ------------------------------------------------------------------------------------- environment


def hardware(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else common_hardware()


def header(args: argparse.Namespace) -> dict[str, Any]:
    """Everything needed to read (and rerun) the numbers: hardware, versions, exact settings."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": hardware(args.device), "device": str(args.device), "torch": torch.__version__,
        "cuda": torch.version.cuda if args.device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "load_average_at_start": _load_average(),
        "settings": {"archs": args.archs, "width": args.width, "batch_size": args.batch_size,
                     "steps_per_round": args.steps, "rounds": args.rounds, "warmup_rounds": args.warmup_rounds,
                     "precision": args.precision, "optimizer": {"name": "sgd", **SGD},
                     "data": "synthetic, [B, 3, 32, 32], prepared on the device", "configs": CONFIGS},
    }


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


# ------------------------------------------------------------------------------------------ timing


def make_batches(batch_size: int, device: torch.device, count: int = 4) -> list[tuple[Tensor, Tensor]]:
    """A few normalized synthetic CIFAR-shaped batches on the device, cycled through by every round."""
    per_class = -(-batch_size * count // 10)  # enough images for `count` full batches
    split = load_split(DataSpec(name="synthetic", subset=per_class, augment=False), "train")
    loader = DeviceLoader(split, batch_size, device=device, train=True, augment=False)
    return list(loader.epoch(0))[:count]


def _sync(device: torch.device) -> None:
    # CUDA kernels run asynchronously: time only what has finished. The CPU needs no sync.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, tracker: GradientTracker | None,
               step: int, batch: tuple[Tensor, Tensor], autocast: Callable) -> None:
    """One step as ``deepgrad_core.training.loop`` runs it (fp32/bf16: no GradScaler)."""
    x, y = batch
    if tracker is not None:
        tracker.start_step(step)
    with autocast():
        loss = nn.functional.cross_entropy(model(x).float(), y)
    loss.backward()
    if tracker is not None:
        tracker.record_step()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_round(model: nn.Module, optimizer: torch.optim.Optimizer, tracker: GradientTracker | None,
               first_step: int, steps: int, batches: list[tuple[Tensor, Tensor]], autocast: Callable) -> float:
    """Seconds for ``steps`` training steps, hooks attached for the round only."""
    device = batches[0][0].device
    with tracker if tracker is not None else nullcontext():
        _sync(device)
        start = time.perf_counter()
        for i in range(steps):
            train_step(model, optimizer, tracker, first_step + i, batches[i % len(batches)], autocast)
        _sync(device)
        return time.perf_counter() - start


def bench_arch(arch: str, args: argparse.Namespace, batches: list[tuple[Tensor, Tensor]]) -> dict[str, list[float]]:
    """Per-round images/s of every configuration for one architecture (warm-up rounds dropped)."""
    model = build_model({"arch": arch, "width": args.width}).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), **SGD)
    trackers = {name: GradientTracker(model, **opts) if opts is not None else None for name, opts in CONFIGS.items()}
    autocast = (partial(torch.autocast, args.device.type, dtype=torch.bfloat16)
                if args.precision == "bf16" else nullcontext)
    train_step(model, optimizer, None, 0, batches[0], autocast)  # creates momentum buffers before the snapshot
    snapshot = copy.deepcopy((model.state_dict(), optimizer.state_dict()))
    names, steps = list(CONFIGS), args.steps
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.warmup_rounds + args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no configuration always goes first
        for name in order:
            model.load_state_dict(snapshot[0])
            optimizer.load_state_dict(snapshot[1])
            gc.collect()
            # Each tracker keeps its own global step count, so every round of `steps` (a multiple of
            # activation_every) holds the same share of sampled steps and flushes as a long run.
            seconds = time_round(model, optimizer, trackers[name], r * steps, steps, batches, autocast)
            if r >= args.warmup_rounds:
                rates[name].append(steps * args.batch_size / seconds)
    return rates


# ----------------------------------------------------------------------------------------- report


def summarize(rates: dict[str, list[float]]) -> dict[str, Any]:
    """Median and best images/s per configuration, their ratios to ``none``, and the spread of the
    per-round ratios. Other processes only ever slow a round down, so on a shared machine the best
    round is the least disturbed one: when the median ratios and the best ratios disagree, suspect noise.
    """
    base = rates["none"]
    out: dict[str, Any] = {"images_per_s": {n: statistics.median(v) for n, v in rates.items()},
                           "best_images_per_s": {n: max(v) for n, v in rates.items()},
                           "rounds_images_per_s": rates, "ratio": {}, "best_ratio": {}, "round_ratio_range": {}}
    for name in list(rates)[1:]:
        out["ratio"][name] = out["images_per_s"][name] / out["images_per_s"]["none"]
        out["best_ratio"][name] = out["best_images_per_s"][name] / out["best_images_per_s"]["none"]
        paired = [t / b for t, b in zip(rates[name], base, strict=True)]  # same round: same machine state
        out["round_ratio_range"][name] = [min(paired), max(paired)]
    return out


def print_header(head: dict[str, Any]) -> None:
    s = head["settings"]
    print(f"# gradient tracking overhead  {head['date']}")
    print(f"# hardware: {head['hardware']}  device: {head['device']}  torch {head['torch']}  "
          f"threads: {head['threads']}  load average: {head['load_average_at_start']}")
    print(f"# width {s['width']}  batch {s['batch_size']}  {s['steps_per_round']} steps/round  "
          f"{s['rounds']} rounds (+{s['warmup_rounds']} warm-up)  {s['precision']}  "
          f"SGD(lr={SGD['lr']}, momentum={SGD['momentum']}, weight_decay={SGD['weight_decay']})")
    print("# b = fused (activation_every=10, flush_every=50), c = full_backward_hook (original method), "
          "d = fused + histograms at every step")
    print(f"# hist@{HISTOGRAM_EVERY}: the default histograms' extra time per step over fused, (b/d - 1) / "
          f"{HISTOGRAM_EVERY}")
    print("# images/s: median over rounds; ratio: of the medians; best: of the fastest rounds; "
          "[min-max]: per-round ratio to 'none' in the same round")


def print_row(arch: str, summary: dict[str, Any]) -> None:
    ips, spread = summary["images_per_s"], summary["round_ratio_range"]
    cells = [f"{arch:<9}"] + [f"{ips[n]:>9.1f}" for n in CONFIGS]
    for name in ("fused", "full_backward_hook", "hist1"):
        lo, hi = spread[name]
        cells.append(f"{summary['ratio'][name]:>5.3f} {summary['best_ratio'][name]:>5.3f} [{lo:.2f}-{hi:.2f}]")
    cells.append(f"{100 * summary['histogram_overhead']:>6.2f}%")
    print("  ".join(cells), flush=True)


def histogram_overhead(summary: dict[str, Any]) -> float:
    """Extra time per step of the default histograms (every HISTOGRAM_EVERY steps) over ``fused``, as a fraction."""
    ips = summary["images_per_s"]
    return (ips["fused"] / ips["hist1"] - 1) / HISTOGRAM_EVERY


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    head = header(args)
    print_header(head)
    print(f"{'arch':<9}  {'a: none':>9}  {'b: fused':>9}  {'c: fbh':>9}  {'d: hist1':>9}  {'b/a  best':<22}  "
          f"{'c/a  best':<22}  {'d/a  best':<22}  hist@{HISTOGRAM_EVERY}")
    batches = make_batches(args.batch_size, args.device)
    results = {}
    for arch in args.archs:
        results[arch] = summarize(bench_arch(arch, args, batches))
        results[arch]["histogram_overhead"] = histogram_overhead(results[arch])
        print_row(arch, results[arch])
    head["load_average_at_end"] = _load_average()
    print(f"# load average at end: {head['load_average_at_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**head, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
