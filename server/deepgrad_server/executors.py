"""Where a job's process runs: the seam between the worker (queue, leases, heartbeats, retries, all in the store)
and whatever executes ``deepgrad_server.runner``.

An ``Executor`` starts a job and hands back an ``Execution``, which the worker asks whether it lives, waits on,
stops (politely: the job stops after its current step and records ``cancelled``) or kills, and finally asks
how it ended (an ``Outcome``). Before claiming a job from the queue a worker takes one of the executor's slots
(``try_reserve``; ``release`` after): the queue stays in the database, and a cluster gets no more jobs than it
can run. ``LocalExecutor`` runs the job in a child process of this server (a worker's one slot);
``ray_executor.RayExecutor`` on a Ray cluster.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Protocol

from deepgrad_server import hostmem, runner
from deepgrad_server.runner import Launch

__all__ = ["Execution", "Executor", "Launch", "LocalExecution", "LocalExecutor", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """How a job process ended. ``reason``: the failure it knew but could not record (``runner.EXIT_REASONS``);
    ``oom_killed``: the kernel's out-of-memory killer ended it (retrying would only feed it again)."""

    exitcode: int | None
    reason: str | None = None
    oom_killed: bool = False
    detail: str | None = None  # what the executor knows when there is no exit code (a lost cluster job)

    @property
    def why(self) -> str:
        """In words, for a job that died without recording a result."""
        code = self.exitcode
        if code is None and self.detail:
            return f"job process ended: {self.detail}"
        if code is not None and code < 0:
            return f"job process killed by {_signal_name(-code)}"
        return f"job process exited with code {code}"


class Execution(Protocol):
    def alive(self) -> bool: ...
    def wait(self, timeout: float) -> None: ...
    def stop(self) -> None: ...
    def kill(self) -> None: ...
    def outcome(self) -> Outcome: ...


class Executor(Protocol):
    name: str

    def start(self, launch: Launch) -> Execution: ...
    def try_reserve(self) -> bool: ...
    def release(self) -> None: ...
    def describe(self) -> dict[str, object]: ...


# What a job process imports before it can train (torch above all: ~6 s of a job's start on a small CPU): loaded
# once by the fork server, which forks every job process with them in memory already.
PRELOAD = ["deepgrad_server.job_preload"]


class LocalExecutor:
    """Each job in a process of its own (a crash, an OOM or a hung CUDA context cannot take the server down),
    forked by ``multiprocessing``'s fork server: one clean process, started by this server, that has imported what
    jobs need (``PRELOAD``) and forks a fresh process per job. A job starts in a fraction of a second instead of
    importing torch again. The fork server dies with this server (``job_preload``), and each job with the fork
    server (``child_main``), so none outlives the server. CUDA is never initialised in the fork server: each job
    initialises its own."""

    name = "local"

    def __init__(self, start_method: str = "forkserver") -> None:
        """``start_method``: ``forkserver``, or ``spawn`` (a fresh interpreter per job, seconds slower to start)."""
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(PRELOAD)

    def warm_up(self) -> None:
        """Start the fork server now (it imports ``PRELOAD`` in the background), not at the first job."""
        if self._ctx.get_start_method() == "forkserver":
            from multiprocessing import forkserver

            forkserver.ensure_running()

    def try_reserve(self) -> bool:
        return True  # one worker, one job at a time: the worker is the slot

    def release(self) -> None:
        pass

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def start(self, launch: Launch) -> LocalExecution:
        oom_before = hostmem.oom_kills()
        proc = self._ctx.Process(target=child_main, name=f"deepgrad-job-{launch.job_id}", args=(launch,))
        proc.start()
        return LocalExecution(proc, oom_before)


class LocalExecution:
    def __init__(self, proc: multiprocessing.process.BaseProcess, oom_before: dict[str, int]) -> None:
        self.proc, self._oom_before = proc, oom_before

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def wait(self, timeout: float) -> None:
        self.proc.join(timeout)

    def stop(self) -> None:
        self.proc.terminate()  # SIGTERM: the job stops after its current step

    def kill(self) -> None:
        self.proc.kill()

    def outcome(self) -> Outcome:
        code = self.proc.exitcode
        return Outcome(exitcode=code, reason=runner.EXIT_REASONS.get(code) if code is not None else None,
                       oom_killed=code == -signal.SIGKILL and hostmem.oom_killed_since(self._oom_before))


def child_main(launch: Launch) -> None:
    """Entry point of a job's process (``multiprocessing`` target; a Ray job's too): dies with its parent, goes first
    to the OOM killer, stops at the next step on SIGTERM (cancel); exits with ``runner.run``'s code."""
    die_with_parent()
    _first_to_go()
    if launch.threads is not None:
        import torch

        torch.set_num_threads(launch.threads)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s job {launch.job_id} %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    code = runner.run(launch, should_stop=stop.is_set)
    if code:
        sys.exit(code)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the server dies, so no orphan keeps writing."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _first_to_go() -> None:
    """Offer this process to the kernel's OOM killer before the server: out of memory, the job dies (and is
    reported ``out_of_memory`` by its worker), not the API serving everything else."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("500")
    except OSError:
        pass


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
