"""``deepgrad_client.Client`` against the real server app on a loopback port."""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from client_live import REPO, TINY, Live, closed_port_url
from PIL import Image

from deepgrad_client import (
    APIError,
    AuthError,
    Client,
    ConnectError,
    Gradients,
    InputError,
    NotFound,
    WaitTimeout,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LONG = {**TINY, "train": {**TINY["train"], "epochs": 50}}  # never trains here: the idle server has no worker


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _decode_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size


def _cancel(live: Live, job_id: str) -> None:
    with live.client() as client:
        client.cancel(job_id)


# -- auth and connection -------------------------------------------------------------------------

def test_health_needs_no_token(idle: Live) -> None:
    with Client(idle.url) as client:
        assert client.health()["status"] == "ok"


def test_missing_token_raises_auth_error_with_hint(idle: Live) -> None:
    with Client(idle.url) as client, pytest.raises(AuthError) as caught:
        client.list()
    assert caught.value.status == 401
    assert "missing bearer token" in str(caught.value)
    assert "DEEPGRAD_TOKEN" in str(caught.value)  # the client's hint on where a token goes


def test_wrong_token_raises_auth_error(idle: Live) -> None:
    with Client(idle.url, "not-the-token-at-all") as client, pytest.raises(AuthError, match="wrong bearer token"):
        client.get("0123456789ab")


def test_token_from_local_token_file(idle: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "token").write_text(idle.token + "\n")
    monkeypatch.setenv("DEEPGRAD_DATA_DIR", str(tmp_path / "srv"))
    monkeypatch.setenv("DEEPGRAD_URL", idle.url)
    with Client() as client:
        assert client.list(limit=1)["count"] >= 0


def test_unreachable_server_raises_connect_error(idle: Live) -> None:
    url = closed_port_url()
    with Client(url, "x" * 20, retries=2, backoff=0.001) as client, pytest.raises(ConnectError) as caught:
        client.health()
    assert url in str(caught.value) and caught.value.url == url


# -- submit and the job lifecycle (idle server: jobs stay queued) ---------------------------------

def test_submit_dict_yaml_and_json_files(idle: Live, tmp_path: Path) -> None:
    name = _unique("files")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(LONG))
    (tmp_path / "tiny.json").write_text(json.dumps(LONG))
    with idle.client() as client:
        jobs = [client.submit(LONG, name=name), client.submit(tmp_path / "tiny.yaml", name=name),
                client.submit(str(tmp_path / "tiny.json"), name=name)]
        assert {job["state"] for job in jobs} == {"queued"}
        assert all(job["spec"]["model"]["arch"] == "resnet18" for job in jobs)
        assert client.get(jobs[0]["id"])["name"] == name
        listed = client.list(name=name, state="queued")
    assert listed["count"] == 3
    assert [job["id"] for job in listed["data"]] == [job["id"] for job in reversed(jobs)]  # newest first


@pytest.mark.parametrize("spec_file", sorted((REPO / "specs").glob("*.yaml")), ids=lambda p: p.stem)
def test_submit_repo_spec_files_are_accepted(idle: Live, spec_file: Path) -> None:
    with idle.client() as client:
        job = client.submit(spec_file)
        client.cancel(job["id"])
    assert job["state"] == "queued"
    assert job["spec"]["model"]["arch"] == yaml.safe_load(spec_file.read_text())["model"]["arch"]


def _readme_specs() -> list[dict]:
    text = (REPO / "client" / "README.md").read_text()
    blocks = re.findall(r"```(yaml|json)\n(.*?)```", text, flags=re.S)
    parsed = [yaml.safe_load(body) if lang == "yaml" else json.loads(body) for lang, body in blocks]
    return [spec for spec in parsed if "model" in spec]  # not the config file's example


def test_readme_spec_examples_are_accepted(idle: Live) -> None:
    specs = _readme_specs()
    assert [spec["model"]["arch"] for spec in specs] == ["vgg_deep", "vgg16", "resnet18"]
    with idle.client() as client:
        for spec in specs:
            job = client.submit(spec)
            assert job["name"] == spec["name"] and job["spec"]["model"]["arch"] == spec["model"]["arch"]
            client.cancel(job["id"])


def test_submit_invalid_spec_carries_the_servers_field_messages(idle: Live) -> None:
    with idle.client() as client, pytest.raises(APIError) as caught:
        client.submit({"model": {"arch": "vgg99"}, "train": {"lr": -1}})
    error = caught.value
    assert error.status == 422 and isinstance(error.detail, list)
    lines = str(error).splitlines()
    assert any(line.strip().startswith("model.arch: ") and "vgg_deep" in line for line in lines)
    assert any(line.strip().startswith("train.lr: ") for line in lines)


