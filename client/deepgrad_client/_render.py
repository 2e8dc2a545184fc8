"""Rich tables for the CLI: pure functions from the server's JSON to renderables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

STATE_STYLES = {"queued": "cyan", "running": "yellow", "succeeded": "green", "failed": "red",
                "cancelled": "magenta", "diverged": "red"}


def state_text(job: dict[str, Any]) -> str:
    state = job.get("state", "?")
    return f"[{STATE_STYLES.get(state, 'white')}]{state}[/]"


def pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if _finite(x) else "-"


def num(x: Any, fmt: str = ".4f") -> str:
    return format(x, fmt) if _finite(x) else "-"


def ratio(x: Any) -> str:
    return f"{x:.2e}" if _finite(x) else "-"


def si(x: Any) -> str:
    """1234567 -> 1.23M."""
    if not _finite(x):
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:g}"


def duration(seconds: Any) -> str:
    if not _finite(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def epoch_of(progress: dict[str, Any] | None) -> str:
    if not progress:
        return "-"
    return f"{progress.get('epoch', 0)}/{progress.get('epochs', '?')}"


def jobs_table(jobs: Sequence[dict[str, Any]]) -> Table:
    """Jobs as rows; the model column says what each spec sets beyond its architecture's defaults, so that
    variants of one model are told apart by more than their names."""
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", min_width=8, ratio=2)
    table.add_column("state", no_wrap=True)
    table.add_column("model", overflow="fold", min_width=8, ratio=3)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("test", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for job in jobs:
        final, progress = job.get("final") or {}, job.get("progress") or {}
        changes = changes_text(job, limit=3)
        model = _arch(job) + (f" [dim]{escape(changes)}[/]" if changes else "")
        table.add_row(job["id"], escape(job.get("name", "")), state_text(job), model, epoch_of(progress),
                      pct(final.get("test_acc", progress.get("test_acc"))), _short_when(job.get("created_at")))
    return table


def _short_when(stamp: Any) -> str:
    """``2026-11-28T15:20:00Z`` -> ``11-28 15:20``: the list's dates fit an 80-column terminal."""
    return str(stamp).replace("T", " ")[5:16] if stamp else "-"


def job_table(job: dict[str, Any]) -> Table:
    """One job as a two-column key/value table."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    spec = job.get("spec") or {}
    data = spec.get("data") or {}
    state = state_text(job) + (f" ({job['reason']})" if job.get("reason") else "")
    rows = [("id", job["id"]), ("name", escape(job.get("name", ""))), ("state", state),
            ("message", escape(job.get("message") or "")), ("model", _arch(job)),
            ("spec sets", escape(changes_text(job, limit=99, short=False)) or "the architecture's defaults"),
            ("data", f"{data.get('name', '?')}" + (f", {data['subset']} per class" if data.get("subset") else "")),
            ("created", _when(job.get("created_at"))), ("started", _when(job.get("started_at"))),
            ("finished", _when(job.get("finished_at"))), ("attempts", str(job.get("attempts", "")))]
    progress = job.get("progress")
    if progress:
        rows.append(("progress", f"epoch {epoch_of(progress)}, step {progress.get('step', 0)}/"
                                 f"{progress.get('total_steps', '?')}, loss {num(progress.get('loss'))}, "
                                 f"train {pct(progress.get('train_acc'))}, test {pct(progress.get('test_acc'))}"))
    final = job.get("final")
    if final:
        best = final.get("best_epoch")
        rows.append(("final", f"train {pct(final.get('train_acc'))} (loss {num(final.get('train_loss'))}), "
                              f"test {pct(final.get('test_acc'))} (loss {num(final.get('test_loss'))})"
                              + (f", best test {pct(final.get('best_test_acc'))} at epoch {best + 1}"
                                 if isinstance(best, int) else "")
                              + (f", {duration(final.get('seconds'))}" if _finite(final.get("seconds")) else "")))
    rows += gradient_rows(job.get("summary") or {})
    env = job.get("environment") or {}
    if env:
        parts = [str(env[k]) for k in ("device", "gpu") if env.get(k)]
        rows.append(("device", ", ".join(parts + ([f"torch {env['torch']}"] if env.get("torch") else []))))
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(key, str(value))
    return table


def gradient_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The vanishing verdict per norm kind, naming the layers compared, and which kind the verdict comes from."""
    rows = []
    source = summary.get("vanishing_source")
    for kind in ("weight", "activation"):
        s = summary.get(kind) or {}
        if s.get("first_last_ratio") is None and s.get("vanishing") is None:
            continue
        layers = f" ({s['first_layer']}/{s['last_layer']})" if s.get("first_layer") else ""
        verdict = "[red]VANISHING[/]" if s.get("vanishing") else "flowing"
        text = f"first/last layer{layers} {ratio(s.get('first_last_ratio'))}: {verdict} (threshold " \
               f"{s.get('fraction', 1e-3):g})"
        rows.append((f"{kind} grads", text + ("  <- the verdict" if kind == source else "")))
    return rows


