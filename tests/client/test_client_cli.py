"""``deepgrad-client`` through click's CliRunner, against the real server app on a loopback port."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from client_live import TINY, Live, closed_port_url
from PIL import Image

from deepgrad_client.cli import cli

LONG = {**TINY, "train": {**TINY["train"], "epochs": 50}}


def run(live: Live | None, *args: str, token: str | None = None) -> Result:
    """Invoke the CLI the way a user would, with a wide terminal so that tables keep whole cells."""
    base = [] if live is None else ["--url", live.url, "--token", token or live.token]
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, [*base, *args], catch_exceptions=False)


def assert_clean_error(result: Result, code: int = 1) -> str:
    """The command failed with ``code``, said why on stderr, and printed no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    return result.stderr


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny_long.yaml"
    path.write_text(yaml.safe_dump(LONG))
    return path


# -- usage and errors -------------------------------------------------------------------------------

def test_cli_help_lists_the_commands() -> None:
    result = run(None, "--help")
    assert result.exit_code == 0
    for command in ("submit", "list", "status", "watch", "cancel", "delete", "models", "compare", "plot", "export"):
        assert command in result.stdout


def test_cli_unreachable_server_exits_1_with_the_reason() -> None:
    url = closed_port_url()
    message = assert_clean_error(run(None, "--url", url, "--token", "x" * 20, "--retries", "1", "list"))
    assert f"cannot connect to the DeepGrad server at {url}" in message


def test_cli_without_any_token_exits_1_saying_where_one_goes(idle: Live) -> None:
    result = CliRunner().invoke(cli, ["--url", idle.url, "list"])
    message = assert_clean_error(result)
    assert "missing bearer token" in message and "DEEPGRAD_TOKEN" in message


def test_cli_wrong_token_exits_1(idle: Live) -> None:
    assert "wrong bearer token" in assert_clean_error(run(idle, "list", token="not-the-right-token"))


def test_cli_unknown_job_exits_1(idle: Live) -> None:
    for command in ("status", "cancel", "delete", "watch"):
        assert "no job with id '0123456789ab'" in assert_clean_error(run(idle, command, "0123456789ab"))


def test_cli_malformed_job_id_is_a_usage_error(idle: Live) -> None:
    assert "not a job id" in assert_clean_error(run(idle, "status", "nope"), code=2)


