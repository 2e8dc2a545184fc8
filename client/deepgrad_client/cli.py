"""``deepgrad-client``: the command line over ``Client``.

Exit codes: 0 ok; 1 the server or the request failed (the message goes to stderr, no traceback), and
``watch``/``submit --watch`` also exit 1 when the job ends other than ``succeeded``; 2 a usage error
(click's), including a spec file that does not parse or a malformed ``--set`` or job id.
"""

from __future__ import annotations

import json
import os
import sys
import time
import webbrowser
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.markup import escape

from . import _render
from ._client import STATES, TERMINAL_STATES, Client, Job
from ._exceptions import DeepGradError, InputError, WaitTimeout
from ._spec import apply_overrides, load_spec
from ._watch import watch as watch_job

PLOT_KINDS = ("norms", "selected", "heatmap", "depth", "ratio", "metrics", "filters", "cost", "histogram")
COMPARE_PLOT_KINDS = ("metrics", "depth", "ratio", "filters", "cost", "histogram")
GRADIENT_KINDS = ("weight", "activation", "global")
CANCEL_WAIT_S = 15.0  # how long `cancel` waits to report how a running job ended


class _InputProblem(click.ClickException):
    exit_code = 2


class _Group(click.Group):
    """Turns the client's errors into click's: message on stderr, exit 1 (2 for bad local input)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InputError as err:
            raise _InputProblem(str(err)) from None
        except DeepGradError as err:
            raise click.ClickException(str(err)) from None


class _State:
    """What the group's options set up; the client is made on first use (``--help`` needs none)."""

    def __init__(self, url: str | None, token: str | None, retries: int, timeout: float) -> None:
        self.url, self.token, self.retries, self.timeout = url, token, retries, timeout
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 5.0))
            self._client = Client(self.url, self.token, retries=self.retries, timeout=timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


pass_state = click.make_pass_decorator(_State)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the server's JSON (for scripts).")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", metavar="URL",
              help="Server URL [env DEEPGRAD_URL, else the config file, else http://127.0.0.1:8000].")
@click.option("--token", metavar="TOKEN",
              help="Bearer token [env DEEPGRAD_TOKEN, else the config file, else the local server's token file].")
@click.option("--retries", type=click.IntRange(0, 10), default=3, show_default=True,
              help="Retries of a request that failed on the way (connection errors, 502/503/504).")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds to wait for an answer.")
@click.version_option(package_name="deepgrad", prog_name="deepgrad-client")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, retries: int, timeout: float) -> None:
    """Submit DeepGrad training jobs, watch them, and compare how gradients flowed."""
    ctx.obj = _State(url, token, retries, timeout)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="deepgrad-client")


def _out() -> Console:
    return Console(highlight=False)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _finish(job: Job) -> None:
    """Exit 1 with the reason when a watched job did not succeed."""
    if job.get("state") != "succeeded":
        why = ": ".join(str(x) for x in (job.get("reason"), job.get("message")) if x)
        raise click.ClickException(f"job {job['id']} {job.get('state')}" + (f" ({why})" if why else ""))


