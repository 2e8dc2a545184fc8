"""``deepgrad-client watch``: a progress bar per epoch, fed by the events stream or, failing that, by polling."""

from __future__ import annotations

import logging
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ._client import TERMINAL_STATES, Client, Job
from ._exceptions import APIError, AuthError, ConnectError, NotFound
from ._render import num, pct, state_text

log = logging.getLogger(__name__)


def watch(client: Client, job_id: str, console: Console, *, poll: float = 2.0) -> Job:
    """Show the job's progress until it ends; return the ended job."""
    job = client.get(job_id)
    if job.get("state") in TERMINAL_STATES:
        return job
    with _EpochBars(console) as bars:
        bars.show_job(job)
        try:
            for event in client.events(job_id):
                if event.event == "progress" and isinstance(event.data, dict):
                    bars.show_progress(event.data)
                elif event.event == "state" and isinstance(event.data, dict):
                    bars.show_state(event.data.get("state"), event.data.get("message"))
                elif event.event == "end" and isinstance(event.data, dict):
                    bars.show_job(event.data)
                    return event.data
            reason = "the event stream ended before the job did"
        except (AuthError, NotFound):
            raise
        except (ConnectError, APIError) as err:
            reason = f"the event stream failed ({err})"
        bars.note(f"{reason}; polling every {poll:g} s")
        job = client.wait(job_id, progress=bars.show_job, poll=poll)
        bars.show_job(job)
        return job


class _EpochBars:
    """One bar for the running epoch's steps; each finished epoch leaves a line with its metrics."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(),
                                 console=console, transient=False)
        self.task = self.progress.add_task("waiting", total=None, metrics="")
        self.epoch = None  # epochs completed, as last shown
        self.state = None

    def __enter__(self) -> _EpochBars:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.progress.console.print(f"[dim]{escape(text)}[/]")

    def show_job(self, job: Job) -> None:
        self.show_state(job.get("state"), job.get("message"))
        if job.get("progress"):
            self.show_progress(job["progress"])

    def show_state(self, state: str | None, message: str | None = None) -> None:
        if state is None or state == self.state:
            return
        self.state = state
        text = f"state: {state_text({'state': state})}" + (f" - {escape(message)}" if message else "")
        self.progress.console.print(text)
        if state == "queued":
            self.progress.update(self.task, description="queued")

    def show_progress(self, p: dict[str, Any]) -> None:
        done, epochs = int(p.get("epoch") or 0), int(p.get("epochs") or 0)
        step, total = int(p.get("step") or 0), int(p.get("total_steps") or 0)
        if self.epoch is not None and done > self.epoch:  # an epoch ended: leave its line above the bar
            self.progress.console.print(f"epoch {done}/{epochs}  loss {num(p.get('loss'))}  "
                                        f"train {pct(p.get('train_acc'))}  test {pct(p.get('test_acc'))}")
        self.epoch = done
        per_epoch = total // epochs if epochs and total else None
        within = step - done * per_epoch if per_epoch else step
        if per_epoch and done >= epochs:
            within = per_epoch
        current = min(done + 1, epochs) if epochs else done + 1
        speed = f"  {p['images_per_sec']:.0f} img/s" if p.get("images_per_sec") else ""
        self.progress.update(self.task, description=f"epoch {current}/{epochs or '?'}", total=per_epoch,
                             completed=max(0, min(within, per_epoch or within)),
                             metrics=f"loss {num(p.get('loss'))}{speed}")
