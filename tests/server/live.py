"""A real ``deepgrad-server`` process on a free loopback port, with its SQLite file in a temp dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TOKEN = "test-token-0123456789abcdef"
TERMINAL = {"succeeded", "failed", "cancelled", "diverged"}

# Tiny jobs: a few steps per epoch on the CPU. Synthetic data where real data adds nothing.
TINY = {"model": {"arch": "resnet18", "width": 0.125},
        "data": {"name": "synthetic", "subset": 8, "test_subset": 4, "image_size": 16},
        "train": {"epochs": 2, "batch_size": 16}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``deepgrad-server`` as a user starts it; ``stop``/``start`` restart it on the same data."""

    def __init__(self, data_dir: Path, data_root: Path | None, env: dict[str, str] | None = None,
                 wrap: Any = None) -> None:
        """``wrap(cmd) -> cmd`` runs the server under another command (a private mount namespace, say)."""
        self.data_dir, self.data_root, self.wrap = data_dir, data_root, wrap
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "DEEPGRAD_TOKEN": TOKEN, "DEEPGRAD_LEASE_SECONDS": "10",
                    "DEEPGRAD_HEARTBEAT_SECONDS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"{data_dir.name}.log"  # beside the data dir: a full disk must not eat it

    def start(self, **env: str) -> LiveServer:
        cmd = [sys.executable, "-m", "deepgrad_server.main", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.data_root is not None:
            cmd += ["--data-root", str(self.data_root)]
        if self.wrap is not None:
            cmd = self.wrap(cmd)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    @property
    def pid(self) -> int:
        """The server's own pid (under ``wrap``, the process that ``exec``'d into it)."""
        assert self.proc is not None
        return self.proc.pid

    def job_pids(self) -> list[int]:
        """Pids of the server's job processes (its children running ``multiprocessing.spawn``)."""
        assert self.proc is not None
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(entry.name))
        return pids


def wait_for(client: httpx.Client, job_id: str, states: set[str] | None = None, timeout: float = 300,
             until: Any = None) -> dict[str, Any]:
    """Poll a job until it is in one of ``states`` (default: terminal) or ``until(job)`` holds.

    The timeout is generous: a job trains at nice 10, so a machine busy with other work slows it a lot."""
    states = states or TERMINAL
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if (until(job) if until is not None else job["state"] in states):
            return job
        if until is not None and job["state"] in TERMINAL:
            raise AssertionError(f"job {job_id} ended ({job['state']}) before the awaited condition: {job}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout} s: {job}")
        time.sleep(0.2)
