"""What a new user hit (issue 12), in the core: layer identity, figures that misled, the study's missing figures,
cost before training, figures from a run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from deepgrad_core.analysis import spec_cost, summarize_run
from deepgrad_core.models import build_model, tracked_layers
from deepgrad_core.norms import NormBlock
from deepgrad_core.plots import JobData, PlotDataError, render_compare, render_job, to_png
from deepgrad_core.plots.files import load_run, write_figures
from deepgrad_core.plots.series import binned_log10, default_selected
from deepgrad_core.spec import ExperimentSpec, spec_changes

REPO = Path(__file__).resolve().parents[2]


def _axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _title(fig: Figure) -> str:
    return fig._suptitle.get_text() if fig._suptitle is not None else ""


# -- 1. layer identity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, {"bottleneck": True}, {"kernel_size": 5}, {"residual": False},
                                     {"bottleneck": True, "width": 0.125}])
@pytest.mark.parametrize("arch", ["vgg_deep", "resnet18"])
def test_main_path_names_mean_the_same_layer_in_every_variant(arch: str, variant: dict) -> None:
    """conv<N> is the N-th main-path conv whatever the variant: shortcuts and 1x1 reducers have names of their own."""
    base = {la.name: la for la in tracked_layers(build_model({"arch": arch, "width": 0.25}), ("conv", "linear"))}
    layers = tracked_layers(build_model({"arch": arch, "width": 0.25, **variant}), ("conv", "linear"))
    main = [la for la in layers if la.role in ("stem", "main")]
    assert [la.name for la in main] == [f"conv{i}" for i in range(1, 18)] and main[0].role == "stem"
    for la in main:  # the same block (module path up to the conv) as in the plain variant
        assert la.path.split(".")[:2] == base[la.name].path.split(".")[:2]
        assert la.module.kernel_size[0] == variant.get("kernel_size", 3)
    for la in layers:
        if la.role == "reduce":
            assert la.name.startswith("reduce") and la.module.kernel_size == (1, 1)
            assert any(m.name == f"conv{la.name[6:]}" and m.depth > la.depth for m in main)  # it feeds conv<N>
        if la.role == "shortcut":
            assert la.name.startswith("shortcut") and la.module.kernel_size == (1, 1)
        if la.role == "classifier":
            assert la.name.startswith("fc") and la.kind == "linear"
    assert all(la.to_dict()["role"] == la.role for la in layers)


def test_selected_defaults_to_main_path_convs_never_a_shortcut() -> None:
    layers = tracked_layers(build_model({"arch": "resnet18", "width": 0.125}))
    names = tuple(la.name for la in layers)
    assert default_selected(names, {la.name: la.role for la in layers}) == ["conv2", "conv5", "conv8", "conv17"]
    assert "shortcut1" in names and names.index("shortcut1") == 7  # where the 8th tracked conv used to be


def test_vanishing_verdict_compares_main_path_ends() -> None:
    """A tiny bottleneck VGG's first tracked conv is a 1x1 reducer: the verdict must not be taken from it."""
    layers = ("reduce1", "conv1", "reduce2", "conv2", "fc1")
    roles = {"reduce1": "reduce", "conv1": "stem", "reduce2": "reduce", "conv2": "main", "fc1": "classifier"}
    values = np.tile([1e-9, 1e-3, 5.0, 1.0, 100.0], (8, 1)).astype(np.float32)
    summary = summarize_run({"weight": NormBlock("weight", np.arange(8), layers, values)}, steps_per_epoch=4,
                            fraction=1e-2, roles=roles)
    weight = summary["weight"]
    assert (weight["first_layer"], weight["last_layer"]) == ("conv1", "conv2")
    assert weight["first_last_ratio"] == pytest.approx(1e-3) and weight["vanishing"] is True


# -- 2. figures -----------------------------------------------------------------------------------------------


