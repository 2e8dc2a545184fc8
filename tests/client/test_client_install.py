"""``pip install .`` with no extras gives a working client and CLI, and no torch."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from client_live import REPO, Live

# What the distribution is built from; copied so that the build never writes into the working tree.
SOURCES = ("pyproject.toml", "README.md", "deepgrad_core", "server", "client")


def _sh(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _new_venv(venv: Path) -> list[str]:
    """Make a fresh virtual environment; return the pip command that installs into it.

    Seeding a venv with its own pip (ensurepip) takes ~8 s: where this interpreter's pip has ``--python``
    (pip >= 22.3), the venv is made without one and that pip installs into it, resolving and installing for
    the venv's interpreter just the same."""
    outer = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60)
    version = re.match(r"pip (\d+)\.(\d+)", outer.stdout)
    if outer.returncode == 0 and version is not None and tuple(map(int, version.groups())) >= (22, 3):
        _sh(sys.executable, "-m", "venv", "--without-pip", venv)
        return [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    _sh(sys.executable, "-m", "venv", venv)
    return [str(venv / "bin" / "python"), "-m", "pip"]


def test_plain_install_has_the_cli_and_no_torch(tmp_path: Path, idle: Live) -> None:
    src = tmp_path / "src"
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    venv = tmp_path / "venv"
    pip = _new_venv(venv)
    bin_dir = venv / "bin"
    # --no-compile: no .pyc files written at install (~9 s of the install); nothing here depends on them.
    _sh(*pip, "install", "-q", "--no-compile", src)

    assert "Usage: deepgrad-client" in _sh(bin_dir / "deepgrad-client", "--help").stdout
    no_torch = _sh(bin_dir / "python", "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    imported = _sh(bin_dir / "python", "-c", "import sys, deepgrad_client, deepgrad_client.cli; "
                   "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'deepgrad_core')))")
    assert imported.stdout.strip() == "[]"
    # and it talks to a real server
    health = _sh(bin_dir / "deepgrad-client", "--url", idle.url, "health")
    assert "ok (version" in health.stdout
    listed = _sh(bin_dir / "deepgrad-client", "--url", idle.url, "--token", idle.token, "list", "--json")
    assert '"count"' in listed.stdout
