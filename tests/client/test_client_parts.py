"""The client's pure parts: event-stream parsing, config resolution, overrides, error messages, arrays."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from deepgrad_client import APIError, DeepGradError, Gradients, InputError, apply_overrides
from deepgrad_client._config import DEFAULT_URL, resolve
from deepgrad_client._sse import Event, parse_events


def test_parse_events_names_data_comments_and_multiline() -> None:
    lines = [": keep-alive", "", "event: progress", 'data: {"epoch": 1}', "", "data: plain", "data: text", "",
             "id: 7", "event: end", 'data: {"state":', 'data: "succeeded"}', "", "event: cut", "data: 1"]
    stream = httpx.Response(200, headers={"content-type": "text/event-stream"}, content="\n".join(lines).encode())
    assert list(parse_events(stream)) == [
        Event("progress", {"epoch": 1}),
        Event("message", "plain\ntext"),
        Event("end", {"state": "succeeded"}, id="7"),
    ]  # the last event has no closing blank line: dropped


def test_resolve_prefers_argument_then_env_then_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"url": "http://gpu-box:8000/", "token": "from-config"}))
    monkeypatch.setenv("DEEPGRAD_CONFIG", str(config))
    assert resolve() == resolve(None, None)
    assert (resolve().url, resolve().token) == ("http://gpu-box:8000", "from-config")
    monkeypatch.setenv("DEEPGRAD_URL", "http://env:1")
    monkeypatch.setenv("DEEPGRAD_TOKEN", "from-env")
    assert (resolve().url, resolve().token, resolve().token_source) == ("http://env:1", "from-env", "DEEPGRAD_TOKEN")
    assert (resolve("http://arg:2", "from-arg").url, resolve("http://arg:2", "from-arg").token) == \
        ("http://arg:2", "from-arg")


def test_local_token_file_is_read_for_loopback_urls_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPGRAD_DATA_DIR", str(tmp_path))
    (tmp_path / "token").write_text("local-server-token\n")
    assert resolve().url == DEFAULT_URL and resolve().token == "local-server-token"
    assert resolve("http://localhost:9000").token == "local-server-token"
    assert resolve("http://[::1]:9000").token == "local-server-token"
    assert resolve("https://example.org").token is None  # never sent to another host


def test_broken_config_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config.json"
    monkeypatch.setenv("DEEPGRAD_CONFIG", str(config))
    config.write_text("{not json")
    with pytest.raises(DeepGradError, match="not valid JSON"):
        resolve()
    assert resolve("http://x:1", "tok").token == "tok"  # not read when nothing is needed from it
    config.write_text('{"token": 5}')
    with pytest.raises(DeepGradError, match="must be a JSON object like"):
        resolve()


def test_apply_overrides_parses_yaml_scalars_into_dotted_paths() -> None:
    spec = {"model": {"arch": "vgg_deep"}, "train": None}
    out = apply_overrides(spec, ["train.lr=0.01", "model.batch_norm=true", "train.grad_clip=null",
                                 "model.arch=vgg16", "tracking.layer_types=[conv, linear]", "seed=3"])
    assert out == {"model": {"arch": "vgg16", "batch_norm": True},
                   "train": {"lr": 0.01, "grad_clip": None},
                   "tracking": {"layer_types": ["conv", "linear"]}, "seed": 3}
    assert spec == {"model": {"arch": "vgg_deep"}, "train": None}  # the input is left alone
    with pytest.raises(InputError, match="expected KEY.PATH=VALUE"):
        apply_overrides(spec, ["train..lr=1"])


def test_api_error_flattens_validation_lists() -> None:
    detail = [{"loc": ["body", "model", "arch"], "msg": "Input should be 'vgg16'", "type": "literal_error"},
              {"loc": ["body"], "msg": "Value error, model.in_channels is 1 but ...", "type": "value_error"},
              {"loc": ["query", "max_points"], "msg": "Input should be greater than or equal to 2"}]
    error = APIError(422, detail)
    assert str(error).splitlines() == ["invalid request (3 error(s)):", "  model.arch: Input should be 'vgg16'",
                                       "  model.in_channels is 1 but ...",
                                       "  max_points: Input should be greater than or equal to 2"]
    assert error.detail is detail and error.status == 422
    assert str(APIError(409, "job x is running: cancel it first")) == "job x is running: cancel it first"
    assert str(APIError(500, None)) == "HTTP 500"


def test_gradients_from_json_transposes_and_maps_null_to_nan() -> None:
    grads = Gradients.from_json({
        "job_id": "0123456789ab", "kind": "activation", "total_steps": 3, "downsampled": False,
        "layers": [{"name": "conv1", "depth": 0, "relative_depth": 0.0},
                   {"name": "conv2", "depth": 1, "relative_depth": 1.0}],
        "steps": [0, 10, 20], "values": [[1.0, None, 3.0], [4.0, 5.0, None]]})
    assert grads.steps.dtype == np.int64 and grads.values.shape == (3, 2)
    np.testing.assert_array_equal(grads.values, [[1.0, 4.0], [np.nan, 5.0], [3.0, np.nan]])
    np.testing.assert_array_equal(grads.series("conv2"), [4.0, 5.0, np.nan])
    assert list(grads.depths) == [0, 1] and list(grads.relative_depths) == [0.0, 1.0]
    empty = Gradients.from_json({"layers": [], "steps": [], "values": []})
    assert empty.values.shape == (0, 0)