def _job(history: list[dict] | None = None, **kw: object) -> JobData:
    names = tuple(f"conv{i}" for i in range(1, 6))
    steps = np.arange(0, 400, 10)  # activation norms sampled every 10th step
    values = np.tile(np.logspace(-6, 0, 5), (len(steps), 1)).astype(np.float32)
    layers = [{"name": n, "path": f"f.{i}", "kind": "conv", "role": "stem" if i == 0 else "main", "depth": i}
              for i, n in enumerate(names)]
    return JobData(name="job", layers=layers, steps_per_epoch=100,
                   series={"activation": NormBlock("activation", steps, names, values),
                           "weight": NormBlock("weight", np.arange(400), names,
                                               np.repeat(values, 10, axis=0))},
                   history=history or [], num_classes=10, **kw)


def test_heatmap_of_sampled_steps_fills_every_cell() -> None:
    """Activation norms sampled every 10th step drew one column in ten (the figure was ~85% grey)."""
    steps = np.arange(0, 150, 10)
    grid, _ = binned_log10(steps, np.ones((len(steps), 3)), 2000)
    assert np.isfinite(grid).mean() == 1.0
    gap = np.r_[np.arange(0, 100, 10), np.arange(500, 600, 10)]  # a real hole (a gap of 400 steps) stays empty
    grid, _ = binned_log10(gap, np.ones((len(gap), 1)), 600)
    assert 0.2 < np.isnan(grid).mean() < 0.7
    fig = render_job("heatmap", _job(), norm_kind="activation")
    image = _axes(fig)[0].get_images()[0].get_array()
    assert np.ma.count_masked(image) == 0


def test_metrics_at_chance_are_not_zoomed_into_a_descent() -> None:
    stuck = [{"epoch": e, "train_loss": 2.3034 + 0.0014 * (e % 2), "test_loss": 2.3048 - 0.0014 * e / 9,
              "train_acc": 0.1, "test_acc": 0.1} for e in range(10)]
    fig = render_job("metrics", _job(stuck))
    loss, acc = _axes(fig)
    lo, hi = loss.get_ylim()
    assert hi - lo > 0.5 and lo <= np.log(10) <= hi  # flat at chance, the chance line in view
    assert any(abs(line.get_ydata()[0] - np.log(10)) < 1e-9 for line in loss.get_lines() if len(line.get_ydata()) == 2)
    assert acc.get_ylim()[0] <= 0 and acc.get_ylim()[1] >= 100
    assert any(abs(line.get_ydata()[0] - 10) < 1e-9 for line in acc.get_lines() if len(line.get_ydata()) == 2)
    assert "chance (10 classes)" in [t.get_text() for t in acc.get_legend().get_texts()]


def test_compare_metrics_show_train_and_test_on_a_readable_loss_axis() -> None:
    spiky = [{"epoch": e, "train_loss": 1.0 / (e + 1), "test_loss": 65.6 if e == 0 else 1.2 / (e + 1),
              "train_acc": 0.5, "test_acc": 0.4} for e in range(6)]
    calm = [{"epoch": e, "train_loss": 2.0 - 0.1 * e, "test_loss": 2.1 - 0.1 * e, "train_acc": 0.3,
             "test_acc": 0.3} for e in range(6)]
    fig = render_compare("metrics", [_job(spiky), _job(calm)])
    loss, acc = _axes(fig)
    assert loss.get_yscale() == "log" and "log axis" in _title(fig)
    styles = {line.get_linestyle() for line in loss.get_lines() if len(line.get_xdata()) == 6}
    assert styles == {"-", "--"} and len([ln for ln in acc.get_lines() if len(ln.get_xdata()) == 6]) == 4


