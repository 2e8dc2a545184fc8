"""Plots: golden structure (axes, lines, scales, labels, colorbars), not pixels; edge cases; threads; a real run."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from deepgrad_core.histograms import BINS, EDGES, HistBlock
from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import COMPARE_KINDS, JOB_KINDS, JobData, PlotDataError, render_compare, render_job, to_png
from deepgrad_core.plots.series import binned_log10, moving_average
from deepgrad_core.series import downsample

LAYERS = 12  # 11 convs and a linear head
STEPS_PER_EPOCH = 40
EPOCHS = 5
ACTIVATION_EVERY = 5


def fake_job(name: str = "vgg-fake", *, layers: int = LAYERS, epochs: int = EPOCHS, steps_per_epoch: int =
             STEPS_PER_EPOCH, state: str = "succeeded", seed: int = 0) -> JobData:
    """A vanishing-gradient run: norms fall by 10x per layer toward the input and shrink over training."""
    rng = np.random.default_rng(seed)
    names = tuple(f"conv{i + 1}" for i in range(layers - 1)) + ("fc1",)
    steps = np.arange(epochs * steps_per_epoch, dtype=np.int64)
    per_layer = 10.0 ** (np.arange(layers) - (layers - 1))  # conv1: 1e-11 of the head's norm
    decay = np.exp(-steps / len(steps))[:, None]
    values = (per_layer * (0.5 + decay) * rng.lognormal(0.0, 0.2, (len(steps), layers))).astype(np.float32)
    act = steps[::ACTIVATION_EVERY]
    history = [{"epoch": e, "train_loss": 2.3 / (e + 1), "test_loss": 2.4 / (e + 1) + 0.1,
                "train_acc": 0.1 + 0.15 * e, "test_acc": 0.1 + 0.1 * e, "lr": 0.05, "seconds": 1.0,
                "images_per_sec": 100.0} for e in range(epochs)]
    cost = {"total_params": 2_000_000, "flops_per_image": 300_000_000,
            "layers": [{"name": n, "path": f"features.{i}", "kind": "conv", "params": 1000 * (i + 1),
                        "flops": 10**6 * (i + 1), "output_shape": [8, 4, 4]} for i, n in enumerate(names)]}
    return JobData(
        name=name, steps_per_epoch=steps_per_epoch, state=state, history=history, cost=cost,
        layers=[{"name": n, "path": f"features.{i}", "kind": "linear" if n.startswith("fc") else "conv", "depth": i}
                for i, n in enumerate(names)],
        series={"weight": NormBlock("weight", steps, names, values),
                "activation": NormBlock("activation", act, names, values[::ACTIVATION_EVERY] * 2),
                "global": NormBlock("global", steps, ("global",), np.linalg.norm(values, axis=1, keepdims=True))},
        filters=rng.random((16, 3, 3, 3), dtype=np.float32), histograms=_fake_histograms(names, steps[::50], rng))


def _fake_histograms(names: tuple[str, ...], steps: np.ndarray, rng: np.random.Generator) -> HistBlock:
    """Bumps of log10 |g| that sit lower the nearer a layer is to the input, as when gradients vanish."""
    centers = np.linspace(-10, -2, len(names))[None, :, None] - steps[:, None, None] / (10 * len(steps) + 1)
    x = (EDGES[:-1] + EDGES[1:])[None, None, :] / 2
    counts = 1000 * np.exp(-0.5 * ((x - centers) / 0.6) ** 2) + rng.random((len(steps), len(names), BINS))
    return HistBlock(steps.astype(np.int64), names, counts.astype(np.float32))


@pytest.fixture(scope="module")
def job() -> JobData:
    return fake_job()


def _main_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _colorbars(fig: Figure):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def _title(fig: Figure) -> str:
    return fig.get_suptitle()


def _png_size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return image.size


# ---- per-job figures: structure ---------------------------------------------------------------------------

def test_render_job_norms_one_log_line_per_layer_with_depth_colorbar(job):
    fig = render_job("norms", job)
    (ax,) = _main_axes(fig)
    assert len(ax.get_lines()) == LAYERS and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "weight gradient L2 norm"
    assert ax.get_legend() is None
    (bar,) = _colorbars(fig)
    assert "depth" in bar.get_ylabel()
    assert [t.get_text() for t in bar.get_yticklabels()][0] == "conv1 (0)"
    assert ax.child_axes[0].get_xlabel() == "epoch"  # the epoch axis on top
    assert len(ax.collections[0].get_segments()) == EPOCHS - 1  # epoch boundaries inside the data
    assert "vgg-fake" in _title(fig) and "weight" in _title(fig)


def test_render_job_norms_layers_subset_and_activation_kind(job):
    fig = render_job("norms", job, norm_kind="activation", layers=["conv1", "fc1"])
    (ax,) = _main_axes(fig)
    assert [line.get_label() for line in ax.get_lines()] == ["conv1 (depth 0)", "fc1 (depth 11)"]
    assert len(ax.get_lines()[0].get_xdata()) == EPOCHS * STEPS_PER_EPOCH // ACTIVATION_EVERY
    assert "activation" in ax.get_ylabel()


def test_render_job_norms_global_is_one_line_without_colorbar(job):
    fig = render_job("norms", job, norm_kind="global")
    (ax,) = _main_axes(fig)
    assert len(ax.get_lines()) == 1 and not _colorbars(fig) and "whole-model" in _title(fig)


def test_render_job_selected_defaults_to_2nd_5th_8th_and_deepest_conv(job):
    fig = render_job("selected", job)
    (ax,) = _main_axes(fig)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["conv2 (depth 1)", "conv5 (depth 4)", "conv8 (depth 7)", "conv11 (depth 10)"]
    assert ax.get_yscale() == "log"


def test_render_job_selected_by_name(job):
    fig = render_job("selected", job, layers=["conv3", "conv3", "fc1"])
    assert len(_main_axes(fig)[0].get_lines()) == 2


def test_render_job_heatmap_is_layer_by_step_image_of_log10(job):
    fig = render_job("heatmap", job, max_points=50)
    (ax,) = _main_axes(fig)
    (image,) = ax.get_images()
    grid = image.get_array()
    assert grid.shape == (LAYERS, 50)
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["conv1", "conv2"]
    # log10 of the fake norms: the first layer ~ -11, the head ~ 0
    assert -12 < grid[0].mean() < -10 and -1 < grid[-1].mean() < 1
    (bar,) = _colorbars(fig)
    assert "log scale" in bar.get_ylabel()
    assert all(t.get_text().startswith("10") for t in bar.get_yticklabels() if t.get_text())


def test_render_job_depth_first_middle_last_epoch(job):
    fig = render_job("depth", job)
    (ax,) = _main_axes(fig)
    assert [line.get_label() for line in ax.get_lines()] == ["epoch 1", "epoch 3", "epoch 5"]
    assert ax.get_yscale() == "log"
    x, y = ax.get_lines()[0].get_data()
    assert list(x) == list(range(LAYERS)) and np.all(np.diff(np.log10(y)) > 0.5)  # vanishing toward the input
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "fc1"


def test_render_job_depth_chosen_epochs_are_numbered_from_1(job):
    fig = render_job("depth", job, epochs=[2, 4], norm_kind="activation")
    assert [line.get_label() for line in _main_axes(fig)[0].get_lines()] == ["epoch 2", "epoch 4"]
    with pytest.raises(PlotDataError, match="epoch"):
        render_job("depth", job, epochs=[EPOCHS + 1])


def test_render_job_metrics_two_panels_train_and_test(job):
    fig = render_job("metrics", job)
    loss, acc = _main_axes(fig)
    for ax in (loss, acc):
        assert [line.get_label() for line in ax.get_lines()][:2] == ["train", "test"]
        assert ax.get_xlabel() == "epoch"
        assert list(ax.get_lines()[0].get_xdata()) == list(range(1, EPOCHS + 1))
    assert loss.get_ylabel() == "cross-entropy loss" and acc.get_ylabel() == "accuracy (%)"
    assert acc.get_lines()[1].get_ydata()[-1] == pytest.approx(100 * (0.1 + 0.1 * (EPOCHS - 1)))


@pytest.mark.parametrize("channels", [1, 3])
def test_render_job_filters_grid_gray_or_rgb(job, channels):
    filters = np.random.default_rng(1).normal(size=(16, 5, 5, channels)).astype(np.float32)
    fig = render_job("filters", JobData(**{**vars(job), "filters": filters}))
    (image,) = _main_axes(fig)[0].get_images()
    grid = np.asarray(image.get_array())
    assert grid.shape == ((5 + 1) * 4 + 1, (5 + 1) * 4 + 1, 3)[: 2 if channels == 1 else 3]
    assert grid.min() >= 0 and grid.max() <= 1  # each filter scaled to [0, 1]
    assert (image.get_cmap().name == "gray") if channels == 1 else True
    assert "16 filters of 5x5" in _title(fig)


def test_render_job_cost_params_and_flops_bars_per_layer(job):
    fig = render_job("cost", job)
    params, flops = _main_axes(fig)
    assert len(params.patches) == len(flops.patches) == LAYERS
    assert params.get_xscale() == flops.get_xscale() == "log"
    assert params.get_xlabel() == "parameters" and flops.get_xlabel() == "FLOPs per image (1 multiply-add = 2 FLOPs)"
    assert "2 M parameters" in _title(fig) and "300 M FLOPs" in _title(fig) and "150 M multiply-adds" in _title(fig)
    assert "conv and linear layer" in _title(fig) and "tracked" not in _title(fig)


# ---- comparisons ----------------------------------------------------------------------------------------

def test_render_compare_metrics_train_and_test_per_job():
    jobs = [fake_job("a"), fake_job("b", epochs=3), fake_job("c", epochs=0)]
    fig = render_compare("metrics", jobs)
    loss, acc = _main_axes(fig)
    assert [t.get_text() for t in loss.get_legend().get_texts()] == ["a", "b"]
    assert len(acc.get_lines()) == 4 and acc.get_ylabel() == "accuracy (%)"  # train and test of a and b
    assert "not shown, no finished epoch: c" in _title(fig)


def test_render_compare_depth_on_relative_depth():
    jobs = [fake_job("deep", layers=20), fake_job("shallow", layers=8, state="running")]
    fig = render_compare("depth", jobs)
    (ax,) = _main_axes(fig)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 2
    for line, layers in zip(ax.get_lines(), (20, 8), strict=True):
        x = line.get_xdata()
        assert len(x) == layers and x[0] == 0 and x[-1] == 1
    assert "shallow (running), epoch 5" in ax.get_lines()[1].get_label()


def test_render_compare_filters_side_by_side_with_missing_panel():
    jobs = [fake_job("a"), JobData(**{**vars(fake_job("b")), "filters": None})]
    fig = render_compare("filters", jobs)
    a, b = fig.axes
    assert len(a.get_images()) == 1 and not b.get_images()
    assert a.get_title() == "a" and "no filters yet" in b.texts[0].get_text()


# ---- errors and edge cases ------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "change", "match"), [
    ("norms", {"series": {}}, "no norms recorded yet"),
    ("heatmap", {"series": {"activation": None}}, "no weight gradient norms"),
    ("depth", {"series": {"weight": NormBlock("weight", np.zeros(0, np.int64), ("conv1",),
                                              np.zeros((0, 1), np.float32))}}, "no weight gradient norms"),
    ("metrics", {"history": []}, "no finished epoch"),
    ("filters", {"filters": None}, "no first-layer filters"),
    ("cost", {"cost": None}, "no cost report"),
])
def test_render_job_missing_data_raises_plot_data_error(job, kind, change, match):
    with pytest.raises(PlotDataError, match=match):
        render_job(kind, JobData(**{**vars(job), **change}))


def test_render_job_activation_never_recorded_says_what_was(job):
    with pytest.raises(PlotDataError, match=r"recorded: \['global', 'weight'\]"):
        render_job("norms", JobData(**{**vars(job), "series": {k: v for k, v in job.series.items()
                                                              if k != "activation"}}), norm_kind="activation")


@pytest.mark.parametrize(("call", "match"), [
    (lambda j: render_job("bogus", j), "plot kind must be one of"),
    (lambda j: render_compare("heatmap", [j]),
     r"one of \['metrics', 'depth', 'ratio', 'filters', 'cost', 'histogram'\]"),
    (lambda j: render_job("norms", j, norm_kind="bias"), "norm kind"),
    (lambda j: render_job("heatmap", j, norm_kind="global"), r"\['weight', 'activation'\]"),
    (lambda j: render_job("norms", j, layers=["conv99"]), "conv1"),
    (lambda j: render_job("norms", j, smooth=-1), "smooth"),
    (lambda j: render_job("norms", j, max_points=3), "max_points"),
    (lambda j: render_job("depth", j, epochs=[0]), "counted from 1"),
    (lambda j: render_compare("depth", [j], epochs=[1, 2]), "one epoch"),
    (lambda j: render_compare("metrics", []), "1..12 jobs"),
])
def test_render_bad_kind_or_parameter_raises_value_error_naming_allowed(job, call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(job)
    assert not isinstance(err.value, PlotDataError)


def test_render_job_single_point_is_visible(job):
    one = {k: NormBlock(b.kind, b.steps[:1], b.layers, b.values[:1]) for k, b in job.series.items()}
    single = JobData(**{**vars(job), "series": one, "history": job.history[:1], "state": "running"})
    for kind in ("norms", "selected", "heatmap", "depth", "metrics"):
        fig = render_job(kind, single)
        assert "(running)" in _title(fig)
        for line in _main_axes(fig)[0].get_lines():
            assert line.get_marker() == "o"
            assert len(line.get_xdata()) == (LAYERS if kind == "depth" else 1)
        to_png(fig)


def test_render_job_nonfinite_values_are_hidden_and_counted(job):
    block = job.series["weight"]
    values = block.values.copy()
    values[3, 2], values[10, :], values[20, 5] = np.nan, np.inf, 0.0
    bad = JobData(**{**vars(job), "series": {"weight": NormBlock("weight", block.steps, block.layers, values)}})
    for kind in ("norms", "heatmap"):
        fig = render_job(kind, bad)
        assert f"{1 + LAYERS} NaN/inf and 1 zero values hidden" in _title(fig)
        to_png(fig)
    line = _main_axes(render_job("norms", bad))[0].get_lines()[2]
    assert np.isnan(line.get_ydata()[3]) and np.isnan(line.get_ydata()[10])
    assert "2 steps with NaN/inf left out of the means" in _title(render_job("depth", bad))


def test_render_job_all_nonfinite_still_draws(job):
    block = job.series["weight"]
    nan = NormBlock("weight", block.steps, block.layers, np.full_like(block.values, np.nan))
    bad = JobData(**{**vars(job), "series": {"weight": nan},
                     "history": [{**m, "test_loss": float("nan")} for m in job.history]})
    for kind in ("norms", "selected", "heatmap", "depth", "metrics"):
        assert _png_size(to_png(render_job(kind, bad))) == (990, 550)


def test_render_job_running_mid_epoch_partial_data(job):
    cut = STEPS_PER_EPOCH * 2 + 7  # two epochs and a bit
    partial = {k: NormBlock(b.kind, b.steps[b.steps < cut], b.layers, b.values[b.steps < cut])
               for k, b in job.series.items()}
    running = JobData(**{**vars(job), "series": partial, "history": job.history[:2], "state": "running"})
    fig = render_job("depth", running)
    assert [line.get_label() for line in _main_axes(fig)[0].get_lines()] == ["epoch 1", "epoch 2", "epoch 3 (so far)"]
    assert "2 epochs so far" in _title(render_job("metrics", running))
    for kind in JOB_KINDS:
        to_png(render_job(kind, running))


def test_render_job_name_is_drawn_literally():
    fig = render_job("metrics", fake_job("cost $5 and $10"))
    to_png(fig)  # a "$...$" pair would be parsed as mathtext
    assert r"\$5" in _title(fig)


def test_render_job_downsamples_long_series_keeping_spikes():
    job = fake_job(epochs=50, steps_per_epoch=200)  # 10,000 steps
    block = job.series["weight"]
    values = block.values.copy()
    values[4321, 0] = 1e3  # one-step spike in the smallest layer
    spiky = JobData(**{**vars(job), "series": {"weight": NormBlock("weight", block.steps, block.layers, values)}})
    fig = render_job("norms", spiky, max_points=500, smooth=0)
    line = _main_axes(fig)[0].get_lines()[0]
    assert len(line.get_xdata()) <= 500 and line.get_ydata().max() == pytest.approx(1e3)
    assert len(_main_axes(fig)[0].collections[0].get_segments()) == 9  # 49 boundaries: every 5th epoch marked
    assert "10000 records as min/max of 250 buckets" in _title(fig)


def test_render_job_smooth_is_a_moving_average(job):
    raw = _main_axes(render_job("norms", job))[0].get_lines()[-1].get_ydata()
    smooth = _main_axes(render_job("norms", job, smooth=25))[0].get_lines()[-1].get_ydata()
    assert len(smooth) == len(raw)
    assert np.std(np.diff(np.log(smooth))) < 0.2 * np.std(np.diff(np.log(raw)))  # step-to-step noise averaged out


# ---- series helpers ---------------------------------------------------------------------------------------

def test_downsample_minmax_keeps_extremes_and_bounds_points():
    x = np.arange(10_001)
    y = np.ones((len(x), 2))
    y[777, 0], y[5000, 1], y[9000, 1] = 50.0, -3.0, np.nan
    xs, ys = downsample(x, y, 1000, nonfinite="hide")  # a figure's rule: NaN is a gap, not a value
    assert len(xs) <= 1000 and ys.shape == (len(xs), 2)
    assert ys[:, 0].max() == 50 and np.nanmin(ys[:, 1]) == -3 and not np.isnan(ys).any()
    assert np.all(np.diff(xs) >= 0) and xs[0] == 0 and xs[-1] == 10_000


def test_moving_average_skips_nan_and_keeps_length():
    y = np.array([[1.0], [np.nan], [3.0], [5.0]])
    np.testing.assert_allclose(moving_average(y, 3)[:, 0], [1.0, 2.0, 4.0, 4.0])
    assert np.isnan(moving_average(np.full((3, 1), np.nan), 2)).all()


def test_binned_log10_uses_step_width_bins():
    steps = np.array([0, 1, 2, 3, 100, 101])  # a gap, as after a resume
    grid, (lo, hi) = binned_log10(steps, np.full((6, 1), 10.0), 4)
    assert (lo, hi) == (0.0, 102.0) and grid.shape == (1, 4)
    assert grid[0, 0] == 1.0 and np.isnan(grid[0, 1:3]).all() and grid[0, 3] == 1.0


# ---- output and concurrency -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", JOB_KINDS)
def test_to_png_decodes_at_figure_size(job, kind):
    fig = render_job(kind, job)
    width, height = fig.get_size_inches() * fig.dpi
    assert _png_size(to_png(fig)) == (round(width), round(height))
    assert _png_size(to_png(fig, dpi=55)) == (round(width / 2), round(height / 2))


def test_render_from_4_threads_matches_serial(job):
    """Each figure owns its canvas: concurrent renders give the same bytes as serial ones.

    Thread ``i`` renders every other call of the list rotated by ``i``: at each moment the 4 threads draw 4
    different figures, and every figure is drawn at least twice under concurrency, beside different
    neighbours, each time compared with its serial bytes."""
    calls = [("job", k) for k in JOB_KINDS] + [("compare", k) for k in COMPARE_KINDS]
    jobs = [job, fake_job("other", layers=7, seed=3)]

    def render(call):
        how, kind = call
        return to_png(render_job(kind, job) if how == "job" else render_compare(kind, jobs))

    expected = {call: render(call) for call in calls}
    results: dict[int, dict] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def worker(i: int) -> None:
        try:
            start.wait()
            results[i] = {call: render(call) for call in (calls[i:] + calls[:i])[::2]}
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {call for i in range(4) for call in results[i]} == set(calls)
    for i in range(4):
        assert results[i] == {call: expected[call] for call in results[i]}


# ---- a real run ---------------------------------------------------------------------------------------

def test_job_data_from_real_training_run_renders_every_kind(tmp_path):
    from deepgrad_core import build_model, train
    from deepgrad_core.analysis.cost import cost_report
    from deepgrad_core.analysis.filters import first_layer_filters
    from deepgrad_core.training import seed_everything

    spec = {"model": {"arch": "vgg_deep", "width": 0.125},
            "data": {"name": "synthetic", "subset": 8, "test_subset": 4},
            "train": {"epochs": 2, "batch_size": 16},
            "tracking": {"activation_every": 1, "flush_every": 5}}
    seed_everything(0)
    model = build_model(spec["model"])
    result = train(model, spec, device="cpu")
    job = JobData.from_result(result, "vgg-deep tiny", cost=cost_report(model, measure_peak=False),
                              filters=first_layer_filters(model))
    assert job.state == "succeeded" and set(job.series) >= {"weight", "activation"}
    assert isinstance(job.cost, dict) and job.filters.shape[-1] == 3
    for kind in JOB_KINDS:
        for norm_kind in ("weight", "activation"):
            fig = render_job(kind, job, norm_kind=norm_kind)
            assert "vgg-deep tiny" in _title(fig)
            assert _png_size(to_png(fig))[0] > 0
    convs = [la["name"] for la in result.layers if la["kind"] == "conv"]
    legend = _main_axes(render_job("selected", job))[0].get_legend().get_texts()
    assert [t.get_text().split()[0] for t in legend] == [convs[1], convs[4], convs[7], convs[-1]]
    for kind in COMPARE_KINDS:
        to_png(render_compare(kind, [job, fake_job()]))
