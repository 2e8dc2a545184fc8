"""The embedded worker: takes the oldest queued job, starts it through an executor, supervises it.

It holds a lease on the job and renews it while the job's process lives (``deepgrad_server.executors``: a
child process here by default). When that process dies without writing a result (killed, crashed), the job
goes back to the queue and resumes from its last epoch checkpoint,
up to ``max_retries`` times, then fails with reason ``worker_lost``. At start, and periodically, it
recovers jobs whose worker is gone: a dead process on this host at once, any other once its lease expires.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time

from deepgrad_core.spec import ExperimentSpec
from deepgrad_server import admission, hostmem, store
from deepgrad_server.db import Database
from deepgrad_server.executors import Execution, Executor, Launch, LocalExecutor, Outcome
from deepgrad_server.models import TERMINAL
from deepgrad_server.settings import Settings

log = logging.getLogger("deepgrad_server.worker")

POLL_S = 0.5
_LIFE = secrets.token_hex(4)  # this server process's life: a restarted server in a container reuses its pid
KILL_AFTER_S = 10.0  # a job that ignores SIGTERM this long is killed
START_BACKOFF_S = 5.0  # after an executor could not start a job


class Worker:
    def __init__(self, settings: Settings, db: Database, device: str | None = None,
                 threads: int | None = None, executor: Executor | None = None) -> None:
        """``threads``: CPU threads for the job (workers sharing the CPU split it: oversubscribed
        PyTorch CPU threads slow every job down by orders of magnitude). ``executor``: where jobs run
        (default: ``LocalExecutor``, a child process of this server)."""
        self.settings, self.db, self.device, self.threads = settings, db, device, threads
        self.executor: Executor = executor if executor is not None else LocalExecutor(settings.job_start)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{_LIFE}:{device or 'auto'}:{secrets.token_hex(2)}"
        self._stopping = threading.Event()
        self._wake = threading.Event()  # set by ``wake`` (a job was queued) and by ``stop``
        self._thread: threading.Thread | None = None
        self._execution: Execution | None = None
        self.current: str | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"deepgrad-worker-{self.device or 'auto'}",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """A job was queued: an idle worker claims it now rather than at its next poll (up to ``POLL_S`` later).
        Jobs queued by another process are found by the poll."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop taking jobs; a running job is stopped and put back in the queue (it resumes on restart)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        if isinstance(self.executor, LocalExecutor):
            self.executor.warm_up()  # the fork server imports torch for the jobs, meanwhile
        if self.executor.name == "local" and admission.memory_budget(self.settings) is not None:
            admission.warm_up()  # torch's first import (seconds) here, not between a claim and its first heartbeat
        self.recover()
        last_recover = time.monotonic()
        while not self._stopping.is_set():
            reserved = False
            try:
                if time.monotonic() - last_recover > self.settings.lease_seconds / 2:
                    self.recover()
                    last_recover = time.monotonic()
                # A slot first (a cluster's executor has as many as the cluster fits jobs), then a job.
                reserved = self.executor.try_reserve()
                job = None
                if reserved:
                    with self.db.writing() as s:
                        job = store.claim_next(s, owner=self.owner, lease_seconds=self.settings.lease_seconds,
                                               run_token=secrets.token_hex(8))
                if job is None:
                    self._wake.wait(POLL_S)  # a wake set since the claim returns at once: none is lost
                    self._wake.clear()
                    continue
                self._supervise(job.id, job.attempts, job.run_token)
            except Exception:  # the worker must outlive any one job's trouble (a full disk, a locked file)
                log.exception("worker loop error; retrying in 5 s")
                self._stopping.wait(5.0)
            finally:
                if reserved:
                    self.executor.release()

    def recover(self) -> None:
        """Requeue (or fail) jobs whose worker is gone."""
        with self.db.writing() as s:
            for job in store.running_jobs(s):
                if job.lease_owner == self.owner:
                    continue
                expired = job.lease_expires is None or job.lease_expires < store.now()
                if expired or _dead_here(job.lease_owner):
                    owner = job.lease_owner  # requeue_or_fail clears it
                    state = store.requeue_or_fail(s, job_id=job.id, max_retries=self.settings.max_retries,
                                                  why="its worker stopped")
                    log.warning("job %s lost its worker (%s): now %s", job.id, owner, state)

    def _supervise(self, job_id: str, attempt: int, run_token: str) -> None:
        """Run the job this worker has just claimed (``run_token``: this run of it) until it ends."""
        st = self.settings
        if not self._fits(job_id):
            return
        with self.db.writing() as s:  # sizing it may have taken a while (torch's first import): renew the lease
            ours, _ = store.heartbeat(s, job_id=job_id, owner=self.owner, lease_seconds=st.lease_seconds)
        if not ours:
            log.warning("job %s: its lease ran out before it started; not starting it", job_id)
            return
        log.info("job %s: starting (attempt %d) on %s", job_id, attempt,
                 self.device or ("the default device" if self.executor.name == "local" else self.executor.name))
        try:
            execution = self.executor.start(Launch(
                database_url=st.resolved_database_url, job_id=job_id, data_root=str(st.resolved_data_root),
                jobs_dir=str(st.resolved_checkpoint_dir), device=self.device, threads=self.threads,
                cache_dir=str(st.cache_dir), run_token=run_token))
        except Exception as err:  # the executor could not take it (a cluster out of reach): the job waits
            self._put_back(job_id, run_token, f"not started: {err}"[:500])
            log.warning("job %s: %s could not start it (%s); back in the queue, retrying in %.0f s", job_id,
                        self.executor.name, err, START_BACKOFF_S)
            self._stopping.wait(START_BACKOFF_S)
            return
        self._execution, self.current = execution, job_id
        term_sent: float | None = None
        last_beat = time.monotonic()
        try:
            while execution.alive():
                execution.wait(POLL_S)
                if self._stopping.is_set():
                    break
                if time.monotonic() - last_beat >= min(1.0, st.heartbeat_seconds) and execution.alive():
                    last_beat = time.monotonic()
                    with self.db.writing() as s:
                        ours, cancel = store.heartbeat(s, job_id=job_id, owner=self.owner,
                                                       lease_seconds=st.lease_seconds)
                        # Not ours because the job has just written its result (and may even have been
                        # deleted since, in the seconds before its process exits): let it exit.
                        job = None if ours else store.get_job(s, job_id=job_id)
                        finished = not ours and (job is None or job.state in TERMINAL)
                    if (cancel or not ours) and not finished and term_sent is None:
                        log.info("job %s: %s, stopping it", job_id, "cancel requested" if cancel else "lease lost")
                        execution.stop()
                        term_sent = time.monotonic()
                if term_sent is not None and time.monotonic() - term_sent > KILL_AFTER_S:
                    execution.kill()
            if self._stopping.is_set() and execution.alive():
                self._release(job_id, run_token, execution)
                return
            self._after_exit(job_id, run_token, execution.outcome())
        finally:
            self._execution, self.current = None, None

    def _release(self, job_id: str, run_token: str, execution: Execution) -> None:
        """Server shutdown: kill the job's process and queue the job again without counting the attempt."""
        execution.kill()
        execution.wait(10)
        self._put_back(job_id, run_token, "server stopped; resumes on restart")
        log.info("job %s: put back in the queue (server stopping)", job_id)

    def _put_back(self, job_id: str, run_token: str, message: str) -> None:
        """Queue a job this worker holds again, in its place, without counting the attempt."""
        with self.db.writing() as s:
            job = store.get_job(s, job_id=job_id)
            if job is not None and job.state == "running" and job.run_token == run_token:
                store.update_job(s, job_id=job_id, state="queued", lease_owner=None, lease_expires=None,
                                 attempts=max(job.attempts - 1, 0), message=message)

    def _fits(self, job_id: str) -> bool:
        """Whether the job's estimated memory fits this host now; if not, fail it ``out_of_memory`` unstarted.
        (Jobs that run elsewhere, on a cluster's nodes, are not held to this host's memory.)"""
        budget = admission.memory_budget(self.settings) if self.executor.name == "local" else None
        if budget is None:
            return True
        with self.db.reading() as s:
            job = store.get_job(s, job_id=job_id)
        try:
            error = admission.memory_error(ExperimentSpec.model_validate(job.spec), self.settings, budget)
        except ValueError:  # a spec this version refuses: the job process reports it
            return True
        if error is None:
            return True
        with self.db.writing() as s:
            store.finish(s, job_id=job_id, state="failed", reason="out_of_memory", owner=self.owner,
                         message=f"not started: {error['msg']}")
        log.warning("job %s: not started, it would not fit in memory: %s", job_id, error["msg"])
        return False

    def _after_exit(self, job_id: str, run_token: str, outcome: Outcome) -> None:
        with self.db.writing() as s:
            job = store.get_job(s, job_id=job_id)
            if job is None or job.state != "running":
                log.info("job %s: %s", job_id, job.state if job is not None else "deleted")
                return
            if job.run_token != run_token:  # our lease was lost and the job runs again elsewhere: not ours
                log.info("job %s: taken over by another run; leaving it be", job_id)
                return
            if outcome.oom_killed:
                # Retrying would only feed the kernel's OOM killer again (which may pick other processes).
                store.finish(s, job_id=job_id, state="failed", reason="out_of_memory",
                             message="the job process was killed by the kernel's out-of-memory killer: this host "
                                     f"(memory limit {hostmem.memory_limit_bytes() / 2**30:.1f} GiB) ran out of "
                                     "memory; lower train.batch_size or model.width, use a smaller data.subset, "
                                     "or set DEEPGRAD_MAX_JOB_MEMORY_GIB lower so that such jobs are refused at "
                                     "submit")
                log.warning("job %s: OOM-killed; failed out_of_memory (not retried)", job_id)
                return
            if outcome.reason is not None:  # the job process knew why, but could not write it
                store.finish(s, job_id=job_id, state="failed", reason=outcome.reason,
                             message=f"job process failed ({outcome.reason}); see the server log")
            elif outcome.exitcode == 0:
                store.finish(s, job_id=job_id, state="failed", reason="error",
                             message="job process exited without recording a result")
            else:
                state = store.requeue_or_fail(s, job_id=job_id, max_retries=self.settings.max_retries,
                                              why=outcome.why)
                log.warning("job %s: %s; now %s", job_id, outcome.why, state)