def test_ratio_figure_per_epoch_with_threshold() -> None:
    history = [{"epoch": e, "train_loss": 1.0, "test_loss": 1.0, "train_acc": 0.5, "test_acc": 0.5} for e in range(4)]
    fig = render_job("ratio", _job(history))
    (ax,) = _axes(fig)
    weight = ax.get_lines()[0]
    np.testing.assert_allclose(weight.get_ydata(), 1e-6, rtol=1e-4)
    assert list(weight.get_xdata()) == [1, 2, 3, 4] and ax.get_yscale() == "log"
    assert "conv1" in ax.get_ylabel() and "conv5" in ax.get_ylabel()
    other = _job(history)
    fig = render_compare("ratio", [_job(history), other])
    assert len([ln for ln in _axes(fig)[0].get_lines() if len(ln.get_xdata()) == 4]) == 2


def test_cost_comparison_side_by_side() -> None:
    cost = [{"total_params": 11_173_962, "flops_per_image": 1_110_000_000, "activation_bytes_per_image": 7_000_000},
            {"total_params": 15_000_000, "flops_per_image": 400_000_000, "activation_bytes_per_image": 3_000_000}]
    jobs = [JobData(name=n, layers=[], steps_per_epoch=1, cost=c) for n, c in zip(("resnet18", "vgg16"), cost,
                                                                                  strict=True)]
    fig = render_compare("cost", jobs + [JobData(name="queued", layers=[], steps_per_epoch=1)])
    axes = _axes(fig)
    assert len(axes) == 3 and all(len(ax.patches) == 2 for ax in axes)
    assert "2 FLOPs" in axes[1].get_xlabel() and "no cost report yet: queued" in _title(fig)
    with pytest.raises(PlotDataError):
        render_compare("cost", [JobData(name="q", layers=[], steps_per_epoch=1)])


def test_filters_beside_their_initial_values() -> None:
    rng = np.random.default_rng(0)
    init = rng.random((16, 3, 3, 3), dtype=np.float32)
    job = _job(filters=init + 0.01, filters_init=init)
    fig = render_job("filters", job)
    assert len(_axes(fig)) == 2 and "initial and learned" in _title(fig) and "differ" in _title(fig)
    assert [ax.get_title() for ax in _axes(fig)][0] == "at initialization"
    assert len(_axes(render_job("filters", _job(filters=init)))) == 1  # no initial ones: as before


def test_depth_figure_main_path_only() -> None:
    job = _job()
    job.layers[2]["role"] = "shortcut"
    fig = render_job("depth", job, norm_kind="weight", main_path=True)
    labels = [t.get_text() for t in _axes(fig)[0].get_xticklabels()]
    assert "conv3" not in labels and "conv4" in labels


# -- 3. cost before training ----------------------------------------------------------------------------------


def test_spec_cost_of_the_full_size_model() -> None:
    cost = spec_cost(ExperimentSpec.model_validate({"model": {"arch": "resnet18"}}))
    assert cost.total_params == 11_173_962
    assert 1.1e9 < cost.flops_per_image < 1.12e9  # 0.56 G multiply-adds at 32x32
    assert cost.layers[0].name == "conv1" and cost.device == "meta"


@pytest.mark.parametrize("model", [{"arch": "resnet18", "width": 0.5, "bottleneck": True},
                                   {"arch": "vgg_deep", "kernel_size": 7, "width": 0.25},
                                   {"arch": "vgg16", "pooling": "avg", "width": 0.25, "activation": "gelu"}])
def test_spec_cost_on_meta_equals_the_real_models(model: dict) -> None:
    from deepgrad_core.analysis import cost_report

    spec = ExperimentSpec.model_validate({"model": model, "data": {"name": "synthetic", "image_size": 40}})
    meta, real = spec_cost(spec), cost_report(build_model(spec.model), spec.input_shape, measure_peak=False)
    assert (meta.total_params, meta.flops_per_image, meta.activation_bytes_per_image) == \
        (real.total_params, real.flops_per_image, real.activation_bytes_per_image)
    assert [la.to_dict() for la in meta.layers] == [la.to_dict() for la in real.layers]


