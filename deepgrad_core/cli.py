"""``deepgrad-train``: run one experiment from a spec file on this machine (no server).

    deepgrad-train specs/quickstart.yaml --set train.epochs=5 --out runs/qs5

Writes into ``--out`` (default ``runs/<spec file stem>``): ``spec.json`` (the resolved spec),
``history.json`` (per-epoch metrics), ``result.json`` (status, final metrics, per-class report,
confusion, vanishing summary, environment, layers, cost), ``norms_<kind>.csv`` (``step``, then one
column per tracked layer), ``filters.npy`` / ``filters_init.npy`` (the first conv's filters, learned and at
initialization), ``plots/<kind>.png`` with ``--plots``, and ``checkpoint/``, from which the same command resumes.
Exit codes: 0 succeeded; 1 the run failed (data missing, diverged, CUDA absent); 2 usage or spec
error; 130 interrupted by Ctrl-C (what was recorded is written; a re-run resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepgrad_core.specfile import SpecFileError, load_spec

log = logging.getLogger("deepgrad_core.cli")

# What the plain (client-only) install lacks; running needs them, parsing and validating a spec does not.
SERVER_EXTRA_MODULES = ("torch", "torchvision", "safetensors", "PIL")


class CliError(Exception):
    """``CliError(message, exit_code)``: a failure the user can act on, reported without a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``deepgrad-train``; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error: argparse has already said why
        return int(exc.code or 0)
    # Progress and library messages go to stderr, through a handler that lives for this call only.
    handler, package = logging.StreamHandler(sys.stderr), logging.getLogger("deepgrad_core")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        return _train(args)
    except CliError as err:
        message, code = err.args
        sys.stderr.write(f"deepgrad-train: error: {message}\n")
        return code
    except KeyboardInterrupt:
        sys.stderr.write("deepgrad-train: interrupted\n")
        return 130
    finally:
        package.removeHandler(handler)
        package.setLevel(level)


def _train(args: argparse.Namespace) -> int:
    """Read the spec, run it into the output folder, say how it went; return the exit code."""
    try:
        spec = load_spec(args.spec, args.overrides)
    except SpecFileError as err:
        raise CliError(str(err), 2) from None
    try:  # torch and the rest of the server extra
        from deepgrad_core.data import DataError, default_data_root
        from deepgrad_core.device import choose_device
        from deepgrad_core.local_run import run_local
        from deepgrad_core.training.checkpoint import CheckpointMismatch
    except ImportError as err:
        if err.name not in SERVER_EXTRA_MODULES:
            raise
        sys.stderr.write(f"deepgrad-train needs the server extra: pip install 'deepgrad[server]' ({err.name} is "
                         "not installed)\n")
        return 2
    try:
        device = choose_device(args.device)
    except RuntimeError as err:  # torch.device("gpu"): not a device string at all
        raise CliError(f"--device {args.device!r}: {err}", 2) from err
    except ValueError as err:  # cuda requested on a machine without it
        raise CliError(str(err), 1) from err
    out = args.out if args.out is not None else Path("runs") / args.spec.stem
    try:
        with _cancel_on_sigint() as should_stop:
            run = run_local(spec, out, data_root=args.data_root, device=device, resume=args.resume,
                            plots=args.plots, should_stop=should_stop)
    except DataError as err:
        raise CliError(f"{err}\n(data root: {args.data_root or default_data_root()}; change it with --data-root "
                       f"or $DEEPGRAD_DATA_ROOT)", 1) from err
    except CheckpointMismatch as err:
        raise CliError(f"{out} holds a checkpoint of a different spec (see {out / 'spec.json'}); pass "
                       "--no-resume to start over there, or choose another --out", 2) from err
    sys.stdout.write(json.dumps(run.report, indent=2) + "\n" if args.json else summary_text(run.report, out))
    result = run.result
    if result.status == "diverged":
        sys.stderr.write(f"deepgrad-train: run diverged at step {result.diverged_at_step} (non-finite loss or "
                         "gradient norms); try a lower train.lr, train.grad_clip or fp32 precision\n")
        return 1
    if result.status == "cancelled":
        sys.stderr.write(f"deepgrad-train: stopped after {len(result.history)} complete epoch(s); results so "
                         f"far are in {out}; run the same command again to resume\n")
        return 130
    return 0


@contextmanager
def _cancel_on_sigint() -> Iterator[Callable[[], bool]]:
    """``should_stop`` for the run: a first Ctrl-C stops after the current step, a second at once."""
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepgrad-train", description="Train one experiment from a spec "
                                "file (YAML or JSON) and record its per-layer gradient norms.")
    p.add_argument("spec", type=Path, help="ExperimentSpec file, e.g. specs/quickstart.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one spec field (value read as YAML: 0.01, true, null, text); repeatable")
    p.add_argument("--data-root", type=Path,
                   help="data sets folder (default $DEEPGRAD_DATA_ROOT, else ~/.deepgrad/data)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--out", type=Path, help="output folder (default runs/<spec file stem>)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore a checkpoint in --out")
    p.add_argument("--json", action="store_true", help="print result.json to stdout instead of a summary")
    p.add_argument("--plots", action="store_true", help="also draw every figure into <out>/plots/ "
                   "(later, from the folder: deepgrad-plot <out> all)")
    return p


if __name__ == "__main__":
    sys.exit(main())
