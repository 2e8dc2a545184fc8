"""Classes of input an outside attack-and-chaos run found mishandled (issue 11), each tried as a class, not as the
one example: non-finite numbers in every float field, unencodable text, control and bidi characters in names,
duplicate or empty layer types, work with no upper bound, a spoofed Host with auth off, a 405's Allow list,
tokens no client can send. Every refusal is a 422/400 that encodes, names the field, and writes nothing."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from live import TINY, TOKEN
from pydantic import BaseModel

from deepgrad_core.spec import ExperimentSpec
from deepgrad_server.app import create_app
from deepgrad_server.settings import Settings


def _float_fields(model: type = ExperimentSpec, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field of the spec that holds a float, found by walking the models (so a new one is covered)."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        args = typing.get_args(ann) or (ann,)
        sub = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            out += _float_fields(sub, (*prefix, name))
        elif float in args:
            out.append((*prefix, name))
    return out


FLOAT_FIELDS = _float_fields()
NONFINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]


def _body(path: tuple[str, ...], raw: str) -> bytes:
    """TINY with ``path`` set to the raw JSON token ``raw`` (NaN, 1e999: what Python's json accepts)."""
    spec = json.loads(json.dumps(TINY))
    spec.setdefault("model", {})
    node = spec
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = "__RAW__"
    return json.dumps(spec).replace('"__RAW__"', raw).encode()


def _jobs(client: TestClient) -> int:
    return client.get("/jobs").json()["count"]


def _refused(r: httpx.Response, *loc: str) -> dict[str, Any]:
    assert r.status_code == 422, (r.status_code, r.text)
    body = json.loads(r.content)  # strict JSON: no NaN/Infinity tokens, valid UTF-8
    assert json.dumps(body, allow_nan=False)
    if loc:
        assert any(tuple(e["loc"][-len(loc):]) == loc for e in body["detail"]), body
    return body


def test_float_fields_are_found() -> None:
    assert {("train", "lr"), ("train", "weight_decay"), ("train", "grad_clip"), ("model", "dropout"),
            ("tracking", "vanishing_fraction"), ("train", "warmup_epochs")} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("raw", NONFINITE)
def test_every_float_field_refuses_non_finite_values(app_client: TestClient, raw: str) -> None:
    """lr, weight_decay, grad_clip = 1e999 were accepted and stored as Infinity; NaN answered 500."""
    for path in FLOAT_FIELDS:
        r = app_client.post("/jobs", content=_body(path, raw), headers={"Content-Type": "application/json"})
        _refused(r, *path)
    assert _jobs(app_client) == 0


@pytest.mark.parametrize("path", [("seed",), ("train", "epochs"), ("train", "batch_size"), ("data", "subset"),
                                  ("checkpoint_every",), ("tracking", "flush_every")])
@pytest.mark.parametrize("raw", NONFINITE)
def test_integer_fields_refuse_non_finite_values_with_a_422_that_encodes(app_client: TestClient,
                                                                         path: tuple[str, ...], raw: str) -> None:
    """``"seed": 1e999`` and ``"epochs": -Infinity`` answered 500 and reset the connection: the 422 echoing the
    input could not be encoded."""
    r = app_client.post("/jobs", content=_body(path, raw), headers={"Content-Type": "application/json"})
    _refused(r, *path)
    assert _jobs(app_client) == 0


@pytest.mark.parametrize("text", ["\\ud800x", "\\udfff", "a\\ud83d", "\\ud800\\ud800"])
def test_lone_surrogates_are_refused_with_a_422_that_encodes(app_client: TestClient, text: str) -> None:
    """A name holding a lone surrogate answered 500: the 422 echoing it could not be encoded as UTF-8."""
    bodies = ['{"model": {"arch": "vgg16"}, "name": "%s"}', '{"model": {"arch": "%s"}}',
              '{"model": {"arch": "vgg16"}, "data": {"name": "%s"}}', '{"model": {"arch": "vgg16", "%s": 1}}']
    for body in bodies:
        r = app_client.post("/jobs", content=(body % text).encode(), headers={"Content-Type": "application/json"})
        _refused(r)
    assert _jobs(app_client) == 0


C1_AND_BIDI = [chr(c) for c in range(0x80, 0xA0)] + ["\u061c", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)),
                                                    *map(chr, range(0x2066, 0x206A))]


def test_names_refuse_every_control_and_bidi_character(app_client: TestClient) -> None:
    """U+009B (a CSI in terminals), U+0085 and U+202E were accepted in names."""
    for c in C1_AND_BIDI + [chr(c) for c in range(0x20)] + ["\x7f"]:
        _refused(app_client.post("/jobs", json={**TINY, "name": f"run{c}1"}), "name")
    assert _jobs(app_client) == 0
    ok = app_client.post("/jobs", json={**TINY, "name": "VGG-Deep, kernel 5 — ß ünïcode ✓"})
    assert ok.status_code == 201


@pytest.mark.parametrize("types", [["conv", "conv"], ["linear", "linear"], ["conv", "linear", "conv"], []])
def test_layer_types_must_be_distinct_and_not_empty(app_client: TestClient, types: list[str]) -> None:
    """``["conv", "conv"]`` tracked every conv twice under wrong names; ``[]`` failed only at run time."""
    _refused(app_client.post("/jobs", json={**TINY, "tracking": {"layer_types": types}}), "layer_types")
    assert _jobs(app_client) == 0


@pytest.mark.parametrize(("path", "value"), [(("data", "subset"), 10**9), (("data", "subset"), 100_000),
                                             (("data", "test_subset"), 10**9), (("data", "test_subset"), 50_000)])
