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
        # OMP_NUM_THREADS=1 (unless set outside): the tiny models here train about as fast on one CPU thread,
        # while PyTorch's default of one thread per core slows ~10x whenever anything else wants a core (the
        # test's own process, a second server, a neighbour on a shared machine).
        self.env = {"OMP_NUM_THREADS": "1", **os.environ, "DEEPGRAD_TOKEN": TOKEN, "DEEPGRAD_LEASE_SECONDS": "10",
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
        """Pids of the server's job processes: the children of its ``multiprocessing`` fork server."""
        assert self.proc is not None
        procs = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            procs[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
        servers = {pid for pid, (ppid, cmdline) in procs.items()
                   if ppid == self.proc.pid and b"multiprocessing.forkserver" in cmdline}
        return [pid for pid, (ppid, _) in procs.items() if ppid in servers]


def wait_for(client: httpx.Client, job_id: str, states: set[str] | None = None, stall: float = 300,
             limit: float = 1800, until: Any = None) -> dict[str, Any]:
    """Poll a job until it is in one of ``states`` (default: terminal) or ``until(job)`` holds.

    Waits on progress, not on a wall-clock guess: it fails when a running job shows no change (step, epoch,
    attempt, state) for ``stall`` seconds, or after ``limit`` seconds in all (a job trains at nice 10, and
    a machine busy with other work slows it down a lot without stopping it)."""
    states = states or TERMINAL
    start = changed = time.monotonic()
    seen: Any = None
    while True:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if (until(job) if until is not None else job["state"] in states):
            return job
        if until is not None and job["state"] in TERMINAL:
            raise AssertionError(f"job {job_id} ended ({job['state']}) before the awaited condition: {job}")
        progress = job.get("progress") or {}
        now = (job["state"], job["attempts"], progress.get("step"), progress.get("epoch"), progress.get("updated_at"))
        if now != seen or job["state"] == "queued":
            seen, changed = now, time.monotonic()
        if time.monotonic() - changed > stall:
            raise AssertionError(f"job {job_id} made no progress for {stall} s: {job}")
        if time.monotonic() - start > limit:
            raise AssertionError(f"job {job_id} still {job['state']} after {limit} s: {job}")
        time.sleep(0.2)


def limited(cmd: list[str], *, nofile: int | None = None, cgroup: Path | None = None) -> list[str]:
    """``cmd`` run with an open-file limit (soft and hard) and/or inside a cgroup (its ``cgroup.procs``)."""
    prelude = ["import os, resource, sys"]
    if nofile is not None:
        prelude.append(f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))")
    if cgroup is not None:
        prelude.append(f"open({str(cgroup / 'cgroup.procs')!r}, 'w').write(str(os.getpid()))")
    prelude.append("os.execv(sys.argv[1], sys.argv[1:])")
    return [sys.executable, "-c", "; ".join(prelude), *cmd]


class MemoryCgroup:
    """A child of this process's memory cgroup (v2 or v1) with a memory limit and no swap; removed on exit.

    ``MemoryCgroup.available()`` says whether one can be made here (root, a writable cgroup hierarchy)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.path: Path | None = None

    @staticmethod
    def _parent() -> tuple[Path, str] | None:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if "memory" in controllers.split(","):
                base = Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
                if (base / "memory.limit_in_bytes").exists() and os.access(base, os.W_OK):
                    return base, "v1"
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controllers == "":
                for root in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
                    base = root / rel.lstrip("/")
                    ctl = base / "cgroup.subtree_control"
                    if ctl.exists() and "memory" in ctl.read_text().split() and os.access(base, os.W_OK):
                        return base, "v2"
        return None

    @classmethod
    def available(cls) -> bool:
        try:
            return cls._parent() is not None
        except OSError:
            return False

    def __enter__(self) -> Path:
        parent = self._parent()
        assert parent is not None, "no writable memory cgroup"
        base, version = parent
        self.path = base / f"deepgrad-test-{os.getpid()}-{time.monotonic_ns()}"
        self.path.mkdir()
        if version == "v1":
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))
        else:
            (self.path / "memory.max").write_text(str(self.limit))
            (self.path / "memory.swap.max").write_text("0")
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is None:
            return
        for _ in range(50):  # its processes must be gone before the folder can go
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
