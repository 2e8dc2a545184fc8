"""Studies through the API: validation before anything is written, one job per point, cancel and delete as a whole,
presets; and a small ``depth`` study end to end on real CIFAR-10 images through a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from live import LiveServer, wait_for

from deepgrad_core.presets import PRESETS

BASE = {"model": {"arch": "vgg_deep", "width": 0.125},
        "data": {"name": "synthetic", "subset": 8, "test_subset": 2, "image_size": 32},
        "train": {"epochs": 1, "batch_size": 16}}


def _nothing_created(client: httpx.Client) -> bool:
    return client.get("/jobs").json()["count"] == 0 and client.get("/studies").json()["count"] == 0


@pytest.mark.parametrize(("body", "loc", "words"), [
    ({"base": BASE, "grid": {"model.kernal_size": [3]}}, ["body", "grid", "model.kernal_size"], "unknown key"),
    ({"base": BASE, "grid": {"model.kernel_size": []}}, ["body", "grid", "model.kernel_size"], "at least 1 item"),
    ({"base": BASE, "grid": {"model.kernel_size": [3, 4]}}, ["body", "grid", "model.kernel_size"], "one of"),
    ({"base": BASE, "points": [{}, {"model.arch": "vgg17"}]}, ["body", "points", 1, "model.arch"], "vgg17"),
    ({"base": BASE, "grid": {"train.lr": [0.1] * 65}}, ["body", "grid"], "65 jobs is more than the 64"),
    ({"base": BASE, "grid": {"seed": [0, 1]}}, ["body", "grid", "seed"], "same for every job"),
    ({"base": BASE, "grid": {"train.epochs": [1, 500]}}, ["body", "grid", "train", "epochs"], "job 2"),
    ({"base": BASE}, ["body"], "either grid"),
    ({"preset": "depht"}, ["body", "preset"], "Input should be 'original', 'depth'"),
    ({"preset": "depth", "grid": {"train.lr": [0.1]}}, ["body", "preset"], "brings its own points"),
    ({"preset": "depth", "set": {"train.epoch": 1}}, ["body", "set", "train.epoch"], "unknown key"),
])
def test_a_bad_study_is_a_422_naming_the_key_and_creates_nothing(app_client: httpx.Client, body: dict, loc: list,
                                                                  words: str) -> None:
    r = app_client.post("/studies", json=body)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"] == loc and words in error["msg"], error
    assert _nothing_created(app_client)


def test_a_grid_queues_one_paired_job_per_point(app_client: httpx.Client) -> None:
    r = app_client.post("/studies", json={"name": "kp", "base": BASE, "set": {"train.epochs": 2},
                                         "grid": {"model.kernel_size": [3, 5], "model.pooling": ["max", "avg"]}})
    assert r.status_code == 201, r.text
    study = r.json()
    assert r.headers["location"] == f"/studies/{study['id']}" and study["state"] == "queued"
    assert study["counts"] == {"queued": 4}
    assert [j["label"] for j in study["jobs"]] == ["kernel_size=3, pooling=max", "kernel_size=3, pooling=avg",
                                                   "kernel_size=5, pooling=max", "kernel_size=5, pooling=avg"]
    specs = [j["job"]["spec"] for j in study["jobs"]]
    assert study["jobs"][1]["job"]["name"] == "kp/2 kernel_size=3, pooling=avg"
    assert {s["seed"] for s in specs} == {0} and {s["train"]["epochs"] for s in specs} == {2}
    assert [(s["model"]["kernel_size"], s["model"]["pooling"]) for s in specs] == [(3, "max"), (3, "avg"),
                                                                                   (5, "max"), (5, "avg")]
    assert app_client.get("/jobs").json()["count"] == 4
    listed = app_client.get("/studies").json()
    assert listed["count"] == 1 and listed["data"][0]["jobs"] == [] and listed["data"][0]["counts"] == {"queued": 4}
    summary = app_client.get(f"/studies/{study['id']}/summary").json()
    assert summary["varied"] == ["model.kernel_size", "model.pooling"]
    assert [row["state"] for row in summary["rows"]] == ["queued"] * 4 and summary["rows"][0]["test_acc"] is None


def test_a_study_is_cancelled_and_deleted_as_a_whole(app_client: httpx.Client) -> None:
    study = app_client.post("/studies", json={"base": BASE, "points": [{}, {"model.activation": "gelu"}]}).json()
    url = f"/studies/{study['id']}"
    r = app_client.delete(url)
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    cancelled = app_client.post(f"{url}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["counts"] == {"cancelled": 2}
    assert cancelled.json()["state"] == "ended"
    job_ids = [j["job"]["id"] for j in study["jobs"]]
    assert app_client.delete(url).status_code == 204
    assert app_client.get(url).status_code == 404 and app_client.delete(url).status_code == 404
    assert all(app_client.get(f"/jobs/{job_id}").status_code == 404 for job_id in job_ids)
    assert _nothing_created(app_client)
    assert app_client.get("/studies/ABC").status_code == 422  # ids are 12 lowercase hex characters
    assert app_client.get("/studies/0123456789ab/plots/accuracy.png").status_code == 404


def test_study_figures_wait_for_results(app_client: httpx.Client) -> None:
    study = app_client.post("/studies", json={"base": BASE, "grid": {"model.kernel_size": [3, 5]}}).json()
    for kind in ("accuracy", "ratio", "cost", "depth"):
        r = app_client.get(f"/studies/{study['id']}/plots/{kind}.png")
        assert r.status_code == 409 and "yet" in r.json()["detail"], (kind, r.text)
    assert app_client.get(f"/studies/{study['id']}/plots/bogus.png").status_code == 422


def test_presets_are_listed_and_run_by_name(app_client: httpx.Client) -> None:
    presets = {p["name"]: p for p in app_client.get("/presets").json()}
    assert {"original", "depth", "init", "kernel_size", "pooling", "activation", "bottleneck"} <= set(presets)
    assert presets["init"]["jobs"] == 6 and presets["original"]["jobs"] == len(PRESETS["original"].points)
    r = app_client.post("/studies", json={"preset": "init", "base": {"data": BASE["data"]},
                                         "set": {"model.width": 0.125, "train.epochs": 1, "train.batch_size": 16}})
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["preset"] == "init" and study["name"] == "init" and len(study["jobs"]) == 6
    specs = [j["job"]["spec"] for j in study["jobs"]]
    assert {(s["model"]["init"], s["model"]["batch_norm"]) for s in specs} == {
        (i, bn) for i in ("default", "kaiming_normal", "xavier_normal") for bn in (False, True)}
    assert {s["data"]["name"] for s in specs} == {"synthetic"} and {s["model"]["width"] for s in specs} == {0.125}


def test_the_whole_study_must_fit_in_the_queue(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient
    from live import TOKEN

    from deepgrad_server.app import create_app
    from deepgrad_server.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, token=TOKEN, worker=False, max_queued=3))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        r = client.post("/studies", json={"base": BASE, "grid": {"model.kernel_size": [3, 5, 7], "train.lr": [.1, .2]}})
        assert r.status_code == 429 and "6 to add" in r.json()["detail"]
        assert _nothing_created(client)


def test_a_depth_study_on_cifar10_flags_vgg_deep_and_not_resnet18(tmp_path: Path, cifar10_root: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    """The acceptance run: the ``depth`` preset, tiny, on real CIFAR-10 images through a real server."""
    server = LiveServer(tmp_path / "srv", cifar10_root, env={"DEEPGRAD_DEVICE": "cpu,cpu"}).start()  # 2 at once
    try:
        with server.client() as client:
            r = client.post("/studies", json={
                "preset": "depth", "set": {"model.width": 0.125, "data.subset": 10, "data.test_subset": 5,
                                           "train.epochs": 1, "train.batch_size": 50}})
            assert r.status_code == 201, r.text
            study = r.json()
            for job in study["jobs"]:
                assert wait_for(client, job["job"]["id"])["state"] == "succeeded"
            summary = client.get(f"/studies/{study['id']}/summary").json()
            assert client.get(f"/studies/{study['id']}").json()["state"] == "ended"
            for kind in ("accuracy", "ratio", "cost", "depth", "metrics"):
                r = client.get(f"/studies/{study['id']}/plots/{kind}.png")
                assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), (kind, r.text[:200])
                (tmp_path / f"study_{kind}.png").write_bytes(r.content)
    finally:
        server.stop()
    rows = {row["label"]: row for row in summary["rows"]}
    with capsys.disabled():  # the table docs/studies.md quotes
        print("\ndepth preset, small (width 0.125, 100 CIFAR-10 images, 1 epoch): first/last ratio, verdict")
        for label, row in rows.items():
            print(f"  {label:50s} {row['first_last_ratio']:.1e}  {row['ratio_kind']}  vanishing={row['vanishing']}")
    assert rows["arch=vgg_deep"]["vanishing"] is True and rows["arch=vgg_deep"]["first_last_ratio"] < 1e-3
    assert rows["arch=resnet18, batch_norm=true, residual=true"]["vanishing"] is False
    assert rows["arch=resnet34, batch_norm=true, residual=true"]["vanishing"] is False
    assert rows["arch=vgg11"]["params"] < rows["arch=vgg13"]["params"] < rows["arch=vgg16"]["params"]
    for row in rows.values():
        assert row["params"] > 0 and row["flops_per_image"] > 0 and row["seconds"] > 0 and row["test_acc"] is not None
