"""Studies: one base spec and the points that vary it, expanded into one validated spec per point.

A point is a set of overrides (``{"model.kernel_size": 5, "model.pooling": "avg"}``), given as a grid (every
combination of each key's values, in the order written) or as an explicit list. Every point keeps the base's
seed, so all jobs of a study see the same initial weights where their models match and the same data order: a
paired comparison. No torch here: the server validates a study with it before writing anything.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from deepgrad_core.spec import ExperimentSpec

FIXED_KEYS = ("seed",)  # what a point may not vary: it would break the pairing


class StudyError(ValueError):
    """A study that cannot be expanded; ``loc`` names where (``("grid", "model.kernel_size")``; empty: the whole
    study)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}" if loc else msg)
        self.loc, self.msg = loc, msg


@dataclass(frozen=True)
class StudyPoint:
    """One job of a study: what it varies, and its full validated spec."""

    overrides: dict[str, Any]
    spec: ExperimentSpec

    @property
    def label(self) -> str:
        return label(self.overrides)


def label(overrides: Mapping[str, Any]) -> str:
    """``kernel_size=5, pooling=avg``: the varied values, each by its last key part (``base`` for none)."""
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={_show(value)}" for key, value in overrides.items()) or "base"


def expand(base: Mapping[str, Any], *, grid: Mapping[str, Sequence[Any]] | None = None,
           points: Sequence[Mapping[str, Any]] | None = None, max_points: int | None = None) -> list[StudyPoint]:
    """One ``StudyPoint`` per grid combination or listed point, in order; ``StudyError`` naming the key on an
    unknown key, an empty list, a value the spec refuses, a fixed key (the seed) or more than ``max_points``."""
    if (grid is None) == (points is None):
        raise StudyError((), "give either grid (key -> list of values) or points (a list of overrides)")
    if grid is not None:
        if not grid:
            raise StudyError(("grid",), "grid is empty: give at least one key and its values")
        for key, values in grid.items():
            check_key(("grid", key), key)
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise StudyError(("grid", key), f"must be a list of values, got {type(values).__name__}")
            if not values:
                raise StudyError(("grid", key), "empty list: give at least one value")
        count = 1
        for values in grid.values():
            count *= len(values)
        _check_count(("grid",), count, max_points)
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
        locs = [("grid",)] * len(combos)
    else:
        if not points:
            raise StudyError(("points",), "points is empty: give at least one set of overrides")
        _check_count(("points",), len(points), max_points)
        combos, locs = [], []
        for i, point in enumerate(points):
            if not isinstance(point, Mapping):
                raise StudyError(("points", i), f"must be a mapping of key -> value, got {type(point).__name__}")
            for key in point:
                check_key(("points", i, key), key)
            combos.append(dict(point))
            locs.append(("points", i))
    return [StudyPoint(overrides=combo, spec=_point_spec(base, combo, loc)) for combo, loc in zip(combos, locs,
                                                                                                strict=True)]


def set_path(spec: dict[str, Any], key: str, value: Any) -> None:
    """Set ``spec[a][b] = value`` for ``key`` ``a.b``, creating sections left out or empty."""
    parts = key.split(".")
    node = spec
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def check_key(loc: tuple[str | int, ...], key: str) -> None:
    """The key must name a spec field (``model.kernel_size``), and not a fixed one."""
    if not isinstance(key, str) or not key:
        raise StudyError(loc, f"unknown key {key!r}: a key is a dotted spec field, e.g. model.kernel_size")
    if key in FIXED_KEYS:
        raise StudyError(loc, f"{key} is the same for every job of a study (a paired comparison); set it in the "
                              "base spec")
    model: type[BaseModel] | None = ExperimentSpec
    for depth, part in enumerate(key.split(".")):
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            where = ".".join(key.split(".")[:depth]) or "the spec"
            raise StudyError(loc, f"unknown key {key!r} (valid in {where}: {', '.join(fields) or 'none'})")
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    if model is not None:
        raise StudyError(loc, f"{key} is a section; vary one of its fields ({', '.join(model.model_fields)})")


def _check_count(loc: tuple[str | int, ...], count: int, most: int | None) -> None:
    if most is not None and count > most:
        raise StudyError(loc, f"{count} jobs is more than the {most} a study may have (DEEPGRAD_MAX_STUDY_JOBS)")


def _point_spec(base: Mapping[str, Any], overrides: dict[str, Any], loc: tuple[str | int, ...]) -> ExperimentSpec:
    spec = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        set_path(spec, key, value)
    try:
        return ExperimentSpec.model_validate(spec)
    except ValidationError as err:
        error = err.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        key = next((k for k in overrides if field == k or field.startswith(k + ".") or k.startswith(field + ".")),
                   None)
        msg = error["msg"].removeprefix("Value error, ")
        if key is None:
            raise StudyError(("base", *error["loc"]), f"{msg} (in the base spec)") from None
        raise StudyError((*loc, key), f"{msg} (value {_show(overrides[key])})") from None


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)
