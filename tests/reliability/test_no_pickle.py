"""No code runs from data: checkpoints are safetensors, and nothing in the code base unpickles, evals or
unsafe-loads YAML (``torch.load`` without ``weights_only``: CVE-2025-32434 showed even ``weights_only=True`` could
be bypassed in torch < 2.6, and a pickled "model" is a program: loading one runs whatever it says).

The source scan is an AST walk (not grep): it follows ``import torch as t`` and ``from pickle import loads``, and
it is itself tested on planted code, so a scanner that sees nothing cannot pass for a clean code base.
"""

from __future__ import annotations

import ast
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
from live import TINY

REPO = Path(__file__).resolve().parents[2]
SCANNED = [REPO / "deepgrad_core", REPO / "server", REPO / "client", REPO / "bench"]

# module -> functions that deserialize arbitrary objects (run code) whatever their arguments
UNSAFE_CALLS = {
    "pickle": {"load", "loads", "Unpickler"}, "_pickle": {"load", "loads", "Unpickler"},
    "cPickle": {"load", "loads"}, "dill": {"load", "loads"}, "cloudpickle": {"load", "loads"},
    "joblib": {"load"}, "shelve": {"open"}, "marshal": {"load", "loads"}, "pandas": {"read_pickle"},
    "yaml": {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"},
    "torch.jit": {"load"}, "os": {"system", "popen"},
}
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


class _Scanner(ast.NodeVisitor):
    """Findings ``(line, what)`` in one module; names bound by imports are resolved to their module path."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}  # local name -> dotted origin ("t" -> "torch", "loads" -> "pickle.loads")
        self.findings: list[tuple[int, str]] = []

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else \
                alias.name.split(".")[0]
            if alias.name.split(".")[0] in UNSAFE_MODULES:
                self.findings.append((node.lineno, f"import {alias.name}"))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            if (node.module or "").split(".")[0] in UNSAFE_MODULES:
                self.findings.append((node.lineno, f"from {node.module} import {alias.name}"))

    def _dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.names.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    def check_call(self, node: ast.Call) -> None:
        name = self._dotted(node.func) or ""
        module, _, func = name.rpartition(".")
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        if name in ("eval", "exec", "compile", "__import__") and isinstance(node.func, ast.Name):
            self.findings.append((node.lineno, f"{name}()"))
        elif func in UNSAFE_CALLS.get(module, ()):
            self.findings.append((node.lineno, f"{name}()"))
        elif name in ("torch.load", "torch.serialization.load"):
            weights_only = kwargs.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                self.findings.append((node.lineno, f"{name}() without weights_only=True"))
        elif name in ("numpy.load", "numpy.lib.npyio.load"):
            allow = kwargs.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self.findings.append((node.lineno, f"{name}(allow_pickle=...) not False"))
        elif name in ("yaml.load", "yaml.load_all"):
            loader = kwargs.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if (self._dotted(loader) or "").rpartition(".")[2] not in SAFE_YAML_LOADERS:
                self.findings.append((node.lineno, f"{name}() without a SafeLoader"))
        elif func in ("run", "call", "check_call", "check_output", "Popen") and module == "subprocess":
            shell = kwargs.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                self.findings.append((node.lineno, f"{name}(shell=...)"))


def scan(source: str) -> list[tuple[int, str]]:
    """Unsafe imports and calls in one module's source."""
    tree = ast.parse(source)
    scanner = _Scanner()
    for node in ast.walk(tree):  # imports first, wherever they are: a lazy import inside a function counts
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            scanner.visit(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            scanner.check_call(node)
    return sorted(set(scanner.findings))


PLANTED = '''
import torch as t
import numpy as np
import yaml, subprocess
from pickle import loads as l
from torch import load
import torch.jit

def f(p, weights_only=True):
    t.load(p)
    t.load(p, weights_only=False)
    load(p, weights_only=flag)
    l(b"")
    np.load(p, allow_pickle=True)
    yaml.load(p)
    yaml.load(p, Loader=yaml.Loader)
    yaml.full_load(p)
    eval("1")
    exec("x=1")
    torch.jit.load(p)
    subprocess.run("ls", shell=True)
    model.eval()                                  # a method named eval: fine
    t.load(p, weights_only=True)                  # fine
    np.load(p) ; np.load(p, allow_pickle=False)    # fine
    yaml.safe_load(p); yaml.load(p, Loader=yaml.SafeLoader)  # fine
'''


def test_scanner_finds_planted_unsafe_calls() -> None:
    """The scanner is tested before it is trusted: each unsafe line of PLANTED is found, no safe one is."""
    found = {what for _, what in scan(PLANTED)}
    assert found == {"from pickle import loads", "torch.load() without weights_only=True", "pickle.loads()",
                     "numpy.load(allow_pickle=...) not False", "yaml.load() without a SafeLoader", "yaml.full_load()",
                     "eval()", "exec()", "torch.jit.load()", "subprocess.run(shell=...)"}, found
    lines = {line for line, what in scan(PLANTED) if what == "torch.load() without weights_only=True"}
    assert len(lines) == 3  # t.load(p), t.load(p, weights_only=False), load(p, weights_only=flag)


def test_no_unsafe_deserialization_in_the_code_base() -> None:
    """torch.load without weights_only (CVE-2025-32434 and pickle RCE in general), pickle/dill/cloudpickle/joblib/
    marshal loads, numpy allow_pickle=True, yaml.load without SafeLoader, eval/exec, shell=True: none in
    deepgrad_core, server, client or bench."""
    files = [p for root in SCANNED for p in root.rglob("*.py") if ".venv" not in p.parts]
    assert len(files) >= 30, files
    findings = [f"{p.relative_to(REPO)}:{line}: {what}" for p in files for line, what in scan(p.read_text())]
    assert not findings, "\n".join(findings)


# --- checkpoints ------------------------------------------------------------------------------------------------


def _tiny_run():  # noqa: ANN202 (torch objects)
    import numpy as np
    import torch
    from torch import nn

    from deepgrad_core.norms import NormBlock

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 6, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    optimizer.step()
    norms = {"weight": NormBlock("weight", np.arange(3), ("conv1",), np.ones((3, 1), np.float32))}
    return model, optimizer, norms


def test_checkpoint_is_safetensors_without_pickle(tmp_path: Path) -> None:
    """torch.load without weights_only (pickle RCE): what deepgrad_core.training.checkpoint writes is a
    safetensors file (8-byte header length, JSON header, raw tensor bytes) with JSON metadata; no pickle stream,
    no torch zip; safetensors reads it back tensor for tensor."""
    from safetensors import safe_open

    from deepgrad_core.training.checkpoint import load_checkpoint, read_meta, save_checkpoint

    model, optimizer, norms = _tiny_run()
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, model=model, optimizer=optimizer, scaler=None, norms=norms,
                    meta={"epoch": 3, "history": [], "spec": {"x": 1}})
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    assert raw[8:9] == b"{" and not zipfile.is_zipfile(path)  # a JSON header, not torch.save's zip of pickles
    assert all(isinstance(v, str) for v in header.pop("__metadata__").values())
    assert {v["dtype"] for v in header.values()} <= {"F32", "F64", "I64", "F16", "BF16", "I32", "U8", "BOOL"}
    # Every byte accounted for: the header, then tensors back to back, nothing after (no room for a pickle).
    spans = sorted(tuple(v["data_offsets"]) for v in header.values())
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert 8 + length + spans[-1][1] == len(raw)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(header)
        assert f.get_tensor("model/0.weight").equal(model.state_dict()["0.weight"])
    assert read_meta(path)["epoch"] == 3
    fresh, fresh_opt, _ = _tiny_run()
    meta, saved = load_checkpoint(path, model=fresh, optimizer=fresh_opt, scaler=None)
    assert meta["epoch"] == 3 and saved["weight"].values.shape == (3, 1)


class _Plant:
    """Unpickling this creates the marker file: what a malicious "checkpoint" would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def _malicious_files(tmp_path: Path, marker: Path) -> dict[str, bytes]:
    import torch

    torch_zip = tmp_path / "zip.pt"
    torch.save({"model": _Plant(marker)}, torch_zip)  # what torch.save of a booby-trapped object looks like
    assert not marker.exists()
    plain = pickle.dumps({"meta": _Plant(marker)})
    # A safetensors header that claims a huge length, then a pickle: a parser must not "fall back" to pickle.
    disguised = struct.pack("<Q", 2**40) + plain
    return {"pickle": plain, "torch.save zip": torch_zip.read_bytes(), "disguised": disguised}


@pytest.mark.parametrize("kind", ["pickle", "torch.save zip", "disguised"])
def test_malicious_checkpoint_is_refused_not_run(tmp_path: Path, kind: str) -> None:
    """torch.load without weights_only (CVE-2025-32434; pickle RCE): a booby-trapped file at the checkpoint path
    (a pickle that creates a marker file when unpickled) is refused with an error by read_meta and
    load_checkpoint, and the marker is never created."""
    from deepgrad_core.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, read_meta

    marker = tmp_path / "pwned"
    path = tmp_path / "job" / CHECKPOINT_NAME
    path.parent.mkdir()
    path.write_bytes(_malicious_files(tmp_path, marker)[kind])
    model, optimizer, _ = _tiny_run()
    for load in (lambda: read_meta(path), lambda: load_checkpoint(path, model=model, optimizer=optimizer,
                                                                    scaler=None)):
        with pytest.raises(Exception, match="(?i)header|deserializ|safetensor") as err:
            load()
        assert not marker.exists(), f"unpickled! ({err.value!r})"
    pickle.loads(pickle.dumps(_Plant(marker)))  # the trap is real: unpickling it does create the marker
    assert marker.exists()


def test_resuming_a_job_from_a_malicious_checkpoint_fails_without_running_it(tmp_path: Path) -> None:
    """The resume path a worker takes (``train(..., checkpoint_dir=<job dir>)`` finds ``last.safetensors``):
    a pickle planted there stops the run with an error before any training; its code never runs."""
    from deepgrad_core.experiment import Sink
    from deepgrad_core.models import build_model
    from deepgrad_core.spec import ExperimentSpec
    from deepgrad_core.training import train

    class StepList(Sink):
        def __init__(self, steps: list[object]) -> None:
            self.step = steps.append
    from deepgrad_core.training.checkpoint import CHECKPOINT_NAME

    marker = tmp_path / "pwned"
    job_dir = tmp_path / "jobs" / "0123456789ab"
    job_dir.mkdir(parents=True)
    (job_dir / CHECKPOINT_NAME).write_bytes(_malicious_files(tmp_path, marker)["pickle"])
    spec = ExperimentSpec.model_validate(TINY)
    steps: list[object] = []
    with pytest.raises(Exception, match="(?i)header|deserializ|safetensor"):
        train(build_model(spec.model), spec, device="cpu", checkpoint_dir=job_dir, sink=StepList(steps))
    assert not marker.exists() and not steps
