"""``deepgrad-train``: tiny synthetic runs through ``main(argv)``, one real Ctrl-C in a subprocess."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from deepgrad_core.cli import main
from deepgrad_core.spec import ExperimentSpec
from deepgrad_core.specfile import load_spec

REPO = Path(__file__).resolve().parents[2]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
EPOCHS, BATCH, PER_CLASS = 2, 16, 8  # 80 synthetic images -> 5 steps per epoch

TINY = {
    "model": {"arch": "vgg_deep", "width": 0.0625},
    "data": {"name": "synthetic", "subset": PER_CLASS, "test_subset": 4},
    "train": {"epochs": EPOCHS, "batch_size": BATCH, "lr": 0.01},
    "tracking": {"activation_every": 2},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_spec(tmp_path / "tiny.yaml", TINY)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str, str]:
    """One completed tiny run shared by the tests that only read its files: (spec, out, stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("run")
    spec, out = write_spec(tmp / "tiny.yaml", TINY), tmp / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main([str(spec), "--out", str(out)]) == 0, stderr.getvalue()
    return spec, out, stdout.getvalue(), stderr.getvalue()


def test_cli_run_writes_all_outputs(finished_run: tuple[Path, Path, str, str]) -> None:
    _, out, stdout, stderr = finished_run
    for name in ("spec.json", "history.json", "result.json", "norms_weight.csv", "norms_activation.csv",
                 "checkpoint/last.safetensors"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "succeeded" and result["epochs_completed"] == EPOCHS
    assert result["steps_per_epoch"] == 10 * PER_CLASS // BATCH
    assert 0.0 <= result["final"]["test_acc"] <= 1.0 and len(result["confusion"]) == 10
    assert result["cost"]["total_params"] > 0 and result["environment"]["device"] == "cpu"
    assert {"weight", "activation", "vanishing"} <= set(result["summary"])
    assert len(json.loads((out / "history.json").read_text())) == EPOCHS
    assert f"epoch {EPOCHS}/{EPOCHS}" in stderr
    assert "test accuracy" in stdout and "weight grads" in stdout and str(out) in stdout


def test_cli_norms_csv_has_one_column_per_layer(finished_run: tuple[Path, Path, str, str]) -> None:
    _, out, _, _ = finished_run
    result = json.loads((out / "result.json").read_text())
    layers = [layer["name"] for layer in result["layers"]]
    steps = EPOCHS * result["steps_per_epoch"]
    for kind, rows in (("weight", steps), ("activation", (steps + 1) // 2)):
        path = out / f"norms_{kind}.csv"
        assert path.read_text().splitlines()[0].split(",") == ["step", *layers]
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        assert table.shape == (rows, 1 + len(layers))
        assert np.array_equal(table[:, 0], np.arange(0, steps, steps // rows))
        assert np.isfinite(table[:, 1:]).all() and (table[:, 1:] > 0).all()


def test_cli_rerun_resumes_from_checkpoint(finished_run: tuple[Path, Path, str, str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec, out, _, _ = finished_run
    history = (out / "history.json").read_text()
    assert main([str(spec), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "already done" in err and "epoch 1/" not in err
    assert (out / "history.json").read_text() == history


def test_cli_rerun_with_other_spec_refuses_checkpoint(finished_run: tuple[Path, Path, str, str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    spec, out, _, _ = finished_run
    before = (out / "spec.json").read_text()
    assert main([str(spec), "--out", str(out), "--set", "train.lr=0.5"]) == 2
    assert "--no-resume" in capsys.readouterr().err
    assert (out / "spec.json").read_text() == before


def test_cli_set_overrides_recorded_and_json_output(tiny: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main([str(tiny), "--out", str(out), "--set", "train.lr=0.02", "--set", "model.width=0.125",
                 "--set", "train.epochs=1", "--set", "tracking.layer_types=[conv, linear]", "--json"])
    assert code == 0
    spec = json.loads((out / "spec.json").read_text())
    assert spec["train"]["lr"] == 0.02 and spec["model"]["width"] == 0.125 and spec["train"]["epochs"] == 1
    assert spec["model"]["batch_norm"] is False and spec["model"]["extra_convs"] == 4  # family defaults filled
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "result.json").read_text())
    assert printed["layers"][-1]["name"].startswith("fc")


@pytest.mark.parametrize(("model", "field"), [({"arch": "vgg16", "kernel_size": 4}, "model.kernel_size"),
                                              ({"arch": "resnet18", "extra_convs": 2}, "model"),
                                              ({"arch": "vgg17"}, "model.arch")])
def test_cli_invalid_spec_exits_2_naming_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               model: dict, field: str) -> None:
    spec = write_spec(tmp_path / "bad.yaml", {**TINY, "model": model})
    assert main([str(spec), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"  {field}: " in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("override", "message"), [("train.lrr=0.1", "train.lrr: unknown field"),
                                                   ("trian.lr=0.1", "trian: unknown field"),
                                                   ("train.lr.x=1", "train.lr is a value, not a section"),
                                                   ("train.lr", "expected KEY.PATH=VALUE"),
                                                   ("train.lr=abc", "lr must be a number, got 'abc'")])
def test_cli_bad_set_exits_2(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                             message: str) -> None:
    assert main([str(tiny), "--out", str(tmp_path / "out"), "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_missing_spec_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_cli_missing_cifar10_exits_1_naming_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path / "c10.yaml", {**TINY, "data": {"name": "cifar10", "subset": 2}})
    root = tmp_path / "no-data-here"
    assert main([str(spec), "--data-root", str(root), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert str(root / "cifar10") in err and "--data-root" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_requested_without_cuda_exits_1(tiny: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tiny), "--device", "cuda", "--out", str(tmp_path / "out")]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_bad_device_exits_2(tiny: Path, tmp_path: Path) -> None:
    assert main([str(tiny), "--device", "gpu", "--out", str(tmp_path / "out")]) == 2


def test_cli_diverged_run_exits_1(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main([str(tiny), "--out", str(out), "--set", "train.lr=1.0e+30", "--set", "train.epochs=1"]) == 1
    assert "diverged at step" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["status"] == "diverged"


def test_cli_ctrl_c_stops_cleanly_exits_130(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "long.yaml", {**TINY, "train": {**TINY["train"], "epochs": 500}})
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "deepgrad_core.cli", str(spec), "--out", str(out)],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    try:
        for line in proc.stderr:  # wait until an epoch has finished (and been checkpointed)
            if "epoch 1/500" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "cancelled" and 1 <= result["epochs_completed"] < 500
    assert (out / "checkpoint" / "last.safetensors").is_file() and (out / "norms_weight.csv").is_file()


def test_cli_without_torch_says_which_extra_exits_2(tiny: Path, tmp_path: Path) -> None:
    """The plain (client-only) install has the console script but no torch: one line, no traceback."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from deepgrad_core.cli import main\n"
            f"sys.exit(main([{str(tiny)!r}, '--out', {str(tmp_path / 'out')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == ["deepgrad-train needs the server extra: pip install 'deepgrad[server]' "
                                        "(torch is not installed)"]
    assert not (tmp_path / "out").exists()


def test_cli_as_module_reports_errors_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "deepgrad_core.cli", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "nope.yaml" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_specs_parse_as_experiment_spec(path: Path) -> None:
    assert isinstance(load_spec(path), ExperimentSpec)


def test_specs_cover_the_study() -> None:
    names = {p.stem for p in SPECS}
    assert {"quickstart", "vgg16", "vgg_deep", "resnet18", "fashion_mnist_resnet18"} <= names
    assert load_spec(REPO / "specs" / "quickstart.yaml").data.name == "synthetic"  # runs with no download
