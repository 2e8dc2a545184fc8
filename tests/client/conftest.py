"""Fixtures for the client tests: the real server app under uvicorn on a loopback port, in this process.

Two servers share the session: ``server`` runs the embedded worker (tiny jobs really train, on the CPU);
``idle_server`` has no worker, so its jobs stay queued -- submit, list, cancel and delete need no training.
Both sit behind ``Flaky``, which can lose the answers to chosen requests the way a proxy does, to test
the client's retries against the real app.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner, Result
from client_live import TINY, TOKEN, Flaky, Live, serve

from deepgrad_client import Event
from deepgrad_client.cli import cli


@pytest.fixture(scope="session")
def live_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from deepgrad_server.app import create_app
    from deepgrad_server.settings import Settings

    started: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(name: str, *, worker: bool) -> Live:
        data_dir = tmp_path_factory.mktemp(name)
        settings = Settings(data_dir=data_dir, token=TOKEN, worker=worker, device="cpu", max_epochs=100)
        flaky = Flaky(create_app(settings))
        server, thread, url = serve(flaky)
        started.append((server, thread))
        return Live(url=url, token=TOKEN, flaky=flaky, data_dir=data_dir)

    yield start
    for server, _ in started:
        server.should_exit = True
    for _, thread in started:
        thread.join(30)


@pytest.fixture(scope="session")
def server(live_factory: Any) -> Live:
    """The real app with its worker: submitted jobs train."""
    return live_factory("worker-server", worker=True)


@pytest.fixture(scope="session")
def idle_server(live_factory: Any) -> Live:
    """The real app without a worker: submitted jobs stay queued."""
    return live_factory("idle-server", worker=False)


@pytest.fixture
def idle(idle_server: Live) -> Iterator[Live]:
    idle_server.flaky.reset()
    yield idle_server
    idle_server.flaky.reset()


@dataclass
class Finished:
    """Two tiny jobs run to the end, and what the client and the CLI saw while they ran."""

    residual: dict[str, Any]
    plain: dict[str, Any]
    events: list[Event]  # Client.events() of the residual job, start to end
    watch: Result  # `deepgrad-client watch` of the residual job, at the same time
    progress_calls: list[dict[str, Any]]  # Client.wait(progress=...) of the plain job

    @property
    def ids(self) -> list[str]:
        return [self.residual["id"], self.plain["id"]]


@pytest.fixture(scope="session")
def finished(server: Live) -> Finished:
    """ResNet-18 and its plain twin (no shortcuts), trained 2 epochs: one followed by events, one by polling."""
    events: list[Event] = []

    def collect(job_id: str) -> None:
        with server.client() as client:
            events.extend(client.events(job_id))

    with server.client() as client:
        # The plain one first: the server's one worker takes it at once, so the residual one waits "queued"
        # behind it while its event stream and `watch` begin (both must see every state).
        plain = client.submit({**TINY, "model": {**TINY["model"], "residual": False}}, name="tiny-plain")
        residual = client.submit(TINY, name="tiny-residual")
        collector = threading.Thread(target=collect, args=(residual["id"],))
        collector.start()
        watch = CliRunner(env={"COLUMNS": "200"}).invoke(
            cli, ["--url", server.url, "--token", server.token, "watch", residual["id"]])
        collector.join(120)
        calls: list[dict[str, Any]] = []
        plain = client.wait(plain["id"], progress=calls.append, poll=0.2, timeout=120)
        residual = client.get(residual["id"])
    return Finished(residual=residual, plain=plain, events=events, watch=watch, progress_calls=calls)


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's own DeepGrad settings (env, config file, local token) out of every test."""
    for name in ("DEEPGRAD_URL", "DEEPGRAD_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DEEPGRAD_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.setenv("DEEPGRAD_DATA_DIR", str(tmp_path / "no-data-dir"))
