"""The torch half of ``deepgrad-train``: run one experiment here and write its output folder.

``deepgrad_core.cli`` parses the arguments and imports this module only then, so the command
can say what is missing on a client-only install instead of failing on ``import torch``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepgrad_core.analysis import cost_report, first_layer_filters
from deepgrad_core.cli import CliError, load_spec
from deepgrad_core.data import DataError, ImageSplit, default_data_root, load_split
from deepgrad_core.device import choose_device
from deepgrad_core.models import build_model
from deepgrad_core.norms import NormBlock
from deepgrad_core.series import csv_header, csv_rows
from deepgrad_core.spec import ExperimentSpec
from deepgrad_core.strict_json import strict_json
from deepgrad_core.training import TrainResult, seed_everything, train
from deepgrad_core.training.checkpoint import CHECKPOINT_NAME

log = logging.getLogger("deepgrad_core.cli")

OUTPUTS = ("spec.json", "history.json", "result.json")
ARRAYS = ("filters.npy", "filters_init.npy")


def run(args: argparse.Namespace) -> int:
    """Run the experiment ``deepgrad-train``'s arguments describe; return the exit code."""
    spec = load_spec(args.spec, args.overrides)
    device = _device(args.device)
    train_data, test_data = _load_data(spec, args.data_root)
    out = args.out if args.out is not None else Path("runs") / args.spec.stem
    _prepare_out(out, spec, resume=args.resume)
    seed_everything(spec.seed)
    model = build_model(spec.model).to(device)
    cost = cost_report(model, spec.input_shape, measure_peak=device.type == "cuda")
    log.info("%s: %.2fM params, %.3f GFLOP/image (FLOPs = 2 x multiply-adds); %d train / %d test images on %s; "
             "writing to %s", spec.model.arch, cost.total_params / 1e6, cost.flops_per_image / 1e9, len(train_data),
             len(test_data), device, out)
    np.save(out / "filters_init.npy", first_layer_filters(model), allow_pickle=False)  # the seed's init, always
    result = _train(model, spec, device, train_data, test_data, out, resume=args.resume)
    np.save(out / "filters.npy", first_layer_filters(model), allow_pickle=False)
    report = _write_outputs(out, result, cost.to_dict())
    if args.plots:
        from deepgrad_core.plots.files import write_figures

        written = write_figures(out, out / "plots")
        log.info("wrote %d figures into %s", len(written), out / "plots")
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if args.json else summary_text(report, out))
    return _exit_code(result, out)


def _device(name: str | None) -> torch.device:
    try:
        return choose_device(name)
    except RuntimeError as err:  # torch.device("gpu"): not a device string at all
        raise CliError(f"--device {name!r}: {err}", 2) from err
    except ValueError as err:  # cuda requested on a machine without it
        raise CliError(str(err), 1) from err


def _load_data(spec: ExperimentSpec, root: Path | None) -> tuple[ImageSplit, ImageSplit]:
    """Both splits, loaded before anything is written so a missing data set leaves no output behind."""
    try:
        return tuple(load_split(spec.data, split, root=root, in_channels=spec.model.in_channels, seed=spec.seed)
                     for split in ("train", "test"))
    except DataError as err:
        raise CliError(f"{err}\n(data root: {root or default_data_root()}; change it with --data-root "
                       f"or $DEEPGRAD_DATA_ROOT)", 1) from err


def _prepare_out(out: Path, spec: ExperimentSpec, *, resume: bool) -> None:
    """Refuse to resume another spec's checkpoint; on a fresh start drop the previous run's files."""
    ckpt, spec_file = out / "checkpoint" / CHECKPOINT_NAME, out / "spec.json"
    resolved = spec.model_dump(mode="json")
    if resume and ckpt.exists() and (not spec_file.exists() or json.loads(spec_file.read_text()) != resolved):
        raise CliError(f"{out} holds a checkpoint of a different spec (see {spec_file}); pass --no-resume "
                       "to start over there, or choose another --out", 2)
    if not resume:
        for stale in [ckpt, *(out / name for name in (*OUTPUTS, *ARRAYS)), *out.glob("norms_*.csv"),
                      *out.glob("plots/*.png")]:
            stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(resolved, indent=2) + "\n")


