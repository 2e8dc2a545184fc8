"""Figures without pyplot: each one owns its Agg canvas, so rendering touches no global state."""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, LogLocator, MaxNLocator

from deepgrad_core.plots.job import JobData

FIGSIZE = (9.0, 5.0)
DPI = 110
DEPTH_CMAP = "viridis"  # sequential: shallow layers dark, deep layers bright
EPOCH_CMAP = "plasma"


def new_figure(figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI,
               margins: tuple[float, float, float, float] | None = None) -> Figure:
    """An empty figure on its own Agg canvas.

    Laid out by matplotlib's constrained layout, unless ``margins`` (left, right, top, bottom, in
    inches) fix the subplot area: constrained layout measures every label in an extra drawing
    pass, which the heaviest figures (many long lines) cannot afford within their time budget.
    """
    fig = Figure(figsize=figsize, dpi=dpi, layout=None if margins else "constrained")
    FigureCanvasAgg(fig)
    if margins:
        left, right, top, bottom = margins
        width, height = figsize
        fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                            bottom=bottom / height)
    return fig


def pixel_columns(ax: Axes) -> int:
    """How many pixels wide ``ax`` is at the figure's dpi (before any layout engine shrinks it)."""
    fig = ax.get_figure()
    return max(1, int(ax.get_position().width * fig.get_figwidth() * fig.dpi))


def to_png(fig: Figure, dpi: int | None = None) -> bytes:
    """The figure as PNG bytes (at the figure's own dpi unless ``dpi`` is given)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    # zlib level 3: half the encoding time of the default 6 for files about 5% larger.
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else fig.dpi, pil_kwargs={"compress_level": 3})
    return buf.getvalue()


_SUPERSCRIPT = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def power_of_ten(exponent: int, coeff: float = 1.0) -> str:
    """``10⁻⁶`` or ``3×10⁻⁶`` in plain Unicode text."""
    decade = "10" + str(exponent).translate(_SUPERSCRIPT)
    return decade if coeff == 1 else f"{coeff:g}\u00d7{decade}"


class _PlainLogFormatter(LogFormatter):
    """Log tick labels as ``10⁻⁶``: plain text, so no mathtext parsing.

    Matplotlib's default log labels are mathtext, parsed by one parser object that the whole
    process shares; plain text keeps concurrent renders apart (and is faster).
    """

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        exponent = math.floor(math.log10(x) + 1e-9)
        coeff = float(f"{x / 10 ** exponent:.2g}")
        if coeff >= 10:  # 9.99 rounded up
            coeff, exponent = coeff / 10, exponent + 1
        return power_of_ten(exponent, coeff)


class _FewDecadesMinorLocator(LogLocator):
    """Minor log ticks (2..9 x 10^k) only when the axis spans a few decades.

    Over many decades they are a dense comb that helps no reader, and each tick is several
    artists: on an 8-decade norm plot they were a third of the rendering time.
    """

    def __init__(self, max_decades: float = 3.0) -> None:
        super().__init__(subs=np.arange(2, 10))
        self.max_decades = max_decades

    def tick_values(self, vmin: float, vmax: float) -> np.ndarray:
        lo, hi = sorted((vmin, vmax))
        if lo > 0 and math.log10(hi / lo) > self.max_decades:
            return np.array([])
        return super().tick_values(vmin, vmax)


def log_axis(ax: Axes, which: str = "y") -> None:
    """A log scale on ``which`` axis with plain-text tick labels and minor ticks over a few decades only."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_minor_locator(_FewDecadesMinorLocator())
    axis.set_major_formatter(_PlainLogFormatter(labelOnlyBase=True))
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.4)))


def log10_colorbar_ticks(cax: Axes) -> None:
    """Integer ticks labelled ``10ᵏ`` on a colorbar whose values are log10 of something."""
    cax.yaxis.set_major_locator(MaxNLocator(integer=True))
    cax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: power_of_ten(round(v)) if v == round(v) else ""))


