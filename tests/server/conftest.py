"""Fixtures for the server tests: a live ``deepgrad-server`` process, or the app in-process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import TOKEN, LiveServer

from deepgrad_server.app import create_app
from deepgrad_server.settings import Settings


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path / "server", None)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[httpx.Client]:
    """The app in-process (no worker): fast checks of validation, auth and limits."""
    from fastapi.testclient import TestClient

    settings = Settings(data_dir=tmp_path / "app", token=TOKEN, worker=False)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client
