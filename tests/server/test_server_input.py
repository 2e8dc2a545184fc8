"""Bad input and missing credentials: the right 4xx with a message a user can act on, and nothing written."""

from __future__ import annotations

import json
from urllib.parse import quote

import httpx
import pytest
from live import TINY, TOKEN

from deepgrad_server.db import Database


def jobs_in_store(client: httpx.Client) -> int:
    db: Database = client.app.state.db
    with db.reading() as s:
        from deepgrad_server import store

        return store.list_jobs(s)[1]


def with_(path: str, value: object) -> dict:
    """TINY with ``path`` (dotted) set to ``value``."""
    spec = json.loads(json.dumps(TINY))
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


@pytest.mark.parametrize(("path", "value", "loc", "words"), [
    ("model.arch", "vgg19", ["body", "model", "arch"], ["vgg16", "vgg_deep", "resnet18"]),
    ("model.kernel_size", 4, ["body", "model", "kernel_size"], ["3, 5, 7"]),
    ("train.lr", -0.1, ["body", "train", "lr"], ["greater than 0"]),
    ("data.name", "../../etc/passwd", ["body", "data", "name"], ["cifar10", "fashion_mnist", "synthetic"]),
    ("data.name", "/data/cifar10", ["body", "data", "name"], ["cifar10"]),
    ("model.activation", "__import__('os')", ["body", "model", "activation"], ["relu"]),
    ("model.module", "torchvision.models.vgg19", ["body", "model", "module"], ["Extra inputs"]),
    ("train.epochs", 100_000, ["body", "train", "epochs"], ["1000"]),
])
def test_invalid_spec_is_422_with_field_and_allowed_values(app_client: httpx.Client, path: str, value: object,
                                                           loc: list[str], words: list[str]) -> None:
    r = app_client.post("/jobs", json=with_(path, value))
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    match = [e for e in errors if e["loc"][:len(loc)] == loc]
    assert match, errors
    assert all(any(w in e["msg"] for e in match) for w in words), match
    assert jobs_in_store(app_client) == 0


def test_server_limits_are_422_naming_the_setting(app_client: httpx.Client) -> None:
    r = app_client.post("/jobs", json=with_("train.batch_size", 4096))
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "train", "batch_size"] and "DEEPGRAD_MAX_BATCH_SIZE" in error["msg"]
    assert jobs_in_store(app_client) == 0


def test_inconsistent_spec_explains_the_fix(app_client: httpx.Client) -> None:
    r = app_client.post("/jobs", json={"model": {"arch": "vgg16", "in_channels": 3},
                                       "data": {"name": "fashion_mnist"}})
    assert r.status_code == 422 and "in_channels" in json.dumps(r.json())


def test_not_json_is_422(app_client: httpx.Client) -> None:
    r = app_client.post("/jobs", content=b"model: {arch: vgg16}", headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert jobs_in_store(app_client) == 0


def test_huge_body_is_413_before_parsing(app_client: httpx.Client) -> None:
    body = json.dumps({**TINY, "name": "x", "pad": "a" * (2 << 20)})
    r = app_client.post("/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert jobs_in_store(app_client) == 0


def test_huge_chunked_body_is_413(app_client: httpx.Client) -> None:
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    r = app_client.post("/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert jobs_in_store(app_client) == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}])
def test_missing_or_wrong_token_is_401(app_client: httpx.Client, headers: dict[str, str]) -> None:
    app_client.headers.pop("Authorization")
    r = app_client.post("/jobs", json=TINY, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "token" in r.json()["detail"]
    assert app_client.get("/jobs", headers=headers).status_code == 401
    assert app_client.get("/health").status_code == 200
    assert jobs_in_store(app_client) == 0


def test_idempotency_key_returns_the_same_job(app_client: httpx.Client) -> None:
    first = app_client.post("/jobs", json=TINY, headers={"Idempotency-Key": "abc-123"})
    again = app_client.post("/jobs", json=TINY, headers={"Idempotency-Key": "abc-123"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and again.headers["location"] == f"/jobs/{first.json()['id']}"
    other = app_client.post("/jobs", json={**TINY, "seed": 1}, headers={"Idempotency-Key": "abc-123"})
    assert other.status_code == 409 and "different body" in other.json()["detail"]
    assert jobs_in_store(app_client) == 1


def test_full_queue_is_429(tmp_path) -> None:
    from fastapi.testclient import TestClient

    from deepgrad_server.app import create_app
    from deepgrad_server.settings import Settings

    settings = Settings(data_dir=tmp_path, token=TOKEN, worker=False, max_queued=2)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert [client.post("/jobs", json=TINY).status_code for _ in range(3)] == [201, 201, 429]
        assert "queue is full" in client.post("/jobs", json=TINY).json()["detail"]


@pytest.mark.parametrize("job_id", ["../../etc/passwd", "..%2f..%2fetc", "ABCDEF012345", "0123", "#/..",
                                    "0123456789abc"])
def test_malformed_job_ids_are_404_or_422(app_client: httpx.Client, job_id: str) -> None:
    quoted = quote(job_id, safe="")  # as a client sends it: '#' would otherwise start a fragment
    for url in (f"/jobs/{quoted}", f"/jobs/{quoted}/gradients", f"/jobs/{quoted}/plots/norms.png",
                f"/jobs/{quoted}/cancel", f"/jobs/{quoted}/events"):
        assert app_client.get(url).status_code in (404, 405, 422)
    assert app_client.delete(f"/jobs/{quoted}").status_code in (404, 422)
    assert app_client.get("/jobs/0123456789ab").status_code == 404
    assert "no job" in app_client.get("/jobs/0123456789ab").json()["detail"]


def test_settings_refuse_public_bind_without_auth() -> None:
    from pydantic import ValidationError

    from deepgrad_server.settings import Settings

    with pytest.raises(ValidationError, match="refusing to listen on 0.0.0.0"):
        Settings(host="0.0.0.0", auth=False)
    Settings(host="127.0.0.1", auth=False)  # loopback without auth: allowed


def test_token_file_is_private_and_stable(tmp_path) -> None:
    from deepgrad_server.settings import Settings

    settings = Settings(data_dir=tmp_path)
    token, generated = settings.ensure_token()
    assert generated and len(token) >= 32
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert settings.ensure_token() == (token, False)
