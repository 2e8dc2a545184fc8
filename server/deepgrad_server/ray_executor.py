"""Jobs on a Ray cluster: each claimed job becomes one Ray job (the Jobs SDK), asking for ``ray_gpus_per_job`` GPUs.

Why the Jobs SDK and not tasks: a task submitted from this process would make the API process its owner (the task
dies with it) and ``ray.init`` replaces the server's SIGTERM handler; the Jobs SDK talks HTTP to the cluster's
dashboard, and Ray runs the job's entrypoint on a node with the resources asked for (without
``entrypoint_num_gpus`` it would run on the head node, without a GPU). Ray has no admission queue: the queue stays
in DeepGrad's database and ``try_reserve`` keeps at most as many jobs in flight as the cluster has slots. Ray does
not retry an entrypoint; when one dies, the worker's lease logic requeues the job, and its next run resumes from
the last checkpoint (in ``checkpoint_dir``, which every node must reach).

The entrypoint is ``python -m deepgrad_server.ray_entry``: the same ``runner.run`` the local executor calls,
writing straight to the database (PostgreSQL). Each run's submission id is ``deepgrad-<job>-<run token>``: a
submit retried after a lost answer is refused by Ray as a duplicate, never run twice.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import asdict
from typing import Any

from deepgrad_server.executors import Outcome
from deepgrad_server.runner import Launch

log = logging.getLogger("deepgrad_server.ray")

LAUNCH_ENV = "DEEPGRAD_LAUNCH"
STATUS_EVERY_S = 1.0  # how often a running job's status is asked of the cluster
SLOTS_EVERY_S = 10.0  # how often the cluster's size is asked again (nodes join and leave)
_ACTIVE = {"PENDING", "RUNNING"}


class RayUnavailable(RuntimeError):
    pass


class RayExecutor:
    """Starts jobs on the Ray cluster whose dashboard (Jobs API) is at ``address`` (``http://head:8265``).

    ``gpus_per_job`` (0 on a CPU cluster) and ``cpus_per_job`` are what each job asks Ray for; a cluster's slots
    are, over its alive nodes, how many jobs fit by those numbers. ``python`` is the interpreter with DeepGrad
    installed on the cluster's nodes. The token of a cluster with token auth comes from Ray's own
    ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` (or ``~/.ray/auth_token``)."""

    name = "ray"

    def __init__(self, address: str, *, gpus_per_job: float = 1.0, cpus_per_job: float = 1.0,
                 python: str = "python", max_jobs: int = 16, lost_after_s: float = 60.0) -> None:
        self.address, self.gpus_per_job, self.cpus_per_job = address, gpus_per_job, cpus_per_job
        self.python, self.max_jobs, self.lost_after_s = python, max_jobs, lost_after_s
        self._client: Any = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self._slots: int | None = None
        self._slots_at = -math.inf
        self._said_full = False

    # --- capacity -------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError as err:  # the server's own extra: deepgrad[ray]
                raise RayUnavailable("the Ray executor needs Ray: pip install 'deepgrad[ray]'") from err
            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as err:  # ConnectionError, an auth error (no or a wrong token), a version mismatch
                raise RayUnavailable(f"cannot reach the Ray cluster's Jobs API at {self.address}: {err}") from err
        return self._client

    def slots(self) -> int:
        """Jobs the cluster can run at once, by its alive nodes' resources (asked again every 10 s); at most
        ``max_jobs``. Unreachable: the last known number (0 before the first answer)."""
        now = time.monotonic()
        if now - self._slots_at >= SLOTS_EVERY_S:
            self._slots_at = now
            try:
                self._slots = min(self.max_jobs, self._count_slots())
            except Exception as err:
                log.warning("cannot ask the Ray cluster at %s for its nodes: %s", self.address, err)
        return self._slots or 0

    def _count_slots(self) -> int:
        from ray.util.state import list_nodes

        total = 0
        for node in list_nodes(address=self.address, filters=[("state", "=", "ALIVE")], detail=True):
            res = node.resources_total or {}
            fits = [math.floor(res.get("CPU", 0) / self.cpus_per_job + 1e-9)] if self.cpus_per_job > 0 else []
            if self.gpus_per_job > 0:
                fits.append(math.floor(res.get("GPU", 0) / self.gpus_per_job + 1e-9))
            total += min(fits) if fits else 0
        return total

    def try_reserve(self) -> bool:
        """Take a slot for a job about to be claimed; False when every slot is in use (or the cluster has none)."""
        slots = self.slots()
        with self._lock:
            if self._in_flight >= slots:
                if slots == 0 and not self._said_full:
                    self._said_full = True
                    log.warning("the Ray cluster at %s has no node that fits a job (%g GPU, %g CPU each): jobs "
                                "wait in the queue until one joins", self.address, self.gpus_per_job,
                                self.cpus_per_job)
                return False
            self._said_full = False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "slots": self._slots or 0, "in_flight": self._in_flight}

    # --- jobs -----------------------------------------------------------------------------------------------

    def start(self, launch: Launch) -> RayExecution:
        submission_id = f"deepgrad-{launch.job_id}-{launch.run_token}"
        options: dict[str, Any] = {"entrypoint_num_cpus": self.cpus_per_job}
        if self.gpus_per_job > 0:
            options["entrypoint_num_gpus"] = self.gpus_per_job
        env = {LAUNCH_ENV: json.dumps(asdict(launch)), "PYTHONUNBUFFERED": "1"}
        for attempt in range(3):
            try:
                self.client.submit_job(entrypoint=f"{self.python} -m deepgrad_server.ray_entry",
                                       submission_id=submission_id, runtime_env={"env_vars": env},
                                       metadata={"deepgrad_job": launch.job_id}, **options)
                break
            except RayUnavailable:
                raise
            except Exception as err:
                if self._exists(submission_id):  # an earlier try went through; its answer was lost
                    break
                if attempt == 2:
                    raise RayUnavailable(f"the Ray cluster refused job {launch.job_id}: {err}") from err
                time.sleep(1.0)
        log.info("job %s: submitted to Ray as %s", launch.job_id, submission_id)
        return RayExecution(self, submission_id)

    def _exists(self, submission_id: str) -> bool:
        try:
            self.client.get_job_status(submission_id)
            return True
        except Exception:
            return False


class RayExecution:
    """One Ray job, watched through the Jobs API (at most one status request a second)."""

    def __init__(self, executor: RayExecutor, submission_id: str) -> None:
        self.executor, self.submission_id = executor, submission_id
        self._status = "PENDING"
        self._asked = -math.inf
        self._unreachable_since: float | None = None
        self._lost = False

    def _poll(self) -> str:
        now = time.monotonic()
        if self._status in _ACTIVE and not self._lost and now - self._asked >= STATUS_EVERY_S:
            self._asked = now
            try:
                self._status = str(self.executor.client.get_job_status(self.submission_id).value)
                self._unreachable_since = None
            except Exception as err:
                self._unreachable_since = self._unreachable_since or now
                if now - self._unreachable_since > self.executor.lost_after_s:
                    log.warning("%s: no answer from the Ray cluster for %.0f s (%s); counting the run lost",
                                self.submission_id, now - self._unreachable_since, err)
                    self._lost = True
        return self._status

    def alive(self) -> bool:
        return not self._lost and self._poll() in _ACTIVE

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def stop(self) -> None:
        """Ray sends the entrypoint SIGTERM (it stops after its current step), then SIGKILL after
        ``RAY_JOB_STOP_WAIT_TIME_S`` (a setting of the cluster, 3 s by default)."""
        try:
            self.executor.client.stop_job(self.submission_id)
        except Exception as err:
            log.warning("%s: could not ask Ray to stop it: %s", self.submission_id, err)

    def kill(self) -> None:
        self.stop()  # Ray's stop ends in SIGKILL by itself; asking again is harmless

    def outcome(self) -> Outcome:
        from deepgrad_server import runner

        if self._lost:
            return Outcome(exitcode=None, detail="lost contact with the Ray cluster")
        try:
            info = self.executor.client.get_job_info(self.submission_id)
        except Exception as err:
            return Outcome(exitcode=None, detail=f"could not ask the Ray cluster how it ended: {err}")
        code = info.driver_exit_code
        if code is not None and code > 128:  # a shell's 128 + signal
            code = -(code - 128)
        if code is None and str(info.status.value) == "STOPPED":
            code = -15
        detail = None if code is not None else (info.message or str(info.status.value))[:500]
        return Outcome(exitcode=code, reason=runner.EXIT_REASONS.get(code) if code is not None else None,
                       detail=detail)
