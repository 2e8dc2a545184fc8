"""A real local Ray cluster for the tests: ``ray start --head`` on loopback with token auth, and worker nodes.

Only loopback may be used: the head and every node bind 127.0.0.1 (``--node-ip-address``), and
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from swapping in the host's routable address. Token auth is on
(``RAY_AUTH_MODE=token``) with the token in the cluster's temp dir; a process that talks to the cluster needs
``env()``. Ports come from the ephemeral range, away from Ray's worker ports (10002-19999).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from pgserver import free_port

RAY = Path(sys.executable).with_name("ray")
# `ray start` for a node joining on loopback: the CLI sees multi-node clusters allowed, everything else in Ray keeps
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (no address rewriting).
_JOIN = """
import sys, types
import ray._private.ray_constants as constants
from ray.scripts import scripts
scripts.ray_constants = types.SimpleNamespace(**{**vars(constants), "ENABLE_RAY_CLUSTER": True})
sys.argv = ["ray", *sys.argv[1:]]
scripts.main()
"""


def ray_installed() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return RAY.exists()


class RayCluster:
    def __init__(self, cpus: int = 2) -> None:
        # Short: Ray's socket paths live under it and a Unix socket path has at most 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="dgray", dir="/tmp"))
        self.token_path = self.root / "auth_token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.cpus = cpus
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.nodes = 1

    def env(self) -> dict[str, str]:
        """The environment of anything that talks to this cluster (the server; the cluster's own processes)."""
        venv_bin = str(Path(sys.executable).parent)
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path),
                "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}

    def start(self) -> RayCluster:
        self._ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                  f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                  f"--num-cpus={self.cpus}", "--num-gpus=0", f"--temp-dir={self.root / 't'}",
                  "--disable-usage-stats", "--include-log-monitor=false")
        self.wait_nodes(1)
        return self

    def add_node(self, cpus: int) -> None:
        """Another node of the cluster on this host (a second 'machine', on loopback).

        Ray keeps a node on loopback only while ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: with it on, 127.0.0.1 is
        swapped for the host's routable address and the GCS and raylets bind every interface (seen with ``ss``).
        But its CLI also refuses to add a node while that switch is off; ``_JOIN`` runs ``ray start`` with that
        one check lifted (the addresses stay on loopback)."""
        self._ray("start", f"--address=127.0.0.1:{self.port}", "--node-ip-address=127.0.0.1",
                  f"--num-cpus={cpus}", "--num-gpus=0", f"--dashboard-agent-listen-port={free_port()}",
                  f"--metrics-export-port={free_port()}", "--disable-usage-stats", join=True)
        self.nodes += 1
        self.wait_nodes(self.nodes)

    def api(self, path: str, **params: str) -> Any:
        """GET a path of the cluster's dashboard REST API with the token (plain HTTP: a Ray client in this
        process would read its auth settings once, at import)."""
        r = httpx.get(self.address + path, params=params, timeout=30,
                      headers={"Authorization": f"Bearer {self.token_path.read_text()}"})
        r.raise_for_status()
        return r.json()

    def alive_nodes(self) -> list[dict[str, Any]]:
        body = self.api("/api/v0/nodes", limit="100", detail="true")
        return [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def jobs(self) -> list[dict[str, Any]]:
        """Every Ray job the cluster knows (submission_id, status, metadata, driver_exit_code, ...)."""
        return self.api("/api/jobs/")

    def wait_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray: {n} nodes did not come up")
            time.sleep(0.5)

    def processes(self) -> list[int]:
        """Pids of this cluster's processes (GCS, raylets, dashboard, workers, job drivers): each names the cluster's
        folder in its command line (``--temp-dir``, session paths) or its environment (the token's path), or
        descends from one that does (the dashboard's modules, forked by a fork server)."""
        mark, parent, ours = str(self.root).encode(), {}, set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                if mark in (entry / "cmdline").read_bytes() or mark in (entry / "environ").read_bytes():
                    ours.add(int(entry.name))
            except (OSError, ValueError, IndexError):  # gone meanwhile, or not ours to read
                continue
        grown = True
        while grown:
            before = len(ours)
            ours |= {pid for pid, ppid in parent.items() if ppid in ours}
            grown = len(ours) > before
        return sorted(ours)

    def stop(self, timeout: float = 30) -> None:
        """Kill this cluster's processes, and only them (``ray stop`` stops every Ray of the machine, and its
        import alone takes seconds)."""
        deadline = time.monotonic() + timeout
        while pids := self.processes():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray processes {pids} outlived SIGKILL for {timeout:.0f} s")
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

    def _ray(self, *args: str, join: bool = False) -> None:
        cmd = [sys.executable, "-c", _JOIN, *args] if join else [str(RAY), *args]
        out = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=180)
        if out.returncode:
            raise RuntimeError(f"ray {args[0]} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