_TITLE_CHARS_PER_INCH = 10  # what fits of a 12 pt line; a longer title or note line is set at 10 pt


def set_title(fig: Figure, title: str, notes: list[str] | tuple[str, ...] = (), *, above: float = 0.6) -> None:
    """The title, and notes (what was hidden, partial data) on a second line.

    With fixed margins the title's bottom sits ``above`` inches over the axes (room for an epoch
    axis), so that a one-line title does not float in the middle of the space kept for two.
    """
    second = "; ".join(n for n in notes if n)
    text = title + ("\n" + second if second else "")
    size = 12 if max(len(title), len(second)) <= _TITLE_CHARS_PER_INCH * fig.get_figwidth() else 10
    if fig.get_layout_engine() is None:
        fig.suptitle(text, fontsize=size, va="bottom", y=fig.subplotpars.top + above / fig.get_figheight())
    else:
        fig.suptitle(text, fontsize=size)


def plain_text(text: str) -> str:
    """User text (a job name) drawn as typed: ``$`` would start mathtext, a leading ``_`` hides a legend entry."""
    text = text.replace("$", r"\$")
    return "\u2009" + text if text.startswith("_") else text


def job_label(job: JobData) -> str:
    """``"vgg-deep (running)"``: the job's name as a legend entry or panel title."""
    return plain_text(job.name) + job.title_state


def job_title(job: JobData, what: str) -> str:
    """``"vgg-deep: weight gradient norm per layer (running)"``."""
    return f"{plain_text(job.name)}: {what}{job.title_state}"


def depth_colors(depths: list[int], cmap: str = DEPTH_CMAP) -> tuple[list[tuple], Normalize]:
    """One colour per depth from a sequential colormap, and the norm a depth colorbar needs."""
    lo, hi = (min(depths), max(depths)) if depths else (0, 1)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
    colormap = colormaps[cmap]
    return [colormap(norm(d)) for d in depths], norm


def step_axis(ax: Axes, steps_per_epoch: int, first_step: float, last_step: float, *, marks: bool = True) -> None:
    """Training steps along x, a second x axis in epochs on top, and (``marks``) epoch boundaries.

    Data shorter than an epoch (a job that has just started) are shown on their whole epoch, so
    the axes read in whole steps and epochs, not fractions of one.
    """
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if last_step - first_step < steps_per_epoch:
        start, pad = first_step // steps_per_epoch * steps_per_epoch, 0.02 * steps_per_epoch
        ax.set_xlim(start - pad, start + steps_per_epoch + pad)
    if marks:
        _mark_epochs(ax, steps_per_epoch, first_step, last_step)
    sec = ax.secondary_xaxis("top", functions=(lambda s: np.asarray(s) / steps_per_epoch,
                                               lambda e: np.asarray(e) * steps_per_epoch))
    sec.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    sec.set_xlabel("epoch", fontsize=9)
    sec.tick_params(labelsize=8)


def _mark_epochs(ax: Axes, steps_per_epoch: int, first_step: float, last_step: float, most: int = 20) -> None:
    """Faint vertical lines at epoch boundaries within the data.

    Every epoch's, or every 2nd, 5th, 10th, 20th ... when there would be more than ``most`` lines.
    """
    first, last = int(first_step // steps_per_epoch) + 1, int(last_step // steps_per_epoch)
    if last < first:
        return
    every = next(k * 10**e for e in range(10) for k in (1, 2, 5) if (last - first + 1) / (k * 10**e) <= most)
    bounds = np.arange(-(-first // every) * every, last + 1, every) * steps_per_epoch
    ax.vlines(bounds, 0, 1, transform=ax.get_xaxis_transform(), colors="0.6", linewidths=0.6,
              linestyles=":", zorder=0)


def empty_panel(ax: Axes, message: str) -> None:
    """An axes that says why it holds nothing."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.tick_params(which="both", left=False, bottom=False, labelleft=False, labelbottom=False)