def compare_table(body: dict[str, Any]) -> Table:
    """Jobs as columns, measures as rows: the readable way to compare a few runs."""
    jobs = body.get("jobs") or []
    table = Table(show_edge=False)
    table.add_column("", style="bold", no_wrap=True)
    for job in jobs:
        table.add_column(escape(job.get("name") or job["id"]), justify="right", overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("id", lambda j: j["id"]),
        ("arch", lambda j: j.get("arch") or "-"),
        ("state", state_text),
        ("train acc", lambda j: pct(_final(j, "train_acc"))),
        ("test acc", lambda j: pct(_final(j, "test_acc"))),
        ("train loss", lambda j: num(_final(j, "train_loss"))),
        ("test loss", lambda j: num(_final(j, "test_loss"))),
        ("best epoch", _best_epoch),
        ("time", lambda j: duration(j.get("seconds", _final(j, "seconds")))),
        ("parameters", lambda j: si(j.get("params"))),
        ("FLOPs/image (2 per MAC)", lambda j: si(j.get("flops_per_image"))),
        ("grad first/last", lambda j: ratio(_weight(j).get("first_last_ratio"))),
        ("vanishing", _vanishing),
    ]
    for label, cell in rows:
        table.add_row(label, *(cell(job) for job in jobs))
    for diff in body.get("differences") or []:  # the spec keys whose values differ, as GET /compare found them
        table.add_row(escape(diff["key"]), *(escape(setting(v)) for v in diff["values"]))
    return table