@cli.command()
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a spec field, e.g. --set train.lr=0.01 --set model.batch_norm=true (repeatable).")
@click.option("--name", help="Job name (default: the spec's name, else the file's stem).")
@click.option("--watch", is_flag=True, help="Show progress until the job ends.")
@click.option("--poll", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds between polls when the event stream is unavailable.")
@json_option
@pass_state
def submit(state: _State, spec: Path, overrides: tuple[str, ...], name: str | None, watch: bool, poll: float,
           as_json: bool) -> None:
    """Queue a job from a spec file (.yaml, .yml or .json)."""
    body = apply_overrides(load_spec(spec), overrides)
    job = state.client.submit(body, name=name or body.get("name") or spec.stem)
    if not watch:
        _print_json(job) if as_json else _out().print(
            f"submitted [bold]{job['id']}[/] ({escape(job['name'])}): {_render.state_text(job)}\n"
            f"watch it with: deepgrad-client watch {job['id']}")
        return
    if not as_json:
        _out().print(f"submitted [bold]{job['id']}[/] ({escape(job['name'])})")
    _watch_and_finish(state, job["id"], poll, as_json)


@cli.command(name="list")
@click.option("--state", "state_filter", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--name", help="Only jobs whose name contains this.")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@json_option
@pass_state
def list_jobs(state: _State, state_filter: str | None, name: str | None, limit: int, offset: int,
              as_json: bool) -> None:
    """List jobs, newest first."""
    page = state.client.list(state=state_filter, name=name, limit=limit, offset=offset)
    if as_json:
        return _print_json(page)
    out = _out()
    jobs = page.get("data") or []
    if not jobs:
        out.print("no jobs" + (" match" if state_filter or name or offset else " yet"))
        return
    out.print(_render.jobs_table(jobs))
    out.print(f"[dim]{offset + 1}-{offset + len(jobs)} of {page.get('count', len(jobs))}[/]")


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@pass_state
def status(state: _State, job_id: str, as_json: bool) -> None:
    """Show one job: state, progress, final metrics, gradient verdict."""
    job = state.client.get(job_id)
    _print_json(job) if as_json else _out().print(_render.job_table(job))


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--poll", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds between polls when the event stream is unavailable.")
@json_option
@pass_state
def watch(state: _State, job_id: str, poll: float, as_json: bool) -> None:
    """Show a job's progress, epoch by epoch, until it ends (exit 1 unless it succeeded)."""
    _watch_and_finish(state, job_id, poll, as_json)


def _watch_and_finish(state: _State, job_id: str, poll: float, as_json: bool) -> None:
    if as_json:  # no live display: scripts get the ended job only
        job = state.client.wait(job_id, poll=poll)
        _print_json(job)
    else:
        out = _out()
        job = watch_job(state.client, job_id, out, poll=poll)
        out.print(_render.job_table(job))
    _finish(job)


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@pass_state
def cancel(state: _State, job_id: str, as_json: bool) -> None:
    """Cancel a queued or running job."""
    job = state.client.cancel(job_id)
    if job.get("state") not in TERMINAL_STATES:  # running: its worker stops it at the next step; say how it ended
        try:
            job = state.client.wait(job_id, poll=0.5, timeout=CANCEL_WAIT_S)
        except WaitTimeout:
            job = state.client.get(job_id)
    if as_json:
        return _print_json(job)
    if job.get("state") not in TERMINAL_STATES:
        _out().print(f"{job['id']}: cancel requested; still {_render.state_text(job)} after {CANCEL_WAIT_S:g} s "
                     f"(check with: deepgrad-client status {job['id']})")
    elif job.get("state") == "cancelled":
        _out().print(f"{job['id']}: {_render.state_text(job)} ({escape(job.get('message') or '')})")
    else:  # it ended on its own before the cancel reached it
        _out().print(f"{job['id']}: ended {_render.state_text(job)} before the cancel took effect")


@cli.command()
@click.argument("job_id", metavar="ID")
@pass_state
def delete(state: _State, job_id: str) -> None:
    """Delete an ended job and all its data."""
    state.client.delete(job_id)
    _out().print(f"deleted {job_id}")


@cli.command()
@click.argument("job_id", metavar="ID")
@json_option
@pass_state
def metrics(state: _State, job_id: str, as_json: bool) -> None:
    """Per-epoch loss and accuracy of a job."""
    body = state.client.metrics(job_id)
    _print_json(body) if as_json else _out().print(_render.epochs_table(body))


@cli.command()
@json_option
@pass_state
def models(state: _State, as_json: bool) -> None:
    """Architectures and options the server accepts."""
    body = state.client.models()
    if as_json:
        return _print_json(body)
    out = _out()
    out.print(_render.models_table(body))
    if body.get("datasets"):
        out.print(f"data sets: {', '.join(map(str, body['datasets']))}")
    if body.get("limits"):
        out.print("limits: " + ", ".join(f"{k} {v}" for k, v in body["limits"].items()))


@cli.command()
@click.argument("specs", metavar="SPEC...", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a field of every spec, e.g. --set model.width=0.5 (repeatable).")
@json_option
@pass_state
def cost(state: _State, specs: tuple[Path, ...], overrides: tuple[str, ...], as_json: bool) -> None:
    """What each spec would cost before it runs: parameters, FLOPs, memory; one table across specs."""
    rows = [(path.stem, state.client.cost(apply_overrides(load_spec(path), overrides))) for path in specs]
    if as_json:
        return _print_json([{"spec_file": str(p), **body} for p, (_, body) in zip(specs, rows, strict=True)])
    out = _out()
    out.print(_render.cost_table(rows))
    for label, body in rows:
        for error in body.get("limit_errors") or []:
            out.print(f"[red]{escape(label)}[/]: {escape(error)}")


@cli.command()
@json_option
@pass_state
def health(state: _State, as_json: bool) -> None:
    """Whether the server is up, and its queue."""
    body = state.client.health()
    if as_json:
        return _print_json(body)
    _out().print(f"{state.client.base_url}: {body.get('status')} (version {body.get('version')}), "
                 f"{body.get('queued')} queued, {body.get('running')} running, worker {body.get('worker')}")


@cli.command()
@click.argument("job_ids", metavar="ID1 ID2 [ID...]", nargs=-1, required=True)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Also save the comparison figure (PNG) here.")
@click.option("--plot-kind", type=click.Choice(COMPARE_PLOT_KINDS), default="metrics", show_default=True)
@json_option
@pass_state
def compare(state: _State, job_ids: tuple[str, ...], plot_path: Path | None, plot_kind: str, as_json: bool) -> None:
    """Compare 2-12 jobs: accuracy, loss, time, cost and the gradient ratio side by side."""
    if not 2 <= len(job_ids) <= 12:
        raise click.UsageError(f"compare takes 2 to 12 job ids, got {len(job_ids)}")
    body = state.client.compare(job_ids)
    if as_json:
        _print_json(body)
    else:
        _out().print(_render.compare_table(body))
    if plot_path is not None:
        plot_path.write_bytes(state.client.compare_plot(plot_kind, job_ids))
        click.echo(f"wrote {plot_path}", err=as_json)


@cli.command()
@click.argument("job_id", metavar="ID")
@click.argument("kind", type=click.Choice(PLOT_KINDS))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Where to write the PNG.")
@click.option("--norm-kind", type=click.Choice(("weight", "activation")), help="Which gradient norms.")
@click.option("--layers", help="Comma-separated layer names (for 'selected').")
@click.option("--epochs", help="Comma-separated 1-based epochs (for 'depth').")
@click.option("--smooth", type=click.IntRange(0, 10_000), help="Moving-average window in records.")
@click.option("--max-points", type=click.IntRange(10, 100_000))
@click.option("--main-path", is_flag=True, default=None, help="depth: only the stem and main-path convs.")
@pass_state
def plot(state: _State, job_id: str, kind: str, output: Path, norm_kind: str | None, layers: str | None,
         epochs: str | None, smooth: int | None, max_points: int | None, main_path: bool | None) -> None:
    """Save one of a job's figures as PNG: norms, selected, heatmap, depth, ratio, metrics, filters, cost,
    histogram (weight-gradient distributions)."""
    state.client.save_plot(job_id, kind, output, norm_kind=norm_kind, layers=layers, epochs=epochs,
                           smooth=smooth, max_points=max_points, main_path=main_path)
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("job_id", metavar="ID")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              required=True, help="Where to write the CSV ('-': standard output).")
@click.option("--kind", type=click.Choice(GRADIENT_KINDS), default="weight", show_default=True)
@pass_state
def export(state: _State, job_id: str, csv_path: Path, kind: str) -> None:
    """Export a job's full per-layer gradient-norm series as CSV (step,<layer>,...)."""
    if str(csv_path) == "-":
        sys.stdout.write(state.client.gradients_csv(job_id, kind))
        return
    state.client.export(job_id, csv_path, kind)
    click.echo(f"wrote {csv_path}")


# -- the browser: the dashboard and reports ------------------------------------------------------------------

@cli.command(name="open")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--print", "print_only", is_flag=True, help="Only print the link (open no browser).")
@pass_state
def open_dashboard(state: _State, job_id: str | None, print_only: bool) -> None:
    """Open the dashboard (a job's page with ID) in a browser, signed in by a one-time login link."""
    link = state.client.login_link(job_id)
    if print_only:
        click.echo(link["url"])
        return
    until = link.get("expires_at")
    when = f"; works once, until {datetime.fromisoformat(until.replace('Z', '+00:00')).astimezone():%H:%M}" \
        if until else ""
    click.echo(f"login link{when}:\n    {link['url']}")
    if not _can_open_browser() or not webbrowser.open(link["url"]):
        click.echo("no browser to open here: open the link above in yours (over SSH, forward the server's port "
                   "first and pass --url with the forwarded address)", err=True)


def _can_open_browser() -> bool:
    """Whether a graphical browser can start: Python's ``webbrowser`` would otherwise run a text browser in this
    terminal (lynx, w3m), which cannot sign in. ``$BROWSER`` is the user's own choice."""
    if os.environ.get("BROWSER") or sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@cli.command()
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--compare", "compare_ids", metavar="ID1,ID2,...", help="A comparison of 2-12 jobs instead.")
@click.option("--study", "study_id", metavar="ID", help="A study instead.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), required=True,
              help="The HTML file to write ('-': standard output); an existing one is replaced.")
@pass_state
def report(state: _State, job_id: str | None, compare_ids: str | None, study_id: str | None, output: Path) -> None:
    """Save a job's, a comparison's or a study's report: one self-contained HTML file (figures and tables inline)
    that opens offline and prints well."""
    if sum(x is not None for x in (job_id, compare_ids, study_id)) != 1:
        raise click.UsageError("give one of: a job ID, --compare ID1,ID2,... or --study ID")
    if compare_ids is not None:
        ids = [i for i in compare_ids.replace(",", " ").split() if i]
        if not 2 <= len(ids) <= 12:
            raise click.UsageError(f"--compare takes 2 to 12 job ids, got {len(ids)}")
        html = state.client.compare_report(ids)
    elif study_id is not None:
        html = state.client.study_report(study_id)
    else:
        html = state.client.report(job_id)
    if str(output) == "-":
        sys.stdout.buffer.write(html)
        return
    partial = output.with_name(f".{output.name}.part")  # written whole or not at all: no half report
    try:
        partial.write_bytes(html)
        partial.replace(output)
    except OSError as err:
        raise click.ClickException(f"cannot write {output}: {err.strerror or err}") from None
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"wrote {output} ({len(html) / 1024:,.0f} KB)")


