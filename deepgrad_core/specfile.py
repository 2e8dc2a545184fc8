"""Spec files (YAML or JSON) and ``KEY.PATH=VALUE`` overrides, read into a validated ``ExperimentSpec``.

No torch here: ``deepgrad-train`` reads and checks a spec before it imports anything heavy. The client has
its own reader (it imports nothing of ours); tests/test_spec_files.py holds the cases both must pass.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from deepgrad_core.spec import ExperimentSpec

SPEC_SUFFIXES = (".json", ".yaml", ".yml")


class SpecFileError(ValueError):
    """A spec file or override that cannot be used; the message says what and where."""


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentSpec:
    """Read a spec file, apply ``KEY.PATH=VALUE`` overrides and validate (family defaults filled in)."""
    data = apply_overrides(read_spec_file(path), overrides)
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {describe_error(e)}" for e in err.errors())
        raise SpecFileError(f"invalid spec {path} ({err.error_count()} error(s)):\n{lines}") from None


def read_spec_file(path: str | Path) -> dict[str, Any]:
    """A spec file's mapping, unvalidated: ``.json`` as JSON, ``.yaml``/``.yml`` as YAML."""
    path = Path(path)
    if path.suffix.lower() not in SPEC_SUFFIXES:
        raise SpecFileError(f"{path}: a spec file ends in .json, .yaml or .yml")
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecFileError(f"cannot read spec file {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as err:
        raise SpecFileError(f"spec file {path} does not parse: {err}") from None
    if not isinstance(data, dict):
        raise SpecFileError(f"spec file {path} must hold a mapping (model:, data:, train:, ...), "
                            f"not {type(data).__name__}")
    return data


def apply_overrides(spec: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``spec`` with each ``key.path=value`` set; values parse as YAML (``0.01``, ``true``, ``null``,
    ``[conv, linear]``, text); sections left out or empty are created."""
    spec = copy.deepcopy(spec)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise SpecFileError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=0.01")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise SpecFileError(f"--set {item!r}: value is not valid YAML: {err}") from None
        node = spec
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # a section left empty (`train:`) reads as None
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise SpecFileError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node[parts[-1]] = value
    return spec


def describe_error(error: dict[str, Any]) -> str:
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
