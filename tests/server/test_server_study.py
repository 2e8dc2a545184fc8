"""What a new user needs from the API (issue 12): cost before training, layer roles, what a spec changes, one
meaning of total_steps, option descriptions."""

from __future__ import annotations

import time

import httpx
import numpy as np
from live import TINY

from deepgrad_core.norms import NormBlock
from deepgrad_server import store


def test_cost_of_the_full_size_model_before_training(app_client: httpx.Client) -> None:
    start = time.monotonic()
    r = app_client.post("/cost", json={"model": {"arch": "resnet18"}, "data": {"name": "cifar10"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cost"]["total_params"] == 11_173_962 and 1.1e9 < body["cost"]["flops_per_image"] < 1.12e9
    assert body["spec"]["model"]["batch_norm"] is True  # resolved
    assert body["memory"]["host_bytes"] > body["memory"]["parts"]["activations"] > 0
    assert body["memory"]["fits"] is None and body["limit_errors"] == []  # no worker here: no budget
    assert app_client.get("/jobs").json()["count"] == 0  # nothing queued
    assert time.monotonic() - start < 30  # the first call imports torch; then about a second


def test_cost_says_why_a_job_would_be_refused(app_client: httpx.Client) -> None:
    body = app_client.post("/cost", json={**TINY, "train": {"epochs": 500}}).json()
    assert any("DEEPGRAD_MAX_EPOCHS" in e for e in body["limit_errors"])
    r = app_client.post("/cost", json={"model": {"arch": "resnet18", "kernel_size": 4}})
    assert r.status_code == 422 and "kernel_size" in r.text


def _seed(client: httpx.Client, spec: dict, layers: list[dict], blocks: list[NormBlock]) -> str:
    db = client.app.state.db
    with db.writing() as s:
        job, _ = store.create_job(s, spec=spec, name="seeded", idempotency_key=None, max_queued=100)
        store.update_job(s, job_id=job.id, state="succeeded", steps_per_epoch=10, layers=layers)
        for block in blocks:
            store.append_norms(s, job_id=job.id, block=block)
    return job.id


def test_layers_carry_their_role_and_jobs_say_what_they_change(app_client: httpx.Client) -> None:
    r = app_client.post("/jobs", json={**TINY, "model": {**TINY["model"], "kernel_size": 5, "batch_norm": False}})
    assert r.status_code == 201
    assert r.json()["changes"] == {"model.kernel_size": 5, "model.batch_norm": False, "model.width": 0.125,
                                   "data.subset": 8, "data.test_subset": 4, "data.image_size": 16,
                                   "train.epochs": 2, "train.batch_size": 16}
    layers = [{"name": "conv1", "path": "conv1.0", "kind": "conv", "role": "stem", "depth": 0},
              {"name": "shortcut1", "path": "layer2.0.shortcut.0", "kind": "conv", "role": "shortcut", "depth": 1},
              {"name": "conv2", "path": "layer2.0.conv1.0", "kind": "conv", "depth": 2}]  # recorded before roles
    names = ("conv1", "shortcut1", "conv2")
    job_id = _seed(app_client, {"model": {"arch": "resnet18"}}, layers,
                   [NormBlock("activation", np.arange(0, 150, 10), names, np.ones((15, 3), np.float32))])
    body = app_client.get(f"/jobs/{job_id}/gradients", params={"kind": "activation"}).json()
    assert [la["role"] for la in body["layers"]] == ["stem", "shortcut", "main"]
    # One meaning of total_steps: training steps, as in progress; the sampled entries are records.
    assert body["records"] == 15 and body["total_steps"] == 141


def test_models_describes_every_option(app_client: httpx.Client) -> None:
    options = app_client.get("/models").json()["options"]
    assert all(isinstance(o.get("description"), str) and o["description"] for o in options.values()), options