def _train(model: torch.nn.Module, spec: ExperimentSpec, device: torch.device, train_data: ImageSplit,
           test_data: ImageSplit, out: Path, *, resume: bool) -> TrainResult:
    trained: list[dict[str, Any]] = []  # epochs run by this invocation (a resumed run skips the others)

    def on_epoch(m: dict[str, Any]) -> None:
        trained.append(m)
        log.info(f"epoch {m['epoch'] + 1}/{spec.train.epochs}  train loss {m['train_loss']:.4f} acc "
                 f"{m['train_acc']:6.1%}  test loss {m['test_loss']:.4f} acc {m['test_acc']:6.1%}  lr "
                 f"{m['lr']:.3g}  {m['images_per_sec']:.0f} img/s  {m['seconds']:.1f} s")

    with _cancel_on_sigint() as should_stop:
        result = train(model, spec, device=device, train_data=train_data, test_data=test_data, on_epoch=on_epoch,
                       should_stop=should_stop, checkpoint_dir=out / "checkpoint", resume=resume)
    if not trained and result.status == "succeeded":
        log.info("all %d epochs were already done (checkpoint in %s): nothing trained, final metrics "
                 "re-evaluated; pass --no-resume to train again", len(result.history), out / "checkpoint")
    return result


@contextmanager
def _cancel_on_sigint() -> Iterator[Callable[[], bool]]:
    """``should_stop`` for ``train``: a first Ctrl-C stops after the current step, a second at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield stop.is_set
        return

    def on_sigint(_signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("Ctrl-C: stopping after the current step (press again to abort at once)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_outputs(out: Path, result: TrainResult, cost: dict[str, Any]) -> dict[str, Any]:
    """Write history, norms and result files; return result.json's content."""
    norm_files = write_norms_csv(out, result.norms)
    report = strict_json({"status": result.status, "diverged_at_step": result.diverged_at_step,
              "epochs_completed": len(result.history), "final": result.final, "per_class": result.per_class,
              "confusion": result.confusion, "summary": result.summary, "environment": result.environment,
              "steps_per_epoch": result.steps_per_epoch, "layers": result.layers, "cost": cost,
              "spec": result.spec.model_dump(mode="json"),
              "files": [*OUTPUTS, *norm_files, "filters.npy", "filters_init.npy", f"checkpoint/{CHECKPOINT_NAME}"]})
    (out / "history.json").write_text(json.dumps(strict_json(result.history), indent=2) + "\n")
    (out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_norms_csv(out: Path, norms: dict[str, NormBlock | None]) -> list[str]:
    """``norms_<kind>.csv`` per recorded kind: ``step`` then one column per layer (nan/inf as such)."""
    written = []
    for kind, block in norms.items():
        path = out / f"norms_{kind}.csv"
        if block is None:
            path.unlink(missing_ok=True)  # a stale file from an earlier run would be misleading
            continue
        with path.open("w") as f:  # the same text the server's gradients.csv sends
            f.write(csv_header(block.layers))
            for i in range(0, len(block), 8192):
                f.write(csv_rows(block.steps[i:i + 8192], block.values[i:i + 8192]))
        written.append(path.name)
    return written


def summary_text(report: dict[str, Any], out: Path) -> str:
    """A few lines for a person: accuracy, the vanishing verdicts, where the files are."""
    spec, final, summary = report["spec"], report["final"], report["summary"]
    lines = [f"{spec['model']['arch']} on {spec['data']['name']}: {report['status']} after "
             f"{report['epochs_completed']}/{spec['train']['epochs']} epochs"]
    if final.get("test_acc") is not None:
        lines.append(f"  test accuracy      {final['test_acc']:.1%} (best {final['best_test_acc']:.1%} "
                     f"after epoch {final['best_epoch'] + 1})")
    for kind in ("weight", "activation"):
        s, label = summary.get(kind) or {}, f"{kind} grads"
        ratio = s.get("first_last_ratio")
        pair = f" ({s['first_layer']}/{s['last_layer']})" if s.get("first_layer") else ""
        source = "  <- the verdict" if summary.get("vanishing_source") == kind else ""
        lines.append(f"  {label:<18} no first/last-layer ratio recorded" if ratio is None else
                     f"  {label:<18} first/last-layer ratio{pair} {ratio:.2e}: "
                     f"{'VANISHING' if s['vanishing'] else 'not vanishing'} (threshold {s['fraction']:g}){source}")
    lines.append(f"  files              {out}/ ({', '.join(report['files'][:-1])})")
    if (out / "plots").is_dir():
        lines.append(f"  figures            {out / 'plots'}/ (again: deepgrad-plot {out} all)")
    return "\n".join(lines) + "\n"


def _exit_code(result: TrainResult, out: Path) -> int:
    if result.status == "diverged":
        sys.stderr.write(f"deepgrad-train: run diverged at step {result.diverged_at_step} (non-finite loss or "
                         "gradient norms); try a lower train.lr, train.grad_clip or fp32 precision\n")
        return 1
    if result.status == "cancelled":
        sys.stderr.write(f"deepgrad-train: stopped after {len(result.history)} complete epoch(s); results so "
                         f"far are in {out}; run the same command again to resume\n")
        return 130
    return 0
