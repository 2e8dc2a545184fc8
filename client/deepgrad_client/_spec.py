"""Spec files (JSON or YAML) and ``key.path=value`` overrides, as plain dicts.

The client never validates a spec itself (that would need ``deepgrad_core``): the server does, and its
422 message says which field is wrong.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ._exceptions import InputError

SPEC_SUFFIXES = (".json", ".yaml", ".yml")


def load_spec(path: str | Path) -> dict[str, Any]:
    """A spec file's mapping: ``.json`` as JSON, ``.yaml``/``.yml`` as YAML."""
    path = Path(path)
    if path.suffix.lower() not in SPEC_SUFFIXES:
        raise InputError(f"{path}: a spec file ends in .json, .yaml or .yml")
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read spec file {path}: {err.strerror}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InputError(f"spec file {path} does not parse: {err}") from None
    if not isinstance(data, dict):
        raise InputError(f"spec file {path} must hold a mapping (model:, data:, train:, ...), "
                        f"not {type(data).__name__}")
    return data


def apply_overrides(spec: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``spec`` with each ``key.path=value`` set; values parse as YAML scalars.

    ``train.lr=0.01`` sets a float, ``model.batch_norm=true`` a bool, ``train.grad_clip=null`` None,
    ``model.arch=vgg16`` a string. Missing sections are created.
    """
    spec = copy.deepcopy(spec)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise InputError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=0.01")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise InputError(f"--set {item!r}: value is not valid YAML: {err}") from None
        node = spec
        for i, part in enumerate(parts[:-1]):
            if node.get(part) is None:  # a section left empty in YAML (`train:`) reads as None
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node[parts[-1]] = value
    return spec