# -- studies --------------------------------------------------------------------------------------------------

STUDY_PLOT_KINDS = ("accuracy", "ratio", "cost", "depth", "metrics", "histogram")


@cli.group()
def study() -> None:
    """Run a set of paired jobs as one study: a preset (deepgrad-client study presets) or a study file."""


@study.command(name="run")
@click.argument("what", metavar="PRESET_OR_FILE")
@click.option("--set", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
              help="Override a field of every job's spec, e.g. --set train.epochs=2 --set model.width=0.25.")
@click.option("--name", help="Study name (default: the preset's, or the file's stem).")
@click.option("--watch", is_flag=True, help="Show progress until every job has ended, then the summary.")
@click.option("--poll", type=click.FloatRange(min=0.05), default=5.0, show_default=True,
              help="Seconds between progress checks with --watch.")
@json_option
@pass_state
def study_run(state: _State, what: str, overrides: tuple[str, ...], name: str | None, watch: bool, poll: float,
              as_json: bool) -> None:
    """Queue a study: a preset's name, or a file (.yaml/.yml/.json) holding base: and grid: or points:."""
    sets = apply_overrides({}, overrides)
    path = Path(what)
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.is_file():
        definition = load_spec(path)
        unknown = set(definition) - {"name", "base", "grid", "points", "preset"}
        if unknown:
            raise InputError(f"study file {path}: unknown key(s) {sorted(unknown)} (a study file holds name, base, "
                             "and grid or points; or preset)")
        body = state.client.create_study(preset=definition.get("preset"), base=definition.get("base"),
                                         grid=definition.get("grid"), points=definition.get("points"),
                                         overrides=_flat(sets), name=name or definition.get("name") or path.stem)
    else:
        body = state.client.create_study(preset=what, overrides=_flat(sets), name=name)
    if as_json and not watch:
        _print_json(body)
        return
    if not as_json:
        _out().print(f"queued study [bold]{body['id']}[/] ({escape(body['name'])}): {len(body['jobs'])} jobs\n"
                     f"follow it with: deepgrad-client study status {body['id']}")
    if watch:
        def progress(current: dict[str, Any]) -> None:
            if not as_json:
                _out().print(f"{time.strftime('%H:%M:%S')} {_render.counts_text(current.get('counts') or {})}")

        state.client.wait_study(body["id"], progress=progress, poll=poll)
        summary = state.client.study_summary(body["id"])
        _print_json(summary) if as_json else _out().print(_render.summary_table(summary))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``: --set values as the server's ``set``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@study.command(name="presets")
