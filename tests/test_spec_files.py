"""Spec files and ``--set`` overrides read the same in ``deepgrad-train`` (deepgrad_core.specfile) and in
``deepgrad-client`` (its own reader: the client imports nothing of ours): one set of cases, run against both.
Also what else both sides list on their own: a job's states."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deepgrad_client import _client as client_states
from deepgrad_client import _spec as client_spec
from deepgrad_client._exceptions import InputError
from deepgrad_core import specfile
from deepgrad_server import models as server_models

# Each reader as (read a file, apply overrides, the error it raises).
READERS: dict[str, tuple[Callable[[Path], dict], Callable[[dict, list[str]], dict], type[Exception]]] = {
    "core": (specfile.read_spec_file, specfile.apply_overrides, specfile.SpecFileError),
    "client": (client_spec.load_spec, client_spec.apply_overrides, InputError),
}
SPEC = {"model": {"arch": "vgg_deep", "width": 0.25}, "train": {"epochs": 2}}

# (file name, file text, the mapping read, or an error message fragment)
FILES: list[tuple[str, str, Any]] = [
    ("a.yaml", "model:\n  arch: vgg_deep\n  width: 0.25\ntrain:\n  epochs: 2\n", SPEC),
    ("a.yml", "model: {arch: vgg_deep, width: 0.25}\ntrain: {epochs: 2}\n", SPEC),
    ("a.json", '{"model": {"arch": "vgg_deep", "width": 0.25}, "train": {"epochs": 2}}', SPEC),
    ("A.JSON", '{"model": {"arch": "vgg_deep", "width": 0.25}, "train": {"epochs": 2}}', SPEC),
    ("A.YAML", "train:\n", {"train": None}),
    ("a.txt", "model: {arch: vgg16}\n", "a spec file ends in .json, .yaml or .yml"),
    ("a", "model: {arch: vgg16}\n", "a spec file ends in .json, .yaml or .yml"),
    ("a.json", "model: {arch: vgg16}\n", "does not parse"),  # YAML in a .json file
    ("a.yaml", "model: [unclosed\n", "does not parse"),
    ("a.yaml", "- model\n- train\n", "must hold a mapping (model:, data:, train:, ...), not list"),
    ("a.yaml", "", "must hold a mapping (model:, data:, train:, ...), not NoneType"),
    ("a.json", "3", "must hold a mapping (model:, data:, train:, ...), not int"),
]

# (overrides, the spec after them, or an error message fragment)
OVERRIDES: list[tuple[list[str], Any]] = [
    (["train.lr=0.01"], {**SPEC, "train": {"epochs": 2, "lr": 0.01}}),
    (["model.batch_norm=true", "train.grad_clip=null"],
     {"model": {**SPEC["model"], "batch_norm": True}, "train": {"epochs": 2, "grad_clip": None}}),
    (["tracking.layer_types=[conv, linear]"], {**SPEC, "tracking": {"layer_types": ["conv", "linear"]}}),
    (["model.arch=vgg16", "model.arch=resnet18"], {**SPEC, "model": {"arch": "resnet18", "width": 0.25}}),
    ([" train.epochs =3"], {**SPEC, "train": {"epochs": 3}}),  # spaces around the key are trimmed
    (["data.name=cifar10"], {**SPEC, "data": {"name": "cifar10"}}),  # a section left out is created
    (["train.lr"], "expected KEY.PATH=VALUE"),
    (["train..lr=1"], "expected KEY.PATH=VALUE"),
    (["=1"], "expected KEY.PATH=VALUE"),
    (["train.epochs.x=1"], "train.epochs is a value, not a section"),
    (["train.lr=[0.1"], "value is not valid YAML"),
]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("name", "text", "expected"), FILES)
def test_spec_files_read_the_same(tmp_path: Path, reader: str, name: str, text: str, expected: Any) -> None:
    read, _, error = READERS[reader]
    path = tmp_path / name
    path.write_text(text)
    if isinstance(expected, str):
        with pytest.raises(error, match=None) as caught:
            read(path)
        assert expected in str(caught.value) and name in str(caught.value)
    else:
        assert read(path) == expected


@pytest.mark.parametrize("reader", READERS)
def test_a_missing_spec_file_is_named(tmp_path: Path, reader: str) -> None:
    read, _, error = READERS[reader]
    with pytest.raises(error, match="cannot read spec file .*nope.yaml"):
        read(tmp_path / "nope.yaml")


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(("overrides", "expected"), OVERRIDES)
def test_overrides_apply_the_same(reader: str, overrides: list[str], expected: Any) -> None:
    _, apply, error = READERS[reader]
    original = {"model": dict(SPEC["model"]), "train": dict(SPEC["train"])}
    if isinstance(expected, str):
        with pytest.raises(error, match=None) as caught:
            apply(original, overrides)
        assert expected in str(caught.value) and overrides[0] in str(caught.value)
    else:
        assert apply(original, overrides) == expected
    assert original == SPEC  # the input is never changed


@pytest.mark.parametrize("reader", READERS)
def test_an_empty_section_takes_overrides(reader: str) -> None:
    _, apply, _ = READERS[reader]
    assert apply({"train": None}, ["train.lr=0.5"]) == {"train": {"lr": 0.5}}


def test_client_and_server_list_the_same_job_states() -> None:
    assert client_states.STATES == server_models.STATES
    assert client_states.TERMINAL_STATES == server_models.TERMINAL
