"""Figures of a whole study, one bar or point per job: test accuracy, the first/last gradient ratio, and accuracy
against parameters and FLOPs. (Depth profiles and training curves of a study's jobs are the compare figures.)"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from deepgrad_core.plots.canvas import log_axis, new_figure, plain_text, set_title
from deepgrad_core.plots.job import PlotDataError

STUDY_KINDS = ("accuracy", "ratio", "cost")


@dataclass(frozen=True)
class StudyEntry:
    """One job of a study as its figures need it (None: not known, e.g. the job has not ended)."""

    label: str
    state: str
    test_acc: float | None = None
    train_acc: float | None = None
    first_last_ratio: float | None = None
    vanishing: bool | None = None
    params: int | None = None
    flops_per_image: float | None = None


def render_study(kind: str, name: str, entries: list[StudyEntry], *, num_classes: int = 10,
                 fraction: float = 1e-3) -> Figure:
    """``accuracy``, ``ratio`` or ``cost`` of the study ``name``; ``PlotDataError`` when no job has the numbers."""
    if kind not in STUDY_KINDS:
        raise ValueError(f"kind must be one of {list(STUDY_KINDS)}, got {kind!r}")
    if not entries:
        raise PlotDataError(f"study {name!r} has no jobs")
    return {"accuracy": _accuracy, "ratio": _ratio, "cost": _cost}[kind](name, entries, num_classes, fraction)


def _bars_figure(entries: list[StudyEntry]) -> tuple[Figure, object, np.ndarray]:
    fig = new_figure((9.0, max(3.0, 1.4 + 0.42 * len(entries))))
    ax = fig.add_subplot()
    y = np.arange(len(entries))[::-1]
    ax.set_yticks(y, [plain_text(_wrap(e.label)) for e in entries], fontsize=9)
    for yi, e in zip(y, entries, strict=True):
        if e.state not in ("succeeded", "diverged"):
            ax.text(0.01, yi, e.state, transform=ax.get_yaxis_transform(), va="center", fontsize=8, color="grey")
    return fig, ax, y


def _wrap(label: str, width: int = 34) -> str:
    """A long label on two lines, broken after a comma."""
    if len(label) <= width or ", " not in label:
        return label
    cut = label.rfind(", ", 0, width)
    cut = cut if cut > 0 else label.find(", ")
    return label[:cut + 1] + "\n" + label[cut + 2:]


def _not_ended(entries: list[StudyEntry], present: list[bool]) -> list[str]:
    missing = [e.label for e, p in zip(entries, present, strict=True) if not p]
    return [f"no result yet for {len(missing)} of {len(entries)} jobs (not ended, or failed)"] if missing else []


def _accuracy(name: str, entries: list[StudyEntry], num_classes: int, fraction: float) -> Figure:
    present = [e.test_acc is not None for e in entries]
    if not any(present):
        raise PlotDataError(f"no job of study {name!r} has a test accuracy yet")
    fig, ax, y = _bars_figure(entries)
    test = np.array([e.test_acc if e.test_acc is not None else np.nan for e in entries]) * 100
    train = np.array([e.train_acc if e.train_acc is not None else np.nan for e in entries]) * 100
    ax.barh(y, np.nan_to_num(test), color="tab:blue", height=0.6, label="test accuracy (final)")
    ax.plot(train, y, "D", color="tab:orange", markersize=5, label="train accuracy (last epoch)")
    for yi, value, beside in zip(y, test, np.fmax(test, train), strict=True):
        if np.isfinite(value):
            ax.text(beside + 2, yi, f"{value:.1f}%", va="center", fontsize=8)
    ax.axvline(100 / num_classes, color="grey", linestyle=":", linewidth=1.2, label=f"chance ({100 / num_classes:g}%)")
    ax.set_xlim(0, 105)
    ax.set_xlabel("accuracy (%)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False, ncol=3)
    set_title(fig, f"Study {plain_text(name)}: accuracy per job", _not_ended(entries, present))
    return fig


def _ratio(name: str, entries: list[StudyEntry], num_classes: int, fraction: float) -> Figure:
    present = [e.first_last_ratio is not None and e.first_last_ratio > 0 for e in entries]
    if not any(present):
        raise PlotDataError(f"no job of study {name!r} has a first/last gradient ratio yet")
    fig, ax, y = _bars_figure(entries)
    ratios = np.array([e.first_last_ratio if p else np.nan for e, p in zip(entries, present, strict=True)])
    low = min(np.nanmin(ratios), fraction) / 10
    colors = ["tab:red" if e.vanishing else "tab:green" for e in entries]
    ax.barh(y, np.where(np.isfinite(ratios), ratios - low, 0), left=low, color=colors, height=0.6)
    for yi, value in zip(y, ratios, strict=True):
        if np.isfinite(value):
            ax.text(value * 1.3, yi, f"{value:.1e}", va="center", fontsize=8)
    ax.axvline(fraction, color="tab:red", linestyle=":", linewidth=1.2, label=f"vanishing below {fraction:g}")
    ax.set_xscale("log")
    ax.set_xlim(low, max(np.nanmax(ratios) * 30, 10))
    log_axis(ax, "x")
    ax.set_xlabel("first / last main-path layer: mean gradient norm, last epoch (red: vanishing)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=8, frameon=False)
    set_title(fig, f"Study {plain_text(name)}: did the gradients reach the first layer?",
              _not_ended(entries, present))
    return fig


def _cost(name: str, entries: list[StudyEntry], num_classes: int, fraction: float) -> Figure:
    present = [e.test_acc is not None and e.params is not None and e.flops_per_image is not None for e in entries]
    if not any(present):
        raise PlotDataError(f"no job of study {name!r} has both its accuracy and its cost yet")
    fig = new_figure((11.0, 5.0))
    done = [e for e, p in zip(entries, present, strict=True) if p]
    acc = np.array([e.test_acc for e in done]) * 100
    for i, (ax, attr, scale, unit) in enumerate(((fig.add_subplot(1, 2, 1), "params", 1e6, "parameters (millions)"),
                                                 (fig.add_subplot(1, 2, 2), "flops_per_image", 1e9,
                                                  "GFLOPs per image (FLOPs = 2 x multiply-adds)"))):
        x = np.array([getattr(e, attr) for e in done], dtype=float) / scale
        ax.scatter(x, acc, color=["tab:red" if e.vanishing else "tab:blue" for e in done], zorder=3)
        for xi, ai, e in zip(x, acc, done, strict=True):
            ax.annotate(plain_text(e.label), (xi, ai), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(100 / num_classes, color="grey", linestyle=":", linewidth=1.2)
        if x.max() > 20 * x.min():  # a log axis only where the costs span decades
            ax.set_xscale("log")
            log_axis(ax, "x")
        else:
            ax.set_xlim(0, x.max() * 1.35)  # room for the labels right of the points
        ax.set_xlabel(unit)
        if i == 0:
            ax.set_ylabel("test accuracy (%) (red: vanishing)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
    set_title(fig, f"Study {plain_text(name)}: accuracy against cost", _not_ended(entries, present))
    return fig
