"""Plots served from stored data: odd data (nothing yet, one point, NaN/inf) gives a figure or a clear 404/409,
never a 500; a finished job's figure is rendered once and then served from the cache."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from deepgrad_core.histograms import BINS, HistBlock
from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import COMPARE_KINDS, JOB_KINDS
from deepgrad_server import store
from deepgrad_server.routes import plots as plot_routes

LAYERS = tuple(f"conv{i}" for i in range(1, 6))


def seed(client: httpx.Client, *, state: str, steps: int, values: np.ndarray | None = None,
         epochs: int = 0, filters: bool = False) -> str:
    """A job row in ``state`` with ``steps`` recorded weight-norm steps (and ``epochs`` epochs of metrics)."""
    db = client.app.state.db
    with db.writing() as s:
        job, _ = store.create_job(s, spec={"model": {"arch": "vgg_deep"}}, name=f"{state}-{steps}",
                                  idempotency_key=None, max_queued=100)
        layers = [{"name": n, "path": f"f.{i}", "kind": "conv", "depth": i} for i, n in enumerate(LAYERS)]
        store.update_job(s, job_id=job.id, state=state, steps_per_epoch=4, layers=layers,
                         cost={"total_params": 10, "flops_per_image": 20, "layers": []},
                         filters=store.encode_array(np.random.default_rng(0).random((8, 3, 3, 3))) if filters else None)
        if steps:
            v = values if values is not None else np.random.default_rng(1).random((steps, len(LAYERS)))
            store.append_norms(s, job_id=job.id, block=NormBlock("weight", np.arange(steps), LAYERS,
                                                                  v.astype(np.float32)))
            hist_steps = np.arange(0, steps, 4)  # as a job records them: from step 0, every histogram_every
            counts = np.random.default_rng(2).random((len(hist_steps), len(LAYERS), BINS)).astype(np.float32)
            store.append_histograms(s, job_id=job.id, block=HistBlock(hist_steps, LAYERS, counts))
        for e in range(epochs):
            store.put_epoch(s, job_id=job.id, metrics={"epoch": e, "train_loss": 1.0, "train_acc": 0.5,
                                                       "test_loss": 1.1, "test_acc": 0.4, "lr": 0.1})
    return job.id


def get_plot(client: httpx.Client, url: str, **params: object) -> httpx.Response:
    r = client.get(url, params=params)
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        Image.open(io.BytesIO(r.content)).load()
    else:
        assert r.json()["detail"]
    return r


@pytest.mark.parametrize("kind", JOB_KINDS)
def test_queued_job_is_409(app_client: httpx.Client, kind: str) -> None:
    job_id = seed(app_client, state="queued", steps=0)
    assert get_plot(app_client, f"/jobs/{job_id}/plots/{kind}.png").status_code == 409


@pytest.mark.parametrize("kind", JOB_KINDS)
@pytest.mark.parametrize(("state", "steps", "epochs"), [("running", 0, 0), ("running", 1, 0), ("running", 9, 2),
                                                         ("succeeded", 1, 1), ("failed", 0, 0)])
def test_sparse_data_never_500(app_client: httpx.Client, kind: str, state: str, steps: int, epochs: int) -> None:
    job_id = seed(app_client, state=state, steps=steps, epochs=epochs)
    r = get_plot(app_client, f"/jobs/{job_id}/plots/{kind}.png")
    if r.status_code != 200:
        assert r.status_code == (409 if state == "running" else 404)


@pytest.mark.parametrize("kind", ["norms", "selected", "heatmap", "depth"])
def test_nonfinite_values_draw(app_client: httpx.Client, kind: str) -> None:
    values = np.random.default_rng(2).random((12, len(LAYERS)))
    values[5, 1], values[7, 2], values[9:] = np.nan, np.inf, np.nan  # diverged at step 9
    job_id = seed(app_client, state="diverged", steps=12, values=values, epochs=2)
    assert get_plot(app_client, f"/jobs/{job_id}/plots/{kind}.png").status_code == 200
    series = app_client.get(f"/jobs/{job_id}/gradients").json()
    assert series["values"][1][5] is None and series["values"][0][11] is None


def test_activation_norms_never_recorded_is_404(app_client: httpx.Client) -> None:
    job_id = seed(app_client, state="succeeded", steps=8, epochs=2)
    r = get_plot(app_client, f"/jobs/{job_id}/plots/norms.png", norm_kind="activation")
    assert r.status_code == 404 and "activation" in r.json()["detail"]


@pytest.mark.parametrize("kind", COMPARE_KINDS)
def test_compare_plots_mixed_jobs(app_client: httpx.Client, kind: str) -> None:
    done = seed(app_client, state="succeeded", steps=8, epochs=2, filters=True)
    running = seed(app_client, state="running", steps=3, epochs=0)
    assert get_plot(app_client, f"/compare/plots/{kind}.png", ids=f"{done},{done}").status_code == 200
    get_plot(app_client, f"/compare/plots/{kind}.png", ids=f"{done},{running}")
    queued = seed(app_client, state="queued", steps=0)
    assert get_plot(app_client, f"/compare/plots/{kind}.png", ids=f"{done},{queued}").status_code == 409


def test_finished_job_renders_once(app_client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = plot_routes.render_job
    monkeypatch.setattr(plot_routes, "render_job", lambda *a, **k: calls.append(a) or real(*a, **k))
    done = seed(app_client, state="succeeded", steps=8, epochs=2)
    running = seed(app_client, state="running", steps=8, epochs=2)
    first = app_client.get(f"/jobs/{done}/plots/heatmap.png")
    again = app_client.get(f"/jobs/{done}/plots/heatmap.png")
    assert first.content == again.content and len(calls) == 1
    assert "max-age" in first.headers["cache-control"]
    app_client.get(f"/jobs/{running}/plots/heatmap.png")
    app_client.get(f"/jobs/{running}/plots/heatmap.png")
    assert len(calls) == 3  # a running job's figure changes: never cached
    assert app_client.delete(f"/jobs/{done}").status_code == 204
    assert app_client.get(f"/jobs/{done}/plots/heatmap.png").status_code == 404