def make_workers(settings: Settings, db: Database) -> list[Worker]:
    """One worker per configured device; CPU workers share the cores evenly. With the Ray executor: one worker per
    job the cluster may run at once (``ray_max_jobs``), all sharing the executor's slots."""
    if settings.executor == "ray":
        from deepgrad_server.ray_executor import RayExecutor

        executor = RayExecutor(settings.ray_address, gpus_per_job=settings.ray_gpus_per_job,
                               cpus_per_job=settings.ray_cpus_per_job, python=settings.ray_python,
                               max_jobs=settings.ray_max_jobs, lost_after_s=settings.lease_seconds)
        threads = None if settings.ray_gpus_per_job > 0 else max(1, math.floor(settings.ray_cpus_per_job))
        return [Worker(settings, db, None, threads, executor) for _ in range(settings.ray_max_jobs)]
    devices = settings.devices
    on_cpu = sum(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // on_cpu) if on_cpu > 1 else None
    return [Worker(settings, db, d, threads if d == "cpu" else None) for d in devices]


def _dead_here(owner: str | None) -> bool:
    """Whether ``owner`` (host:pid:life:...) was a server process on this host that no longer runs."""
    if not owner:
        return True
    host, pid, life, *_ = [*owner.split(":"), "", ""]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():  # this process: a sibling worker (same life), or an earlier life of the server
        return life != _LIFE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def wake_workers(workers: list[Worker]) -> None:
    """Jobs were queued: the idle ones among ``workers`` (this process's) claim them now."""
    for worker in workers:
        worker.wake()
