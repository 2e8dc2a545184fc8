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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from deepgrad_core.spec import ExperimentSpec

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
    try:
        from deepgrad_core.local_run import run  # torch and the rest of the server extra
    except ImportError as err:
        if err.name not in SERVER_EXTRA_MODULES:
            raise
        sys.stderr.write(f"deepgrad-train needs the server extra: pip install 'deepgrad[server]' "
                         f"({err.name} is not installed)\n")
        return 2
    # Progress and library messages go to stderr, through a handler that lives for this call only.
    handler, package = logging.StreamHandler(sys.stderr), logging.getLogger("deepgrad_core")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    try:
        return run(args)
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


def load_spec(path: Path, overrides: Sequence[str] = ()) -> ExperimentSpec:
    """Read a YAML/JSON spec, apply ``KEY.PATH=VALUE`` overrides, validate; model defaults filled in."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise CliError(f"cannot read spec {path}: {err}", 2) from err
    if not isinstance(data, dict):
        raise CliError(f"spec {path} must hold a mapping (model:, data:, train:, ...), got {type(data).__name__}", 2)
    for item in overrides:
        _apply_override(data, item)
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {_describe(e)}" for e in err.errors())
        raise CliError(f"invalid spec {path} ({err.error_count()} error(s)):\n{lines}", 2) from None


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise CliError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=0.01", 2)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise CliError(f"--set {item!r}: value is not valid YAML: {err}", 2) from err
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # a section left empty (`train:`) reads as None
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise CliError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section", 2)
    node[parts[-1]] = value


def _describe(error: dict[str, Any]) -> str:
    """One pydantic error as ``field.path: message``, naming the valid fields for an unknown one."""
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc) or "spec"
    if error["type"] == "extra_forbidden":
        parent: type[BaseModel] = ExperimentSpec
        for part in loc[:-1]:
            parent = parent.model_fields[part].annotation
        return f"{where}: unknown field (valid here: {', '.join(parent.model_fields)})"
    msg = error["msg"].removeprefix("Value error, ")
    if error["type"] not in ("value_error", "missing"):
        msg += f" (got {error.get('input')!r})"
    return f"{where}: {msg}"


if __name__ == "__main__":
    # Run the package's copy of this module, the one deepgrad_core.local_run imports: a second
    # copy (this __main__) would define a second CliError class that main could not catch.
    from deepgrad_core.cli import main as package_main

    sys.exit(package_main())