def test_spec_changes_name_what_a_variant_sets() -> None:
    spec = ExperimentSpec.model_validate({"model": {"arch": "vgg_deep", "kernel_size": 5, "batch_norm": True},
                                          "train": {"epochs": 3}})
    assert spec_changes(spec) == {"model.kernel_size": 5, "model.batch_norm": True, "train.epochs": 3}
    assert spec_changes(ExperimentSpec.model_validate({"model": {"arch": "vgg_deep", "batch_norm": False}})) == {}


def test_warmup_override_names_the_fix() -> None:
    import yaml

    data = yaml.safe_load((REPO / "specs" / "resnet18.yaml").read_text())
    data["train"]["epochs"] = 1
    with pytest.raises(ValueError, match=r"train.warmup_epochs=0.5, or 0 for none"):
        ExperimentSpec.model_validate(data)


# -- 4. figures without a server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deepgrad-train --plots of a tiny bottleneck VGG-Deep: the run folder and its figures."""
    out = tmp_path_factory.mktemp("runs") / "bottleneck"
    spec = tmp_path_factory.mktemp("spec") / "tiny.json"
    spec.write_text(json.dumps({"model": {"arch": "vgg_deep", "width": 0.125, "bottleneck": True},
                                "data": {"name": "synthetic", "subset": 8, "test_subset": 2},
                                "train": {"epochs": 2, "batch_size": 16}, "tracking": {"activation_every": 2}}))
    r = subprocess.run([sys.executable, "-m", "deepgrad_core.cli", str(spec), "--out", str(out), "--plots"],
                       capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr
    return out


def test_train_plots_writes_every_figure(run_dir: Path) -> None:
    names = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert names == sorted(["norms.png", "selected.png", "heatmap.png", "depth.png", "ratio.png", "metrics.png",
                            "filters.png", "cost.png", "histogram.png", "norms-activation.png",
                            "heatmap-activation.png", "depth-activation.png"])
    assert (run_dir / "filters_init.npy").is_file() and (run_dir / "filters.npy").is_file()


def test_load_run_gives_the_figures_data(run_dir: Path) -> None:
    job = load_run(run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    assert job.steps_per_epoch == result["steps_per_epoch"] and len(job.history) == 2
    assert job.series["weight"].layers[:4] == ("reduce1", "conv1", "reduce2", "conv2")  # width 0.125: 3 -> 2 first
    assert {la["role"] for la in job.layers} == {"stem", "main", "reduce"}
    assert job.filters_init.shape == job.filters.shape and job.num_classes == 10
    assert to_png(render_job("depth", job, main_path=True)).startswith(b"\x89PNG")


def test_deepgrad_plot_command(run_dir: Path, tmp_path: Path) -> None:
    def plot(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deepgrad_core.plot_cli", *args], capture_output=True,
                              text=True, timeout=120)

    r = plot(str(run_dir), "heatmap", "--norm-kind", "activation", "-o", str(tmp_path / "h.png"))
    assert r.returncode == 0 and (tmp_path / "h.png").read_bytes().startswith(b"\x89PNG"), r.stderr
    r = plot(str(run_dir), "all", "-o", str(tmp_path / "all"))
    assert r.returncode == 0 and len(list((tmp_path / "all").glob("*.png"))) == 12  # histogram.png too
    r = plot(str(tmp_path), "norms")  # not a run folder
    assert r.returncode == 2 and "no result.json" in r.stderr and "Traceback" not in r.stderr
    r = plot(str(run_dir), "depth", "--epochs", "9")
    assert r.returncode == 1 and "epoch(s) [9]" in r.stderr


def test_write_figures_skips_what_a_run_lacks(run_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("result.json", "history.json", "norms_weight.csv"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    written = {p.name for p in write_figures(copy, copy / "plots")}
    assert "filters.png" not in written and "norms.png" in written and "norms-activation.png" not in written