def test_submit_over_the_servers_limit_names_the_setting(idle: Live) -> None:
    with idle.client() as client, pytest.raises(APIError, match="train.epochs: this server allows at most 100"):
        client.submit({**TINY, "train": {"epochs": 101}})


def test_submit_with_a_bad_spec_file_raises_input_error(idle: Live, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with idle.client() as client:
        with pytest.raises(InputError, match="does not parse"):
            client.submit(tmp_path / "bad.yaml")
        with pytest.raises(InputError, match="must hold a mapping"):
            client.submit(tmp_path / "list.yaml")
        with pytest.raises(InputError, match=r"\.json, \.yaml or \.yml"):
            client.submit(tmp_path / "spec.txt")
    assert not [m for m in idle.flaky.seen if m[0] == "POST"]  # nothing was sent


def test_submit_retried_after_a_lost_answer_makes_one_job(idle: Live) -> None:
    name = _unique("retried")
    idle.flaky.fail("/jobs", times=2, status=502)  # the job is created, but the first two answers are lost
    with idle.client() as client:
        job = client.submit(LONG, name=name)
        assert client.list(name=name)["count"] == 1
    assert job["name"] == name
    assert [m for m in idle.flaky.seen if m == ("POST", "/jobs")] == [("POST", "/jobs")] * 3


def test_same_idempotency_key_returns_the_same_job(idle: Live) -> None:
    key = str(uuid.uuid4())
    with idle.client() as client:
        first = client.submit(LONG, name=_unique("key"), idempotency_key=key)
        second = client.submit(LONG, name=first["name"], idempotency_key=key)
    assert second["id"] == first["id"]


def test_retries_give_up_with_the_last_status(idle: Live) -> None:
    idle.flaky.fail("/health", times=5, status=503, forward=False)
    with idle.client(retries=2) as client, pytest.raises(APIError) as caught:
        client.health()
    assert caught.value.status == 503 and "bad gateway (test proxy)" in str(caught.value)
    assert idle.flaky.seen.count(("GET", "/health")) == 3


def test_cancel_then_delete_a_queued_job(idle: Live) -> None:
    with idle.client() as client:
        job = client.submit(LONG, name=_unique("cancel"))
        with pytest.raises(APIError) as running:
            client.delete(job["id"])
        assert running.value.status == 409 and "cancel it first" in str(running.value)
        assert client.cancel(job["id"])["state"] == "cancelled"
        with pytest.raises(APIError, match="already ended") as again:
            client.cancel(job["id"])
        assert again.value.status == 409
        client.delete(job["id"])
        with pytest.raises(NotFound, match=job["id"]):
            client.get(job["id"])


def test_cancel_and_delete_retried_after_lost_answers_succeed(idle: Live) -> None:
    with idle.client() as client:
        job = client.submit(LONG, name=_unique("lost"))
        idle.flaky.fail("/cancel")  # cancelled by the first attempt; the retry is answered 409
        assert client.cancel(job["id"])["state"] == "cancelled"
        idle.flaky.fail(f"/jobs/{job['id']}")  # deleted by the first attempt; the retry is answered 404
        client.delete(job["id"])
        with pytest.raises(NotFound):
            client.get(job["id"])


def test_unknown_and_malformed_job_ids(idle: Live) -> None:
    with idle.client() as client:
        with pytest.raises(NotFound, match="no job with id '0123456789ab'") as caught:
            client.get("0123456789ab")
        assert caught.value.status == 404
        with pytest.raises(InputError, match="not a job id"):
            client.get("../models")


def test_wait_gives_up_after_its_timeout(idle: Live) -> None:
    with idle.client() as client:
        job = client.submit(LONG, name=_unique("wait"))
        with pytest.raises(WaitTimeout, match="still queued"):
            client.wait(job["id"], poll=0.05, timeout=0.2)
        client.cancel(job["id"])


def test_events_of_a_queued_job_then_its_cancellation(idle: Live) -> None:
    with idle.client() as client:
        job = client.submit(LONG, name=_unique("events"))
        stream = client.events(job["id"])
        first = next(stream)
        assert (first.event, first.data["state"]) == ("state", "queued")
        threading.Timer(0.3, _cancel, (idle, job["id"])).start()
        rest = list(stream)
    assert [e.event for e in rest][-1] == "end"
    assert rest[-1].data["id"] == job["id"] and rest[-1].data["state"] == "cancelled"
    assert ("state", "cancelled") in [(e.event, e.data.get("state")) for e in rest]


def test_models_lists_the_archs(idle: Live) -> None:
    with idle.client() as client:
        body = client.models()
    assert set(body["archs"]) == {"vgg11", "vgg13", "vgg16", "vgg_deep", "resnet18", "resnet34"}
    assert body["options"]["kernel_size"]["allowed"] == [3, 5, 7]


# -- results of finished jobs (worker server) -----------------------------------------------------

def test_finished_jobs_succeeded_with_events_and_progress(finished) -> None:
    assert finished.residual["state"] == finished.plain["state"] == "succeeded"
    names = [e.event for e in finished.events]
    assert names[0] == "state" and names[-1] == "end"
    assert {"queued", "running", "succeeded"} <= {e.data.get("state") for e in finished.events if e.event == "state"}
    assert finished.events[-1].data["final"]["test_acc"] is not None
    assert finished.progress_calls[-1]["state"] == "succeeded"


def test_gradients_as_numpy_arrays(server: Live, finished) -> None:
    job_id = finished.residual["id"]
    with server.client() as client:
        grads = client.gradients(job_id, "weight")
        picked = client.gradients(job_id, "weight", layers=["conv1", "conv17"], start=2, end=8)
        coarse = client.gradients(job_id, "weight", max_points=4)
    assert isinstance(grads, Gradients) and grads.kind == "weight" and grads.job_id == job_id
    steps_per_epoch = finished.residual["steps_per_epoch"]
    assert grads.steps.dtype == np.int64 and list(grads.steps) == list(range(2 * steps_per_epoch))
    assert grads.values.dtype == np.float64 and grads.values.shape == (len(grads.steps), 20)
    main = [name for name, role in zip(grads.layers, grads.roles, strict=True) if role in ("stem", "main")]
    assert main == [f"conv{i}" for i in range(1, 18)] and len(grads.depths) == 20  # and 3 shortcuts
    assert np.all(np.isfinite(grads.values)) and np.all(grads.values > 0)
    assert picked.layers == ["conv1", "conv17"] and list(picked.steps) == list(range(2, 8))
    np.testing.assert_allclose(picked.series("conv17"), grads.series("conv17")[2:8], rtol=1e-6)
    assert coarse.downsampled and len(coarse.steps) <= 4 and coarse.values.shape == (len(coarse.steps), 20)
    with pytest.raises(KeyError, match="conv99"):
        grads.series("conv99")


def test_gradients_csv_and_export(server: Live, finished, tmp_path: Path) -> None:
    job_id = finished.residual["id"]
    with server.client() as client:
        text = client.gradients_csv(job_id)
        path = client.export(job_id, tmp_path / "weight.csv")
    assert path.read_text() == text
    header, *rows = text.strip().splitlines()
    assert header == "step," + ",".join(la["name"] for la in finished.residual["layers"])
    assert len(rows) == 2 * finished.residual["steps_per_epoch"]
    assert not list(tmp_path.glob("*.part"))


def test_metrics_have_one_row_per_epoch(server: Live, finished) -> None:
    with server.client() as client:
        metrics = client.metrics(finished.plain["id"])
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    assert metrics["final"]["test_acc"] == finished.plain["final"]["test_acc"]


@pytest.mark.parametrize(("kind", "params"), [("norms", {"norm_kind": "weight", "smooth": 2}),
                                              ("selected", {"layers": ["conv1", "conv17"]}),
                                              ("depth", {"epochs": [1, 2]})])
def test_plots_are_pngs(server: Live, finished, kind: str, params: dict, tmp_path: Path) -> None:
    with server.client() as client:
        path = client.save_plot(finished.residual["id"], kind, tmp_path / f"{kind}.png", **params)
    width, height = _decode_png(path.read_bytes())
    assert width > 100 and height > 100


def test_plot_with_an_unknown_layer_is_an_api_error(server: Live, finished) -> None:
    with server.client() as client, pytest.raises(APIError) as caught:
        client.plot(finished.residual["id"], "selected", layers=["conv99"])
    assert caught.value.status in (404, 422) and "conv99" in str(caught.value)


def test_compare_and_its_plot(server: Live, finished) -> None:
    with server.client() as client:
        body = client.compare(finished.ids)
        png = client.compare_plot("depth", finished.ids)
    assert [job["id"] for job in body["jobs"]] == finished.ids
    assert [row["epoch"] for row in body["by_epoch"]] == [0, 1]
    assert len(body["by_depth"][finished.ids[0]]) == 20
    assert _decode_png(png)[0] > 100


def test_list_filters_by_state(server: Live, finished) -> None:
    with server.client() as client:
        page = client.list(state="succeeded", limit=500)
    assert set(finished.ids) <= {job["id"] for job in page["data"]}
    assert all(job["state"] == "succeeded" for job in page["data"])
