"""One experiment, two sinks: the quickstart run by ``deepgrad-train`` into a folder and by the server into its
store gives bit-identical series and metrics (both run ``deepgrad_core.experiment``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from live import LiveServer, wait_for

REPO = Path(__file__).resolve().parents[2]
# The quickstart spec, shortened: 2 epochs of 8 images per class (10 steps), activations every 5th step.
OVERRIDES = {"train.epochs": 2, "data.subset": 8, "data.test_subset": 2, "train.batch_size": 16}
METRICS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")  # all but the timings


def _spec() -> dict:
    spec = yaml.safe_load((REPO / "specs" / "quickstart.yaml").read_text())
    for key, value in OVERRIDES.items():
        section, field = key.split(".")
        spec[section][field] = value
    return spec


def test_quickstart_in_process_and_on_the_server_are_bit_identical(tmp_path: Path) -> None:
    out = tmp_path / "local"
    # The same environment for both, one thread each: the local run overlaps the server's on two cores.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    sets = [arg for key, value in OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
    local = subprocess.Popen([sys.executable, "-m", "deepgrad_core.cli", str(REPO / "specs" / "quickstart.yaml"),
                              "--out", str(out), "--device", "cpu", "--json", *sets],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = LiveServer(tmp_path / "server", None, env=env).start()
    try:
        with server.client() as client:
            job_id = client.post("/jobs", json=_spec()).json()["id"]
            job = wait_for(client, job_id)
            assert job["state"] == "succeeded", job
            remote_csv = {kind: client.get(f"/jobs/{job_id}/gradients.csv", params={"kind": kind}).text
                          for kind in ("weight", "activation")}
            remote_metrics = client.get(f"/jobs/{job_id}/metrics").json()
    finally:
        server.stop()
        try:
            stdout, stderr = local.communicate(timeout=300)
        finally:
            local.kill()
    assert local.returncode == 0, stderr
    report = json.loads(stdout)
    assert report["spec"] == job["spec"]  # one resolved spec
    # Bit-identical: the CSV writes each float32 so that it reads back to the same bits, on both sides.
    for kind, text in remote_csv.items():
        assert text == (out / f"norms_{kind}.csv").read_text(), kind
    assert len(remote_csv["weight"].splitlines()) == 1 + 2 * 5 and len(remote_csv["activation"].splitlines()) == 3
    history = json.loads((out / "history.json").read_text())
    assert [{k: m[k] for k in METRICS} for m in remote_metrics["epochs"]] == [{k: m[k] for k in METRICS}
                                                                               for m in history]
    assert remote_metrics["confusion"] == report["confusion"]
    assert job["final"]["test_acc"] == report["final"]["test_acc"]
    assert job["summary"]["weight"]["first_last_ratio"] == report["summary"]["weight"]["first_last_ratio"]
    assert job["layers"] == report["layers"]
    for key in ("total_params", "flops_per_image", "layers"):
        assert job["cost"][key] == report["cost"][key], key
