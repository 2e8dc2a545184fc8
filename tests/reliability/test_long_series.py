"""Reading a long series costs memory bounded by the answer, not by the series (issue 11).

A 2,000,000-step x 17-layer series made one ``GET /gradients`` raise the server's RSS by 1.2 GiB. Here a
series of 400,000 steps x 17 layers (27 MB of float32 as stored; the reads the server did before held 2-4
copies of it, in float64) is read through every path that touches a whole series: JSON (downsampled, a step
range, some layers), CSV, the figures, compare. Allocations are traced (numpy reports to tracemalloc): the
peak of each read must stay far below the series' own size. ``bench/store.py`` measures RSS for 2M steps.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from live import TOKEN

from deepgrad_core.norms import NormBlock
from deepgrad_server import store
from deepgrad_server.app import create_app
from deepgrad_server.cache import JobCache
from deepgrad_server.settings import Settings

STEPS, LAYERS, BLOCK = 400_000, tuple(f"conv{i}" for i in range(1, 18)), 4000
SERIES_BYTES = STEPS * len(LAYERS) * 4
# What a read may hold at its peak: a page of the series (32,768 steps: 2.2 MiB here) and the work on it, plus its
# answer (as Python objects and JSON text: ~400 bytes per value sent). The reads before held 2-4 copies of the
# whole series (52-104 MiB here); this bound does not grow with the series.
BOUND = 16 << 20
PER_VALUE_SENT = 400
# A figure draws from at most a million values of a series (its min/max rows beyond that): a bound that does not
# grow with the series, the 64 MiB per read.
FIGURE_BOUND = 64 << 20


@pytest.fixture(scope="module")
def long_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("long"), token=TOKEN, worker=False)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        db = client.app.state.db
        rng = np.random.default_rng(0)
        with db.writing() as s:
            job, _ = store.create_job(s, spec={"model": {"arch": "vgg_deep"}}, name="long", idempotency_key=None,
                                      max_queued=10)
            store.update_job(s, job_id=job.id, state="succeeded", steps_per_epoch=50_000,
                             layers=[{"name": n, "path": f"f.{i}", "kind": "conv", "depth": i}
                                     for i, n in enumerate(LAYERS)])
            registered: set[str] = set()
            for first in range(0, STEPS, BLOCK):
                values = rng.random((BLOCK, len(LAYERS)), dtype=np.float32) * np.logspace(-6, 0, len(LAYERS))
                if first == 200_000:
                    values[123, 4] = np.nan  # a NaN deep inside must survive every downsampling
                store.append_norms(s, job_id=job.id, registered=registered, block=NormBlock(
                    "weight", np.arange(first, first + BLOCK), LAYERS, values.astype(np.float32)))
            for e in range(8):
                store.put_epoch(s, job_id=job.id, metrics={"epoch": e, "train_loss": 1.0, "train_acc": 0.5,
                                                           "test_loss": 1.0, "test_acc": 0.5, "lr": 0.1})
        yield client, job.id


def _peak(read) -> tuple[int, object]:  # noqa: ANN001
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = read()
        return tracemalloc.get_traced_memory()[1] - base, out
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("params", [{}, {"max_points": 20_000}, {"layers": "conv1,conv17"},
                                    {"start": 100_000, "end": 350_000}, {"kind": "weight", "max_points": 2}])
def test_gradients_json_memory_is_bounded_by_the_answer(long_job: tuple[TestClient, str], params: dict) -> None:
    client, job_id = long_job
    client.app.state.series_cache = JobCache(max_bytes=1 << 30)  # cold: nothing cached from an earlier read
    peak, r = _peak(lambda: client.get(f"/jobs/{job_id}/gradients", params=params))
    assert r.status_code == 200, r.text
    body = r.json()
    lo, hi = params.get("start", 0), params.get("end", STEPS)
    assert body["records"] == body["total_steps"] == hi - lo and body["steps"][0] == lo and body["steps"][-1] == hi - 1
    assert len(body["steps"]) <= params.get("max_points", 2000)
    if "layers" not in params and lo <= 200_123 < hi:
        assert any(v is None for v in body["values"][4])  # the NaN is shown, not smoothed away
    sent = len(body["steps"]) * len(body["values"])
    assert peak < BOUND + PER_VALUE_SENT * sent, f"peak {peak / 2**20:.1f} MiB for {sent} values sent, a " \
        f"{SERIES_BYTES / 2**20:.0f} MiB series"


def test_gradients_json_equals_an_in_memory_downsample(long_job: tuple[TestClient, str]) -> None:
    """Streaming block by block gives exactly what downsampling the whole series at once gives."""
    from deepgrad_core.series import downsample

    client, job_id = long_job
    with client.app.state.db.reading() as s:
        block = store.load_norms(s, job_id=job_id, kind="weight", start=1234, end=301_234)
    steps, values = downsample(block.steps, block.values[:, [0, 4, 16]], 3000)
    body = client.get(f"/jobs/{job_id}/gradients", params={"start": 1234, "end": 301_234, "max_points": 3000,
                                                           "layers": "conv1,conv5,conv17"}).json()
    assert body["steps"] == steps.tolist()
    got = np.array([[np.nan if v is None else v for v in col] for col in body["values"]]).T
    np.testing.assert_array_equal(got, values.astype(np.float32).astype(np.float64))


def test_csv_streams_in_chunks(long_job: tuple[TestClient, str]) -> None:
    """The CSV is produced page by page as it is sent. The handler and the first pieces it sends run under the
    allocation tracer (the reads before loaded the whole series before sending anything); the rest is counted
    untraced (the test client would buffer the whole body, so the response is read here as the server reads it)."""
    import anyio

    from deepgrad_server.routes.series import gradients_csv

    client, job_id = long_job

    async def consume() -> tuple[int, int, int, str]:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        response = gradients_csv(job_id, client.app.state.db, kind="weight")
        pieces = response.body_iterator.__aiter__()
        first = [await pieces.__anext__() for _ in range(4)]  # header + 3 pieces of 2,048 rows
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        rows = sum(p.count("\n") for p in first)
        size = sum(len(p) for p in first)
        async for piece in pieces:
            rows += piece.count("\n")
            size += len(piece)
        return peak, rows, size, first[0] + first[1][:40]

    peak, rows, size, head = anyio.run(consume)
    assert rows == STEPS + 1 and size > SERIES_BYTES  # every step, and the text is larger than the floats
    assert head.startswith("step," + ",".join(LAYERS) + "\n0,")
    assert peak < BOUND, f"peak {peak / 2**20:.1f} MiB sending the first pieces of a {size / 2**20:.0f} MiB CSV"


@pytest.mark.parametrize(("url", "params", "bound"), [("/jobs/{id}/plots/norms.png", {}, FIGURE_BOUND),
                                                      ("/jobs/{id}/plots/heatmap.png", {"smooth": "5"}, FIGURE_BOUND),
                                                      ("/jobs/{id}/plots/selected.png", {}, FIGURE_BOUND),
                                                      ("/jobs/{id}/plots/depth.png", {}, BOUND),
                                                      ("/jobs/{id}/plots/depth.png", {"epochs": "2,7"}, BOUND),
                                                      ("/compare/plots/depth.png", {"ids": "{id}"}, BOUND),
                                                      ("/compare", {"ids": "{id}"}, BOUND)])
def test_figures_and_compare_read_a_bounded_part(long_job: tuple[TestClient, str], url: str, params: dict,
                                                 bound: int) -> None:
    """Lines and heatmaps draw from at most a million values of the series; depth profiles and compare from
    per-epoch means streamed out of the store."""
    client, job_id = long_job
    client.app.state.series_cache = JobCache(max_bytes=1 << 30)
    client.app.state.plot_cache = JobCache(max_bytes=1 << 30)
    params = {k: v.format(id=job_id) for k, v in params.items()}
    peak, r = _peak(lambda: client.get(url.format(id=job_id), params=params))
    assert r.status_code == 200, r.text
    assert peak < bound, f"{url}: peak {peak / 2**20:.1f} MiB for a {SERIES_BYTES / 2**20:.0f} MiB series"


def test_depth_figure_names_the_epochs_it_has(long_job: tuple[TestClient, str]) -> None:
    client, job_id = long_job
    r = client.get(f"/jobs/{job_id}/plots/depth.png", params={"epochs": "9"})
    assert r.status_code == 404 and "1..8" in r.json()["detail"]


def test_series_cache_is_bounded_by_bytes() -> None:
    cache = JobCache(max_bytes=10 << 20)
    for i in range(50):
        cache.put(("k", i), frozenset({f"job{i}"}), np.zeros(1 << 18, np.float32))  # 1 MiB each
    assert cache.bytes <= 10 << 20 and len(cache) == 10
    cache.put(("huge",), frozenset({"x"}), np.zeros(1 << 20, np.float32))  # 4 MiB: more than a quarter
    assert cache.get(("huge",)) is None and cache.bytes <= 10 << 20
    cache.drop("job49")
    assert cache.get(("k", 49)) is None and len(cache) == 9


def test_reads_of_a_running_job_see_new_blocks(tmp_path: Path) -> None:
    """Nothing is cached for a running job: a second read sees what was appended since."""
    settings = Settings(data_dir=tmp_path, token=TOKEN, worker=False)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        db = client.app.state.db
        with db.writing() as s:
            job, _ = store.create_job(s, spec={"model": {"arch": "vgg_deep"}}, name="r", idempotency_key=None,
                                      max_queued=10)
            store.update_job(s, job_id=job.id, state="running", steps_per_epoch=10)
            store.append_norms(s, job_id=job.id, block=NormBlock("weight", np.arange(10), ("conv1",),
                                                                  np.ones((10, 1), np.float32)))
        assert client.get(f"/jobs/{job.id}/gradients").json()["records"] == 10
        with db.writing() as s:
            store.append_norms(s, job_id=job.id, block=NormBlock("weight", np.arange(10, 25), ("conv1",),
                                                                  np.ones((15, 1), np.float32)))
        assert client.get(f"/jobs/{job.id}/gradients").json()["records"] == 25