def setting(value: Any) -> str:
    """A spec value as ``--set`` would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def changes_text(job: dict[str, Any], limit: int = 4, *, short: bool = True) -> str:
    """What a job's spec sets beyond its architecture's defaults (``changes`` from the server); ``short``
    drops the ``model.`` of model fields (the list's narrow column)."""
    changes = job.get("changes") or {}
    items = [f"{k.removeprefix('model.') if short else k}={setting(v)}" for k, v in changes.items()]
    return ", ".join(items[:limit]) + (f" (+{len(items) - limit})" if len(items) > limit else "")


def cost_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> Table:
    """The study's computational-cost table, one row per spec: parameters, FLOPs, memory."""
    table = Table(show_edge=False, caption="FLOPs count a multiply-add as 2 (ResNet-18: 0.56 G multiply-adds = "
                                           "1.11 GFLOPs per 32x32 image)")
    for name, justify in (("spec", "left"), ("arch", "left"), ("params", "right"), ("GFLOPs/image", "right"),
                          ("GMACs/image", "right"), ("activations/image", "right"), ("job memory", "right"),
                          ("fits", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "spec", overflow="fold")
    for label, body in rows:
        cost, memory = body.get("cost") or {}, body.get("memory") or {}
        flops = cost.get("flops_per_image")
        fits = memory.get("fits")
        table.add_row(escape(label), str(((body.get("spec") or {}).get("model") or {}).get("arch", "-")),
                      si(cost.get("total_params")), num(flops / 1e9 if _finite(flops) else None, ".3f"),
                      num(flops / 2e9 if _finite(flops) else None, ".3f"), mib(cost.get("activation_bytes_per_image")),
                      gib(memory.get("host_bytes")), "-" if fits is None else "yes" if fits else "[red]no[/]")
    return table


def mib(x: Any) -> str:
    return f"{x / 2**20:.2f} MiB" if _finite(x) else "-"


def gib(x: Any) -> str:
    return f"{x / 2**30:.1f} GiB" if _finite(x) else "-"


def epochs_table(metrics: dict[str, Any]) -> Table:
    table = Table(show_edge=False)
    for name in ("epoch", "train loss", "train acc", "test loss", "test acc", "lr", "time", "img/s"):
        table.add_column(name, justify="right", no_wrap=True)
    for e in metrics.get("epochs") or []:
        table.add_row(str(e.get("epoch", 0) + 1), num(e.get("train_loss")), pct(e.get("train_acc")),
                      num(e.get("test_loss")), pct(e.get("test_acc")), num(e.get("lr"), ".2e"),
                      duration(e.get("seconds")), num(e.get("images_per_sec"), ".0f"))
    return table


def models_table(body: dict[str, Any]) -> Table:
    table = Table(title=f"archs: {', '.join(body.get('archs') or [])}", show_edge=False)
    table.add_column("option", no_wrap=True)
    table.add_column("allowed", overflow="fold")
    table.add_column("default", no_wrap=True)
    for name, option in (body.get("options") or {}).items():
        option = option if isinstance(option, dict) else {"default": option}
        allowed = option.get("allowed")
        table.add_row(name, ", ".join(map(str, allowed)) if isinstance(allowed, list) else str(allowed or "-"),
                      str(option.get("default")))
    return table


def _arch(job: dict[str, Any]) -> str:
    model = (job.get("spec") or {}).get("model") or {}
    return str(model.get("arch", "-"))


def _when(stamp: Any) -> str:
    """``2026-11-28T15:20:00.123Z`` -> ``2026-11-28 15:20:00``."""
    return str(stamp).replace("T", " ")[:19] if stamp else "-"


def _final(job: dict[str, Any], key: str) -> Any:
    return (job.get("final") or {}).get(key)


def _weight(job: dict[str, Any]) -> dict[str, Any]:
    return (job.get("summary") or {}).get("weight") or {}


def _best_epoch(job: dict[str, Any]) -> str:
    best = _final(job, "best_epoch")
    return str(best + 1) if isinstance(best, int) else "-"


def _vanishing(job: dict[str, Any]) -> str:
    flag = _weight(job).get("vanishing")
    return "-" if flag is None else "[red]yes[/]" if flag else "no"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- studies ------------------------------------------------------------------------------------------------

SUMMARY_COLUMNS = ("position", "job_id", "label", "state", "train_acc", "test_acc", "train_loss", "test_loss",
                   "seconds", "params", "flops_per_image", "first_last_ratio", "ratio_kind", "vanishing")


def counts_text(counts: dict[str, int]) -> str:
    order = ("succeeded", "running", "queued", "failed", "diverged", "cancelled")
    return ", ".join(f"[{STATE_STYLES.get(s, 'white')}]{counts[s]} {s}[/]" for s in order if counts.get(s))


def studies_table(studies: Sequence[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("name", overflow="fold", ratio=1)
    table.add_column("jobs", overflow="fold", ratio=2)
    table.add_column("created", no_wrap=True)
    for study in studies:
        table.add_row(study["id"], escape(study.get("name", "")), counts_text(study.get("counts") or {}),
                      _short_when(study.get("created_at")))
    return table


def study_table(study: dict[str, Any]) -> Table:
    """A study's jobs: what each varies, its state, epoch, test accuracy."""
    table = Table(title=f"study {study['id']} ({escape(study.get('name', ''))}): {study.get('state')}; "
                        f"{counts_text(study.get('counts') or {})}", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("job", no_wrap=True)
    table.add_column("varies", overflow="fold", ratio=3)
    table.add_column("state", no_wrap=True)
    table.add_column("epoch", justify="right", no_wrap=True)
    table.add_column("test", justify="right", no_wrap=True)
    for entry in study.get("jobs") or []:
        job = entry["job"]
        final, progress = job.get("final") or {}, job.get("progress") or {}
        table.add_row(str(entry["position"] + 1), job["id"], escape(entry.get("label", "")), state_text(job),
                      epoch_of(progress), pct(final.get("test_acc", progress.get("test_acc"))))
    return table


def summary_table(summary: dict[str, Any]) -> Table:
    """One row per job: accuracy, loss, time, cost and the gradient verdict."""
    table = Table(title=f"study {summary['study_id']} ({escape(summary.get('name', ''))})", show_edge=False,
                  pad_edge=False)
    for name, justify in (("#", "right"), ("varies", "left"), ("state", "left"), ("train", "right"),
                          ("test", "right"), ("test loss", "right"), ("time", "right"), ("params", "right"),
                          ("FLOPs/img", "right"), ("first/last", "right"), ("vanishing", "left")):
        table.add_column(name, justify=justify, overflow="fold" if name == "varies" else "ellipsis",
                         no_wrap=name != "varies")
    for row in summary.get("rows") or []:
        verdict = "-" if row.get("vanishing") is None else "[red]yes[/]" if row["vanishing"] else "no"
        table.add_row(str(row["position"] + 1), escape(row.get("label", "")), state_text(row),
                      pct(row.get("train_acc")), pct(row.get("test_acc")), num(row.get("test_loss"), ".3f"),
                      duration(row.get("seconds")), si(row.get("params")), si(row.get("flops_per_image")),
                      ratio(row.get("first_last_ratio")), verdict)
    return table


def summary_csv(summary: dict[str, Any]) -> str:
    """The summary as CSV: one column per varied key, then every result column."""
    import csv
    import io

    varied = list(summary.get("varied") or [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*varied, *SUMMARY_COLUMNS])
    for row in summary.get("rows") or []:
        writer.writerow([_cell(row["overrides"].get(key)) for key in varied]
                        + [_cell(row.get(c)) for c in SUMMARY_COLUMNS])
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def presets_table(presets: Sequence[dict[str, Any]]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("preset", no_wrap=True)
    table.add_column("jobs", justify="right", no_wrap=True)
    table.add_column("what it compares", overflow="fold")
    for preset in presets:
        table.add_row(preset["name"], str(preset["jobs"]), escape(preset["description"]))
    return table
