"""``/health`` stays fast while figures render, and renders are bounded (issue 11).

During 24 concurrent uncached heatmaps ``/health`` took 5.5-21 s: it shared the request threads with
rendering, and a container's health check (4 s) would have restarted a server that was merely busy. Here
a live server with a 200,000-step job is asked for 24 different heatmaps at once.
"""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
from live import LiveServer  # noqa: E402

from deepgrad_core.norms import NormBlock  # noqa: E402
from deepgrad_server import store  # noqa: E402
from deepgrad_server.db import Database  # noqa: E402

STEPS, LAYERS = 60_000, tuple(f"conv{i}" for i in range(1, 18))
RENDERS = 24


def _seed(data_dir: Path) -> str:
    db = Database(f"sqlite:///{data_dir / 'deepgrad.db'}")
    rng = np.random.default_rng(0)
    with db.writing() as s:
        job, _ = store.create_job(s, spec={"model": {"arch": "vgg_deep"}}, name="busy", idempotency_key=None,
                                  max_queued=10)
        layers = [{"name": n, "path": f"f.{i}", "kind": "conv", "depth": i} for i, n in enumerate(LAYERS)]
        store.update_job(s, job_id=job.id, state="succeeded", steps_per_epoch=1000, layers=layers)
        for first in range(0, STEPS, 5000):
            store.append_norms(s, job_id=job.id, block=NormBlock("weight", np.arange(first, first + 5000), LAYERS,
                                                                  rng.random((5000, len(LAYERS)), dtype=np.float32)))
    db.dispose()
    return job.id


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> tuple[LiveServer, str]:
    data_dir = tmp_path_factory.mktemp("render") / "data"
    data_dir.mkdir()
    job_id = _seed(data_dir)
    server = LiveServer(data_dir, None, env={"DEEPGRAD_WORKER": "false", "DEEPGRAD_RENDER_THREADS": "1",
                                             "DEEPGRAD_RENDER_QUEUE": "8"}).start()
    yield server, job_id
    server.stop()


def test_health_answers_fast_while_figures_render(busy: tuple[LiveServer, str]) -> None:
    server, job_id = busy
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not done.is_set():
                t = time.monotonic()
                assert c.get("/health").status_code == 200
                latencies.append(time.monotonic() - t)
                time.sleep(0.05)

    def render(i: int) -> httpx.Response:
        with server.client() as c:  # a different max_points each: 24 uncached figures
            return c.get(f"/jobs/{job_id}/plots/heatmap.png", params={"max_points": 1000 + i}, timeout=120)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(RENDERS) as pool:
            answers = list(pool.map(render, range(RENDERS)))
    finally:
        done.set()
        prober.join()
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 2 and codes.count(503) >= 1, codes  # one rendering + 8 queued: the rest refused
    assert all(r.headers["retry-after"] for r in answers if r.status_code == 503)
    assert all(r.content.startswith(b"\x89PNG") for r in answers if r.status_code == 200)
    assert len(latencies) >= 5 and max(latencies) < 2.0, f"/health took up to {max(latencies):.2f} s"
    with server.client() as c:  # refused figures render once asked again
        assert c.get(f"/jobs/{job_id}/plots/heatmap.png", params={"max_points": 1000 + codes.index(503)}
                     ).status_code == 200