def test_subsets_are_bounded(app_client: TestClient, path: tuple[str, ...], value: int) -> None:
    """``data.subset`` of the synthetic set had no upper bound: 1e9 images per class were accepted."""
    spec = json.loads(json.dumps(TINY))
    spec["data"][path[-1]] = value
    body = _refused(app_client.post("/jobs", json=spec), *path)
    assert "10000" in json.dumps(body)
    assert _jobs(app_client) == 0


def test_total_steps_are_bounded_by_a_setting(tmp_path: Path) -> None:
    """A job is bounded as a whole: epochs x steps per epoch, refused with a 422 naming the field and the limit."""
    settings = Settings(data_dir=tmp_path, token=TOKEN, worker=False, max_steps=10_000)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        # CIFAR-10 at batch 1: 50,000 steps per epoch
        spec = {"model": {"arch": "resnet18"}, "data": {"name": "cifar10"}, "train": {"epochs": 1, "batch_size": 1}}
        body = _refused(client.post("/jobs", json=spec), "train", "epochs")
        msg = next(e["msg"] for e in body["detail"] if e["loc"][-1] == "epochs")
        assert "10,000 steps" in msg and "DEEPGRAD_MAX_STEPS" in msg and "50,000" in msg
        ok = {**spec, "data": {"name": "cifar10", "subset": 100}, "train": {"epochs": 10, "batch_size": 1}}
        assert client.post("/jobs", json=ok).status_code == 201  # 1,000 steps x 10
        assert client.get("/jobs").json()["count"] == 1


def test_memory_estimate_refuses_a_job_that_cannot_fit(tmp_path: Path) -> None:
    """The issue's job (resnet18, width 2, batch 1024, synthetic 64 px) was accepted and OOM-killed three times;
    with a memory limit for one job it is refused at submit, naming the field that sizes it and the limit."""
    settings = Settings(data_dir=tmp_path, token=TOKEN, worker=False, max_job_memory_gib=2.5)
    big = {"model": {"arch": "resnet18", "width": 2.0}, "data": {"name": "synthetic", "image_size": 64},
           "train": {"batch_size": 1024, "epochs": 1}}
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        body = _refused(client.post("/jobs", json=big), "train", "batch_size")
        msg = next(e["msg"] for e in body["detail"] if e["loc"][-1] == "batch_size")
        assert "GiB" in msg and "2.5" in msg and "DEEPGRAD_MAX_JOB_MEMORY_GIB" in msg
        assert client.post("/jobs", json={**big, "train": {"batch_size": 32, "epochs": 1},
                                          "model": {"arch": "resnet18", "width": 0.5}}).status_code == 201
        assert client.get("/jobs").json()["count"] == 1


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "127.0.0.1.nip.io", "10.0.0.5",
                                  "[2001:db8::1]:8000", "localhost.attacker.example", ""])
def test_auth_off_answers_only_loopback_host_names(tmp_path: Path, host: str) -> None:
    """With auth off, ``POST /jobs`` with ``Host: attacker.example`` made a job: the DNS-rebinding path."""
    settings = Settings(data_dir=tmp_path, auth=False, worker=False)
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        for method, path in (("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/health")):
            r = client.request(method, path, json=TINY if method == "POST" else None, headers={"Host": host})
            assert r.status_code == 400 and "DEEPGRAD_ALLOWED_HOSTS" in r.json()["detail"], (method, path, r.text)
        for good in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "app.localhost"):
            assert client.get("/jobs", headers={"Host": good}).status_code == 200, good
        assert client.get("/jobs", headers={"Host": "localhost"}).json()["count"] == 0


def test_allowed_hosts_setting_is_honoured(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth=False, worker=False, allowed_hosts="lab.example, gpu1")
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.get("/health", headers={"Host": "lab.example:8000"}).status_code == 200
        assert client.get("/health", headers={"Host": "gpu1"}).status_code == 200
        assert client.get("/health", headers={"Host": "localhost"}).status_code == 400


@pytest.mark.parametrize(("path", "methods"), [("/jobs", {"GET", "POST"}),
                                               ("/jobs/0123456789ab", {"GET", "DELETE"})])
@pytest.mark.parametrize("method", ["OPTIONS", "PUT", "PATCH"])
def test_405_lists_every_method_of_the_path(app_client: TestClient, path: str, methods: set[str],
                                             method: str) -> None:
    r = app_client.request(method, path)
    assert r.status_code == 405
    assert methods <= {m.strip() for m in r.headers["allow"].split(",")}


def test_cross_field_rules_are_in_the_schema(app_client: TestClient) -> None:
    """The fuzzer and clients read the schema: the rules that relate two fields are written there."""
    schema = app_client.get("/openapi.json").json()
    text = json.dumps(schema)
    assert "warmup_epochs" in text and "shorter than train.epochs" in text
    gradients = schema["paths"]["/jobs/{job_id}/gradients"]["get"]["parameters"]
    end = next(p for p in gradients if p["name"] == "end")
    assert "greater than start" in end["description"]


@pytest.mark.parametrize("token", [" " * 16, "abcdefghijklmno ", " abcdefghijklmnop", "abcdefgh\tijklmnop",
                                   "abcdefghijklmnop\n", "short", "abcdefghijklmnöp"])
def test_unusable_tokens_are_refused_at_start(tmp_path: Path, token: str) -> None:
    """A token of 16 spaces, or 15 characters and a space, started a server no client could authenticate to."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "deepgrad_server.main", "--data-dir", str(tmp_path)],
                       env={"PATH": "/usr/bin:/bin", "DEEPGRAD_TOKEN": token, "HOME": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "token" in r.stderr and "Traceback" not in r.stderr
