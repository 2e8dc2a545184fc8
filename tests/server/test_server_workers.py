"""One worker per device: DEEPGRAD_DEVICE=cuda:0,cuda:1 trains two jobs at once (shown here with cpu,cpu)."""

from __future__ import annotations

from pathlib import Path

import pytest
from live import TINY, LiveServer, wait_for
from pydantic import ValidationError

from deepgrad_server.settings import Settings


def test_two_devices_run_two_jobs_at_once(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "srv", None, env={"DEEPGRAD_DEVICE": "cpu,cpu"}).start()
    # Both are claimed the moment they are queued (POST /jobs wakes the workers) and both wait for the fork server
    # to finish importing torch, so they start together; 25 steps an epoch keep them training side by side.
    spec = {**TINY, "data": {**TINY["data"], "subset": 40}, "train": {"epochs": 2, "batch_size": 16}}
    try:
        with server.client() as client:
            ids = [client.post("/jobs", json=spec).json()["id"] for _ in range(2)]
            wait_for(client, ids[0], until=lambda j: j["state"] == "running")
            both = wait_for(client, ids[1], until=lambda j: j["state"] == "running")
            assert client.get(f"/jobs/{ids[0]}").json()["state"] == "running", "the first job should still run"
            assert both["attempts"] == 1
            assert [wait_for(client, i)["state"] for i in ids] == ["succeeded", "succeeded"]
    finally:
        server.stop()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu;rm -rf /", "cuda:0,"])
def test_device_setting_is_checked(device: str) -> None:
    with pytest.raises(ValidationError, match="device"):
        Settings(device=device)
    assert Settings(device="cuda:0, cuda:1".replace(" ", "")).devices == ["cuda:0", "cuda:1"]
    assert Settings().devices == [None]
