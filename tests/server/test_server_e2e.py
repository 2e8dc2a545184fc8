"""End to end: a real ``deepgrad-server`` process trains small vgg_deep and resnet18 jobs on real CIFAR-10
images, and every GET endpoint returns what docs/api.md promises."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import LiveServer, wait_for
from PIL import Image

from deepgrad_core.plots import COMPARE_KINDS, JOB_KINDS


def cifar_job(arch: str, width: float) -> dict[str, Any]:
    return {"name": f"e2e-{arch}", "model": {"arch": arch, "width": width},
            "data": {"name": "cifar10", "subset": 10, "test_subset": 5},
            "train": {"epochs": 2, "batch_size": 25}, "tracking": {"activation_every": 2, "flush_every": 3}}


STEPS_PER_EPOCH = 4  # 100 images / batch 25


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, cifar10_root: Path) -> Iterator[tuple[LiveServer, dict]]:
    """One server that has run a vgg_deep and a resnet18 job to the end."""
    server = LiveServer(tmp_path_factory.mktemp("e2e"), cifar10_root).start()
    try:
        with server.client() as client:
            ids = {}
            for arch, width in (("vgg_deep", 0.25), ("resnet18", 0.125)):
                r = client.post("/jobs", json=cifar_job(arch, width))
                assert r.status_code == 201, r.text
                assert r.headers["location"] == f"/jobs/{r.json()['id']}"
                ids[arch] = r.json()["id"]
            for job_id in ids.values():
                job = wait_for(client, job_id)
                assert job["state"] == "succeeded", job
        yield server, ids
    finally:
        server.stop()


@pytest.fixture
def client(finished: tuple[LiveServer, dict]) -> Iterator[httpx.Client]:
    with finished[0].client() as c:
        yield c


@pytest.fixture
def ids(finished: tuple[LiveServer, dict]) -> dict[str, str]:
    return finished[1]


def test_job_detail_has_results(client: httpx.Client, ids: dict[str, str]) -> None:
    job = client.get(f"/jobs/{ids['vgg_deep']}").json()
    assert job["name"] == "e2e-vgg_deep" and job["attempts"] == 1
    assert job["spec"]["model"]["batch_norm"] is False  # stored resolved: family defaults written out
    assert job["environment"]["torch"] and job["environment"]["device"] == "cpu"
    assert 0.0 <= job["final"]["test_acc"] <= 1.0
    assert job["cost"]["total_params"] > 0 and job["cost"]["flops_per_image"] > 0
    assert [la["name"] for la in job["layers"]] == [f"conv{i}" for i in range(1, 18)]
    assert job["progress"]["epoch"] == 2 and job["progress"]["step"] == 2 * STEPS_PER_EPOCH
    assert job["started_at"] <= job["finished_at"]
    weight = job["summary"]["weight"]
    assert weight["first_last_ratio"] > 0 and isinstance(weight["vanishing"], bool)


def test_list_filters_by_state_and_name(client: httpx.Client, ids: dict[str, str]) -> None:
    everything = client.get("/jobs").json()
    assert everything["count"] == 2
    assert [j["id"] for j in everything["data"]] == [ids["resnet18"], ids["vgg_deep"]]  # newest first
    assert client.get("/jobs", params={"state": "running"}).json() == {"data": [], "count": 0}
    named = client.get("/jobs", params={"name": "vgg"}).json()
    assert [j["id"] for j in named["data"]] == [ids["vgg_deep"]]
    page = client.get("/jobs", params={"limit": 1, "offset": 1}).json()
    assert page["count"] == 2 and [j["id"] for j in page["data"]] == [ids["vgg_deep"]]


def test_metrics_has_every_epoch(client: httpx.Client, ids: dict[str, str]) -> None:
    m = client.get(f"/jobs/{ids['resnet18']}/metrics").json()
    assert [e["epoch"] for e in m["epochs"]] == [0, 1]
    expected = {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds", "images_per_sec"}
    assert expected <= set(m["epochs"][0])
    assert len(m["confusion"]) == 10 and sum(map(sum, m["confusion"])) == 50
    assert len(m["per_class"]) == 10
    means = m["layer_means"]["weight"]  # the per-layer table, kept out of the Job response
    resnet18 = {f"conv{i}" for i in range(1, 18)} | {f"shortcut{i}" for i in range(1, 4)}  # 17 main-path convs
    assert set(means) == resnet18 and all(len(v) == 2 for v in means.values())
    assert "mean_per_epoch" not in client.get(f"/jobs/{ids['resnet18']}").json()["summary"]["weight"]


def test_gradients_full_series(client: httpx.Client, ids: dict[str, str]) -> None:
    s = client.get(f"/jobs/{ids['vgg_deep']}/gradients").json()
    assert s["kind"] == "weight" and not s["downsampled"]
    assert s["steps"] == list(range(2 * STEPS_PER_EPOCH))
    assert [la["name"] for la in s["layers"]] == [f"conv{i}" for i in range(1, 18)]
    assert s["layers"][0]["relative_depth"] == 0.0 and s["layers"][-1]["relative_depth"] == 1.0
    assert len(s["values"]) == 17 and all(len(v) == 8 and all(x > 0 for x in v) for v in s["values"])


def test_gradients_selection_range_and_downsampling(client: httpx.Client, ids: dict[str, str]) -> None:
    url = f"/jobs/{ids['resnet18']}/gradients"
    act = client.get(url, params={"kind": "activation", "layers": "conv2,conv5"}).json()
    assert act["steps"] == [0, 2, 4, 6] and [la["name"] for la in act["layers"]] == ["conv2", "conv5"]
    part = client.get(url, params={"start": 2, "end": 6}).json()
    assert part["steps"] == [2, 3, 4, 5]
    small = client.get(url, params={"max_points": 4, "layers": "conv1"}).json()
    assert small["downsampled"] and small["records"] == 8 and small["total_steps"] == 8 and len(small["steps"]) <= 4
    full = client.get(url, params={"layers": "conv1"}).json()["values"][0]
    assert min(small["values"][0]) == min(full) and max(small["values"][0]) == max(full)  # extremes kept
    bad = client.get(url, params={"layers": "conv2,conv99"})
    assert bad.status_code == 422
    (error,) = bad.json()["detail"]
    assert error["loc"] == ["query", "layers"] and "conv99" in error["msg"]


def test_gradients_csv_is_the_full_table(client: httpx.Client, ids: dict[str, str]) -> None:
    r = client.get(f"/jobs/{ids['vgg_deep']}/gradients.csv")
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["step"] + [f"conv{i}" for i in range(1, 18)]
    assert [int(row[0]) for row in rows[1:]] == list(range(8))
    series = client.get(f"/jobs/{ids['vgg_deep']}/gradients", params={"layers": "conv3"}).json()["values"][0]
    assert [float(row[3]) for row in rows[1:]] == pytest.approx(series, rel=1e-6)


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_job_plots_are_pngs(client: httpx.Client, ids: dict[str, str], kind: str) -> None:
    for job_id in ids.values():
        r = client.get(f"/jobs/{job_id}/plots/{kind}.png")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(r.content))
        image.load()
        assert image.width > 300 and image.height > 200


def test_plot_parameters(client: httpx.Client, ids: dict[str, str]) -> None:
    url = f"/jobs/{ids['vgg_deep']}/plots"
    assert client.get(f"{url}/selected.png", params={"layers": "conv2,conv5,conv8,conv17"}).status_code == 200
    assert client.get(f"{url}/norms.png", params={"norm_kind": "activation", "smooth": 3}).status_code == 200
    assert client.get(f"{url}/depth.png", params={"epochs": "1,2"}).status_code == 200
    assert client.get(f"{url}/nonsense.png").status_code == 422
    assert client.get(f"{url}/depth.png", params={"epochs": "x"}).status_code == 422


@pytest.mark.parametrize("kind", COMPARE_KINDS)
def test_compare_plots_are_pngs(client: httpx.Client, ids: dict[str, str], kind: str) -> None:
    r = client.get(f"/compare/plots/{kind}.png", params={"ids": f"{ids['vgg_deep']},{ids['resnet18']}"})
    assert r.status_code == 200, r.text
    Image.open(io.BytesIO(r.content)).load()


def test_compare_aligns_epochs_and_depth(client: httpx.Client, ids: dict[str, str]) -> None:
    c = client.get("/compare", params={"ids": f"{ids['vgg_deep']},{ids['resnet18']}"}).json()
    assert [j["arch"] for j in c["jobs"]] == ["vgg_deep", "resnet18"]
    assert all(j["params"] > 0 and j["flops_per_image"] > 0 and j["epochs_completed"] == 2 for j in c["jobs"])
    assert [e["epoch"] for e in c["by_epoch"]] == [0, 1]
    assert set(c["by_epoch"][1]["jobs"]) == set(ids.values())
    for job_id, n in ((ids["vgg_deep"], 17), (ids["resnet18"], 20)):
        depth = c["by_depth"][job_id]
        assert len(depth) == n and depth[0]["relative_depth"] == 0 and depth[-1]["relative_depth"] == 1
    differences = {d["key"]: d["values"] for d in c["differences"]}
    assert differences["model.arch"] == ["vgg_deep", "resnet18"] and "train.epochs" not in differences
    assert client.get("/compare", params={"ids": "abc"}).status_code == 422


def test_events_of_a_finished_job(client: httpx.Client, ids: dict[str, str]) -> None:
    with client.stream("GET", f"/jobs/{ids['vgg_deep']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [block.split("\n") for block in text.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names == ["state", "progress", "end"]
    assert json.loads(events[-1][1].removeprefix("data: "))["state"] == "succeeded"


def test_models_and_health(finished: tuple[LiveServer, dict], client: httpx.Client) -> None:
    models = client.get("/models").json()
    assert models["archs"] == ["vgg11", "vgg13", "vgg16", "vgg_deep", "resnet18", "resnet34"]
    assert models["options"]["kernel_size"]["allowed"] == [3, 5, 7]
    assert models["family_defaults"]["vgg_deep"]["extra_convs"] == 4
    health = httpx.get(finished[0].url + "/health").json()  # no token needed
    assert health == {"status": "ok", "version": "0.1.0", "queued": 0, "running": 0, "worker": "alive",
                      "executor": "local", "slots": 1}
    assert client.get("/openapi.json").json()["info"]["title"] == "DeepGrad"
    assert "swagger" in client.get("/docs").text.lower()
    assert httpx.get(finished[0].url + "/openapi.json").status_code == 401


def test_delete_removes_everything(finished: tuple[LiveServer, dict], client: httpx.Client,
                                   ids: dict[str, str]) -> None:
    job_id = ids["resnet18"]
    assert (finished[0].data_dir / "jobs" / job_id).is_dir()  # its checkpoint
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{job_id}/gradients").status_code == 404
    assert not (finished[0].data_dir / "jobs" / job_id).exists()
    assert client.delete(f"/jobs/{job_id}").status_code == 404
    ids.pop("resnet18")


def test_histograms_of_chosen_layers_and_steps(client: httpx.Client, ids: dict[str, str]) -> None:
    url = f"/jobs/{ids['vgg_deep']}/histograms"
    body = client.get(url).json()  # default: every layer, first and last recorded step
    assert body["recorded_steps"] == 1 and body["steps"] == [0] == [body["first_step"]]  # every 100 steps: step 0
    assert len(body["edges_log10"]) == 57 and [la["name"] for la in body["layers"]] == [f"conv{i}" for i in
                                                                                           range(1, 18)]
    counts = body["counts"][0]
    assert len(counts) == 17 and all(len(row) == 56 for row in counts)
    assert sum(counts[0]) == 3 * 16 * 9  # conv1 of width 0.25: every weight-gradient element counted once
    one = client.get(url, params={"layers": "conv17,conv1", "steps": "0"}).json()
    assert [la["name"] for la in one["layers"]] == ["conv17", "conv1"] and one["counts"][0][1] == counts[0]
    bad = client.get(url, params={"steps": "5"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "steps"]
    assert client.get(url, params={"layers": "conv99"}).status_code == 422
    assert client.get(url, params={"steps": "x"}).status_code == 422
