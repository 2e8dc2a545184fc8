"""The CLI as a new user meets it (issue 12): cost before training, what differs between jobs, which verdict,
what a cancel did, where a missing token is looked for, a list that fits 80 columns."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import yaml
from click.testing import CliRunner, Result
from client_live import TINY, Live

from deepgrad_client.cli import cli

REPO = Path(__file__).resolve().parents[2]


def run(live: Live | None, *args: str, columns: int = 200) -> Result:
    base = [] if live is None else ["--url", live.url, "--token", live.token]
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(cli, [*base, *args], catch_exceptions=False)


def test_cost_table_across_the_study_specs(idle: Live) -> None:
    specs = [str(REPO / "specs" / f"{m}.yaml") for m in ("vgg16", "vgg_deep", "resnet18")]
    result = run(idle, "cost", *specs)
    assert result.exit_code == 0, result.output
    for name in ("vgg16", "vgg_deep", "resnet18", "11.2M", "GFLOPs/image", "GMACs/image"):
        assert name in result.stdout
    assert re.search(r"resnet18\s.*\s1\.11\d\s.*\s0\.55\d", result.stdout)  # FLOPs = 2 x multiply-adds
    body = json.loads(run(idle, "cost", specs[2], "--set", "model.width=0.5", "--json").stdout)
    assert body[0]["spec"]["model"]["width"] == 0.5 and body[0]["cost"]["total_params"] < 11_173_962 / 3


def test_list_and_status_say_what_each_spec_sets(idle: Live, tmp_path: Path) -> None:
    spec = tmp_path / "k5.yaml"
    spec.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "kernel_size": 5}}))
    name = f"k5-{uuid.uuid4().hex[:6]}"
    job_id = run(idle, "submit", str(spec), "--name", name).stdout.split()[1]
    listed = run(idle, "list", "--name", name, columns=80)
    lines = listed.stdout.splitlines()
    assert "kernel_size=5" in listed.stdout and all(len(line) <= 80 for line in lines)
    row = next(line for line in lines if job_id in line)
    assert name in row and re.search(r"\d\d-\d\d \d\d:\d\d", row)  # the row's name and date on one line
    status = run(idle, "status", job_id).stdout
    assert "spec sets" in status and "model.kernel_size=5" in status
    run(idle, "cancel", job_id)


def test_compare_shows_what_differs_and_status_names_the_verdict(server: Live, finished) -> None:
    table = run(server, "compare", *finished.ids).stdout
    row = next(line for line in table.splitlines() if "model.residual" in line)
    assert "true" in row and "false" in row  # the plain twin differs in exactly this
    status = run(server, "status", finished.ids[0]).stdout
    assert "weight grads" in status and "first/last layer (conv1/conv17)" in status
    assert "<- the verdict" in status


def test_cancel_says_how_the_job_ended(idle: Live, finished, server: Live) -> None:
    job_id = finished.ids[0]
    assert "already ended (succeeded)" in run(server, "cancel", job_id).stderr
    queued = json.loads(run(idle, "submit", str(REPO / "specs" / "quickstart.yaml"), "--json").stdout)["id"]
    out = run(idle, "cancel", queued).stdout
    assert "cancelled" in out and "within seconds" not in out


def test_missing_token_names_the_servers_data_dir(idle: Live, monkeypatch) -> None:  # noqa: ANN001
    result = CliRunner().invoke(cli, ["--url", idle.url, "list"])
    assert result.exit_code == 1 and "DEEPGRAD_DATA_DIR" in result.stderr and "token" in result.stderr