def test_cli_invalid_spec_shows_the_servers_message(idle: Live, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": {"arch": "vgg99"}}))
    message = assert_clean_error(run(idle, "submit", str(path)))
    assert "model.arch: Input should be 'vgg11', 'vgg13', 'vgg16', 'vgg_deep', 'resnet18' or 'resnet34'" in message
    message = assert_clean_error(run(idle, "submit", str(path), "--set", "model.arch=vgg_deep",
                                     "--set", "train.lr=-1"))
    assert "train.lr: Input should be greater than 0" in message


@pytest.mark.parametrize(("args", "expected"), [(["--set", "train.lr"], "expected KEY.PATH=VALUE"),
                                                (["--set", "train.lr=[1"], "not valid YAML"),
                                                (["--set", "model.arch.x=1"], "model.arch is a value")])
def test_cli_malformed_set_is_a_usage_error(idle: Live, spec_file: Path, args: list[str], expected: str) -> None:
    assert expected in assert_clean_error(run(idle, "submit", str(spec_file), *args), code=2)


def test_cli_missing_spec_file_is_a_usage_error(idle: Live, tmp_path: Path) -> None:
    result = run(idle, "submit", str(tmp_path / "absent.yaml"))
    assert result.exit_code == 2 and "does not exist" in result.stderr


# -- jobs on the idle server (they stay queued) ---------------------------------------------------

def test_cli_submit_applies_typed_overrides(idle: Live, spec_file: Path) -> None:
    sets = ["train.lr=0.01", "model.batch_norm=false", "train.grad_clip=null", "tracking.activation_every=5",
            "train.nesterov=true"]
    result = run(idle, "submit", str(spec_file), "--json", *(arg for s in sets for arg in ("--set", s)))
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["name"] == "tiny_long"  # the file's stem
    train = job["spec"]["train"]
    assert train["lr"] == 0.01 and isinstance(train["lr"], float) and train["grad_clip"] is None
    assert train["nesterov"] is True and job["spec"]["model"]["batch_norm"] is False
    assert job["spec"]["tracking"]["activation_every"] == 5


def test_cli_submit_list_status_cancel_delete(idle: Live, spec_file: Path) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    submitted = run(idle, "submit", str(spec_file), "--name", name)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.split()[1]
    assert f"deepgrad-client watch {job_id}" in submitted.stdout

    listed = run(idle, "list", "--name", name)
    assert listed.exit_code == 0 and job_id in listed.stdout and "queued" in listed.stdout
    page = json.loads(run(idle, "list", "--name", name, "--json").stdout)
    assert page["count"] == 1 and page["data"][0]["id"] == job_id

    status = run(idle, "status", job_id)
    assert status.exit_code == 0 and name in status.stdout and "resnet18" in status.stdout
    assert json.loads(run(idle, "status", job_id, "--json").stdout)["state"] == "queued"

    assert "job " + job_id + " is queued: cancel it first" in assert_clean_error(run(idle, "delete", job_id))
    cancelled = run(idle, "cancel", job_id)
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    assert "already ended (cancelled)" in assert_clean_error(run(idle, "cancel", job_id))
    assert run(idle, "delete", job_id).exit_code == 0
    assert "no jobs match" in run(idle, "list", "--name", name).stdout


def test_cli_submit_watch_falls_back_to_polling_when_the_stream_fails(idle: Live, spec_file: Path) -> None:
    idle.flaky.fail("/events", times=10, status=503, forward=False)

    def cancel_once_the_stream_was_tried() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            tried = [path for method, path in list(idle.flaky.seen) if path.endswith("/events")]
            if tried:
                with idle.client() as client:  # not through CliRunner: it swaps sys.stdout for the whole process
                    client.cancel(tried[0].split("/")[2])
                return
            time.sleep(0.02)

    threading.Thread(target=cancel_once_the_stream_was_tried).start()
    result = run(idle, "--retries", "1", "submit", str(spec_file), "--watch", "--poll", "0.1")
    job_id = result.stdout.split()[1]
    assert "the event stream failed" in result.stdout and "polling every 0.1 s" in result.stdout
    assert f"job {job_id} cancelled" in assert_clean_error(result)  # exit 1: it did not succeed


def test_cli_models(idle: Live) -> None:
    result = run(idle, "models")
    assert result.exit_code == 0
    assert "vgg11, vgg13, vgg16, vgg_deep, resnet18, resnet34" in result.stdout and "kernel_size" in result.stdout
    assert json.loads(run(idle, "models", "--json").stdout)["options"]["kernel_size"]["allowed"] == [3, 5, 7]


# -- finished jobs (worker server) --------------------------------------------------------------

def test_cli_watch_follows_a_job_to_success(finished) -> None:
    result = finished.watch  # `deepgrad-client watch ID` of a job that was queued when it started
    assert result.exit_code == 0, result.output
    assert "state: queued" in result.stdout or "state: running" in result.stdout
    assert "state: succeeded" in result.stdout
    assert "epoch 2/2" in result.stdout and "first/last layer" in result.stdout


def test_cli_compare_prints_the_table_and_writes_a_png(server: Live, finished, tmp_path: Path) -> None:
    out = tmp_path / "compare.png"
    result = run(server, "compare", *finished.ids, "--plot", str(out))
    assert result.exit_code == 0, result.output
    for row in ("train acc", "test acc", "train loss", "test loss", "best epoch", "time", "parameters",
                "FLOPs/image", "grad first/last", "vanishing"):
        assert row in result.stdout
    assert "tiny-residual" in result.stdout and "tiny-plain" in result.stdout
    # What sets the runs apart, as GET /compare found it: the one spec key they differ in, with each one's value.
    (residual_row,) = [line for line in result.stdout.splitlines() if "model.residual" in line]
    assert residual_row.replace("│", " ").split()[1:] == ["true", "false"], residual_row
    ratio = finished.residual["summary"]["weight"]["first_last_ratio"]
    assert f"{ratio:.2e}" in result.stdout
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > 100


def test_cli_compare_json_and_needs_two_ids(server: Live, finished) -> None:
    body = json.loads(run(server, "compare", *finished.ids, "--json").stdout)
    assert [job["id"] for job in body["jobs"]] == finished.ids
    result = run(server, "compare", finished.ids[0])
    assert result.exit_code == 2 and "2 to 12 job ids" in result.stderr


def test_cli_plot_and_export(server: Live, finished, tmp_path: Path) -> None:
    job_id = finished.residual["id"]
    plot = run(server, "plot", job_id, "norms", "-o", str(tmp_path / "norms.png"), "--norm-kind", "weight")
    assert plot.exit_code == 0, plot.output
    with Image.open(tmp_path / "norms.png") as img:
        img.load()
    export = run(server, "export", job_id, "--csv", str(tmp_path / "w.csv"))
    assert export.exit_code == 0, export.output
    rows = list(csv.reader(io.StringIO((tmp_path / "w.csv").read_text())))
    assert rows[0][:3] == ["step", "conv1", "conv2"] and len(rows) == 1 + 2 * finished.residual["steps_per_epoch"]
    assert run(server, "export", job_id, "--csv", "-").stdout == (tmp_path / "w.csv").read_text()
    assert run(server, "plot", job_id, "nonsense", "-o", str(tmp_path / "x.png")).exit_code == 2


def test_cli_status_metrics_and_watch_of_a_finished_job(server: Live, finished) -> None:
    job_id = finished.plain["id"]
    status = run(server, "status", job_id)
    assert status.exit_code == 0 and "succeeded" in status.stdout and "first/last layer" in status.stdout
    metrics = run(server, "metrics", job_id)
    assert metrics.exit_code == 0 and "test acc" in metrics.stdout
    assert len(json.loads(run(server, "metrics", job_id, "--json").stdout)["epochs"]) == 2
    watched = run(server, "watch", job_id, "--json")
    assert watched.exit_code == 0 and json.loads(watched.stdout)["state"] == "succeeded"
    health = run(server, "health")
    assert health.exit_code == 0 and "worker alive" in health.stdout
