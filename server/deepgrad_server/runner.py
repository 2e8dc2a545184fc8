"""One job run and recorded: ``run(launch)`` prepares the experiment (``deepgrad_core.experiment``) and runs it into
the store through ``DatabaseSink``. Whatever executes jobs calls ``run`` (``executors.LocalExecutor`` in a child
process of the server; a cluster's executor on another host): its return value, as the process's exit code, tells
the worker why a job ended when the job could not write that itself (``EXIT_REASONS``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepgrad_core.sink import Sink
from deepgrad_core.strict_json import strict_json
from deepgrad_server import store
from deepgrad_server.db import Database
from deepgrad_server.failures import JobFailure, classify

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepgrad_core.experiment import Experiment
    from deepgrad_core.histograms import HistBlock
    from deepgrad_core.norms import NormBlock
    from deepgrad_core.training import StepInfo, TrainResult

log = logging.getLogger("deepgrad_server.runner")

EXIT_REASONS = {10: "error", 11: "out_of_memory", 12: "data_missing", 13: "disk_full"}
EXIT_SUPERSEDED = 14  # another run of the job holds it now: nothing to record
_EXIT_CODES = {reason: code for code, reason in EXIT_REASONS.items()}
PROGRESS_EVERY_S = 1.0
NICE_ON_CPU = 10


@dataclass(frozen=True)
class Launch:
    """What a job process needs to run one job: plain values, so that it may run on another host."""

    database_url: str
    job_id: str
    data_root: str
    jobs_dir: str
    device: str | None = None
    threads: int | None = None
    cache_dir: str | None = None
    run_token: str = ""  # this run of the job (a claim): names its cluster job


def run(launch: Launch, *, should_stop: Callable[[], bool]) -> int:
    """Run the job and record how it ended. Returns 0, or the exit code of a failure (``EXIT_REASONS``), which
    says why even when recording it failed too (a full disk); ``EXIT_SUPERSEDED`` when another run of the job
    took it over (this one writes nothing more)."""
    db = Database(launch.database_url)
    sink = DatabaseSink(db, launch.job_id, run_token=launch.run_token or None)
    try:
        execute(db, launch.job_id, data_root=Path(launch.data_root), job_dir=Path(launch.jobs_dir) / launch.job_id,
                device=launch.device, should_stop=should_stop,
                cache_dir=Path(launch.cache_dir) if launch.cache_dir else None, sink=sink)
        return 0
    except store.Superseded as err:
        log.warning("stopped: %s", err)
        return EXIT_SUPERSEDED
    except JobFailure as failure:
        log.error("failed (%s): %s", failure.reason, failure.message)
        try:
            with sink.writing() as s:
                store.finish(s, job_id=launch.job_id, state="failed", reason=failure.reason,
                             message=failure.message)
        except store.Superseded as err:
            log.warning("not recorded: %s", err)
            return EXIT_SUPERSEDED
        except Exception:  # the store itself may be what failed (disk full): the exit code says why
            log.exception("could not record the failure")
        return _EXIT_CODES[failure.reason]
    finally:
        db.dispose()


def execute(db: Database, job_id: str, *, data_root: Path, job_dir: Path, device: str | None,
            should_stop: Callable[[], bool], cache_dir: Path | None = None, sink: DatabaseSink | None = None) -> None:
    """Run the job into the store; raise ``JobFailure`` with a reason a user can act on (``store.Superseded``
    when another run took the job over)."""
    try:
        _execute(db, job_id, data_root=data_root, job_dir=job_dir, device=device, should_stop=should_stop,
                 cache_dir=cache_dir, sink=sink or DatabaseSink(db, job_id))
    except (JobFailure, store.Superseded):
        raise
    except Exception as err:
        raise classify(err) from err


def _execute(db: Database, job_id: str, *, data_root: Path, job_dir: Path, device: str | None,
             should_stop: Callable[[], bool], cache_dir: Path | None, sink: DatabaseSink) -> None:
    import torch

    from deepgrad_core.device import choose_device
    from deepgrad_core.experiment import prepare
    from deepgrad_core.spec import ExperimentSpec

    with db.reading() as s:
        job = store.get_job(s, job_id=job_id)
    spec = ExperimentSpec.model_validate(job.spec)
    dev = choose_device(device)
    if dev.type == "cpu":  # training on the CPU must not starve the API serving on the same cores
        os.nice(NICE_ON_CPU)
    else:
        _check_device_memory(spec, dev)
    experiment = prepare(spec, data_root=data_root, device=dev, cache_dir=cache_dir)
    result = experiment.run(sink, should_stop=should_stop, checkpoint_dir=job_dir)
    if result.status == "succeeded" and torch.cuda.is_available():
        torch.cuda.empty_cache()


class DatabaseSink(Sink):
    """Streams a running experiment into the store: norms as they flush, metrics and filters per epoch,
    progress once a second, the result at the end; a resumed run first drops what it will send again."""

    def __init__(self, db: Database, job_id: str, run_token: str | None = None) -> None:
        """``run_token``: this run's claim of the job; every write first checks the job still holds it."""
        self.db, self.job_id, self.run_token = db, job_id, run_token
        self.registered: set[str] = set()  # kinds whose layer names are in the store: later blocks are a bare INSERT
        self.progress: _Progress | None = None
        self.filters: Callable[[], Any] = lambda: None  # the first conv's filters now, once started

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction of this run: ``store.Superseded`` if another run of the job has taken it over
        (a process cut off from its supervisor never writes into the run that replaced it)."""
        with self.db.writing() as s:
            if self.run_token is not None:
                store.hold(s, job_id=self.job_id, run_token=self.run_token)
            yield s

    def start(self, experiment: Experiment, *, resuming: bool) -> None:
        from deepgrad_core.analysis.filters import first_layer_filters  # torch: only the job process needs it

        self.filters = lambda: first_layer_filters(experiment.model)
        self.progress = _Progress(self.writing, self.job_id, experiment.spec, experiment.steps_per_epoch)
        with self.writing() as s:
            store.update_job(s, job_id=self.job_id, cost=strict_json(experiment.cost.to_dict()),
                             layers=experiment.layers, steps_per_epoch=experiment.steps_per_epoch)
            if not resuming:  # a fresh start: drop what an earlier attempt streamed
                store.truncate_from(s, job_id=self.job_id, step=0)
                store.put_array(s, job_id=self.job_id, name="filters_init", array=experiment.filters_init)

    def resume(self, start_step: int) -> None:
        with self.writing() as s:
            store.truncate_from(s, job_id=self.job_id, step=start_step)

    def step(self, info: StepInfo) -> None:
        self.progress.step(info)

    def norms(self, block: NormBlock) -> None:
        with self.writing() as s:
            store.append_norms(s, job_id=self.job_id, block=block, registered=self.registered)

    def histograms(self, block: HistBlock) -> None:
        with self.writing() as s:
            store.append_histograms(s, job_id=self.job_id, block=block)

    def epoch(self, metrics: dict[str, Any]) -> None:
        with self.writing() as s:
            store.put_epoch(s, job_id=self.job_id, metrics=strict_json(metrics))
            store.update_job(s, job_id=self.job_id, filters=store.encode_array(self.filters()))
        self.progress.epoch_done(metrics)

    def finish(self, result: TrainResult) -> None:
        self.progress.write()
        summary, layer_means = split_summary(strict_json(result.summary))
        fields = {"environment": result.environment, "summary": summary, "layer_means": layer_means,
                  "final": strict_json(result.final) or None, "per_class": strict_json(result.per_class),
                  "confusion": result.confusion, "diverged_at_step": result.diverged_at_step,
                  "layers": result.layers, "filters": store.encode_array(self.filters())}
        reason = message = None
        if result.status == "diverged":
            reason, message = "diverged", (f"non-finite loss or gradient norms at step {result.diverged_at_step}; "
                                           "everything recorded before is kept; try a lower train.lr or "
                                           "train.grad_clip")
        elif result.status == "cancelled":
            reason, message = "cancelled", f"cancelled after {len(result.history)} complete epoch(s)"
        with self.writing() as s:
            store.finish(s, job_id=self.job_id, state=result.status, reason=reason, message=message, **fields)


def _check_device_memory(spec: Any, dev: Any) -> None:
    """Fail at once, before any allocation, a job whose estimated GPU memory exceeds what is free there."""
    import torch

    from deepgrad_core.analysis.memory import estimate_memory

    need = estimate_memory(spec, "cuda").device_bytes
    free, total = torch.cuda.mem_get_info(dev)
    if need > free:
        raise JobFailure("out_of_memory", f"not started: this job needs about {need / 2**30:.1f} GiB on {dev} and "
                                          f"{free / 2**30:.1f} of its {total / 2**30:.1f} GiB are free; lower "
                                          "train.batch_size or model.width, or use train.precision bf16")


class _Progress:
    """Throttled progress writes: the loss is read (a host sync) once a second, not every step."""

    def __init__(self, writing: Callable[[], AbstractContextManager[Session]], job_id: str, spec: Any,
                 steps_per_epoch: int) -> None:
        self.writing, self.job_id = writing, job_id
        self.state: dict[str, Any] = {"epoch": 0, "epochs": spec.train.epochs, "step": 0,
                                      "total_steps": spec.train.epochs * steps_per_epoch, "loss": None,
                                      "train_acc": None, "test_acc": None, "images_per_sec": None}
        self.batch_size, self.steps_per_epoch = spec.train.batch_size, steps_per_epoch
        self.last_write = 0.0
        self.mark: tuple[float, int] | None = None

    def step(self, info: Any) -> None:
        t = time.monotonic()
        if self.mark is None:
            self.mark = (t, info.step)
        if t - self.last_write < PROGRESS_EVERY_S:
            return
        t0, s0 = self.mark
        if info.step > s0 and t > t0:
            self.state["images_per_sec"] = (info.step - s0) * self.batch_size / (t - t0)
        self.mark = (t, info.step)
        self.state.update(epoch=info.epoch, step=info.step + 1, loss=_num(float(info.loss)))
        self.write()

    def epoch_done(self, metrics: dict[str, Any]) -> None:
        self.state.update(epoch=metrics["epoch"] + 1, step=(metrics["epoch"] + 1) * self.steps_per_epoch,
                          loss=_num(metrics["train_loss"]),
                          train_acc=_num(metrics["train_acc"]), test_acc=_num(metrics["test_acc"]),
                          images_per_sec=_num(metrics["images_per_sec"]))
        self.write()

    def write(self) -> None:
        self.last_write = time.monotonic()
        with self.writing() as s:
            store.update_job(s, job_id=self.job_id, progress={**self.state, "updated_at": store.now()})


def split_summary(summary: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run summary without its per-layer, per-epoch means, and those means (kind -> layer -> [epochs])."""
    slim, means = {}, {}
    for key, value in summary.items():
        if isinstance(value, dict) and "mean_per_epoch" in value:
            means[key] = value["mean_per_epoch"]
            value = {k: v for k, v in value.items() if k != "mean_per_epoch"}
        slim[key] = value
    return slim, means


def _num(x: float | None) -> float | None:
    return x if x is not None and x == x and abs(x) != float("inf") else None
