"""``deepgrad-client study``: run a preset or a study file, list, status, summary (table and CSV), cancel, delete;
errors said on one line. On the idle server: the jobs stay queued."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml
from client_live import TINY, Live
from test_client_cli import assert_clean_error, run


def test_study_from_a_file_then_status_summary_cancel_delete(idle: Live, tmp_path: Path) -> None:
    path = tmp_path / "kernels.yaml"
    path.write_text(yaml.safe_dump({"base": TINY, "grid": {"model.kernel_size": [3, 5], "model.activation":
                                                           ["relu", "gelu"]}}, sort_keys=False))  # grid order kept
    result = run(idle, "study", "run", str(path), "--set", "train.epochs=3", "--json")
    assert result.exit_code == 0, result.output
    study = json.loads(result.stdout)
    assert study["name"] == "kernels" and len(study["jobs"]) == 4
    assert {j["job"]["spec"]["train"]["epochs"] for j in study["jobs"]} == {3}
    study_id = study["id"]

    listed = run(idle, "study", "list")
    assert listed.exit_code == 0 and study_id in listed.stdout and "4 queued" in listed.stdout
    status = run(idle, "study", "status", study_id)
    assert status.exit_code == 0 and "kernel_size=5, activation=gelu" in status.stdout
    table = run(idle, "study", "summary", study_id)
    assert table.exit_code == 0 and "first/last" in table.stdout and "kernel_size=3, activation=relu" in table.stdout
    rows = list(csv.DictReader(io.StringIO(run(idle, "study", "summary", study_id, "--csv").stdout)))
    assert [(r["model.kernel_size"], r["model.activation"], r["state"]) for r in rows] == [
        ("3", "relu", "queued"), ("3", "gelu", "queued"), ("5", "relu", "queued"), ("5", "gelu", "queued")]
    assert rows[0]["test_acc"] == "" and rows[0]["job_id"] == study["jobs"][0]["job"]["id"]

    plot = run(idle, "study", "plot", study_id, "accuracy", "-o", str(tmp_path / "a.png"))
    assert "has a test accuracy yet" in assert_clean_error(plot)
    assert "cancel it first" in assert_clean_error(run(idle, "study", "delete", study_id))
    cancelled = run(idle, "study", "cancel", study_id)
    assert cancelled.exit_code == 0 and "4 cancelled" in cancelled.stdout
    deleted = run(idle, "study", "delete", study_id)
    assert deleted.exit_code == 0 and f"deleted study {study_id}" in deleted.stdout
    assert "no study" in assert_clean_error(run(idle, "study", "status", study_id))


def test_study_run_by_preset_name_with_overrides(idle: Live) -> None:
    presets = run(idle, "study", "presets")
    assert presets.exit_code == 0 and "depth" in presets.stdout and "init" in presets.stdout
    result = run(idle, "study", "run", "init", "--set", "model.width=0.125", "--set", "data.name=synthetic",
                 "--set", "train.epochs=1", "--json")
    assert result.exit_code == 0, result.output
    study = json.loads(result.stdout)
    assert study["preset"] == "init" and len(study["jobs"]) == 6
    assert {j["job"]["spec"]["model"]["width"] for j in study["jobs"]} == {0.125}
    assert run(idle, "study", "cancel", study["id"]).exit_code == 0
    assert run(idle, "study", "delete", study["id"]).exit_code == 0


def test_bad_studies_say_which_key(idle: Live, tmp_path: Path) -> None:
    err = assert_clean_error(run(idle, "study", "run", "depht"))
    assert "preset: Input should be 'original', 'depth'" in err
    err = assert_clean_error(run(idle, "study", "run", "depth", "--set", "train.epoch=1"))
    assert "train.epoch" in err and "unknown key" in err
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"base": TINY, "grid": {"model.kernel_size": []}}))
    err = assert_clean_error(run(idle, "study", "run", str(path)))
    assert "grid.model.kernel_size: List should have at least 1 item" in err
    path.write_text(yaml.safe_dump({"base": TINY, "grids": {"model.kernel_size": [3]}}))
    assert "unknown key(s) ['grids']" in assert_clean_error(run(idle, "study", "run", str(path)), code=2)


def test_histograms_and_their_figures(server: Live, finished, tmp_path: Path) -> None:
    with server.client() as client:
        body = client.histograms(finished.residual["id"], layers=["conv1", "conv17"], steps=[0])
    assert body["steps"] == [0] and [la["name"] for la in body["layers"]] == ["conv1", "conv17"]
    assert len(body["counts"][0][0]) == len(body["edges_log10"]) - 1
    out = tmp_path / "h.png"
    result = run(server, "plot", finished.residual["id"], "histogram", "-o", str(out))
    assert result.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG"), result.output
    result = run(server, "compare", *finished.ids, "--plot", str(out), "--plot-kind", "histogram")
    assert result.exit_code == 0 and out.read_bytes().startswith(b"\x89PNG"), result.output