@json_option
@pass_state
def study_presets(state: _State, as_json: bool) -> None:
    """The studies the server runs by name."""
    presets = state.client.presets()
    _print_json(presets) if as_json else _out().print(_render.presets_table(presets))


@study.command(name="list")
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@json_option
@pass_state
def study_list(state: _State, limit: int, as_json: bool) -> None:
    """Studies, newest first, with their jobs' states."""
    body = state.client.studies(limit=limit)
    _print_json(body) if as_json else _out().print(_render.studies_table(body["data"]))


@study.command(name="status")
@click.argument("study_id", metavar="ID")
@json_option
@pass_state
def study_status(state: _State, study_id: str, as_json: bool) -> None:
    """A study's jobs: what each varies, its state and progress."""
    body = state.client.study(study_id)
    _print_json(body) if as_json else _out().print(_render.study_table(body))


@study.command(name="summary")
@click.argument("study_id", metavar="ID")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: one column per varied key, then every result.")
@json_option
@pass_state
def study_summary(state: _State, study_id: str, as_csv: bool, as_json: bool) -> None:
    """One row per job: accuracy, loss, time, parameters, FLOPs, first/last gradient ratio, vanishing."""
    body = state.client.study_summary(study_id)
    if as_csv:
        sys.stdout.write(_render.summary_csv(body))
    else:
        _print_json(body) if as_json else _out().print(_render.summary_table(body))


@study.command(name="plot")
@click.argument("study_id", metavar="ID")
@click.argument("kind", type=click.Choice(STUDY_PLOT_KINDS))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True,
              help="Where to write the PNG.")
@pass_state
def study_plot(state: _State, study_id: str, kind: str, output: Path) -> None:
    """Save a study figure: accuracy, ratio, cost (accuracy against parameters and FLOPs), depth, metrics."""
    output.write_bytes(state.client.study_plot(study_id, kind))
    click.echo(f"wrote {output}")


@study.command(name="cancel")
@click.argument("study_id", metavar="ID")
@json_option
@pass_state
def study_cancel(state: _State, study_id: str, as_json: bool) -> None:
    """Cancel every job of the study that has not ended."""
    body = state.client.cancel_study(study_id)
    _print_json(body) if as_json else _out().print(f"study {study_id}: {_render.counts_text(body['counts'])}")


@study.command(name="delete")
@click.argument("study_id", metavar="ID")
@pass_state
def study_delete(state: _State, study_id: str) -> None:
    """Remove an ended study and all its jobs."""
    state.client.delete_study(study_id)
    click.echo(f"deleted study {study_id}")
