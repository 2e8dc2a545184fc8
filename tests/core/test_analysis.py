"""deepgrad_core.analysis: cost report, vanishing summaries, first-layer filters (small inline models)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from deepgrad_core.analysis import (
    CostReport,
    cost,
    cost_report,
    filter_grid,
    first_layer_filters,
    summarize_run,
    vanishing_summary,
)
from deepgrad_core.norms import NormBlock


class SmallNet(nn.Module):
    """conv(3->8, k3, pad1) - BN - ReLU - pool - conv(8->16, k3) - flatten - fc(16*14*14 -> 10) on 32x32."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(16 * 14 * 14, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def net() -> SmallNet:
    torch.manual_seed(0)
    return SmallNet()


# ---- cost_report -------------------------------------------------------------------------------

def test_cost_report_param_counts_match_formula(net: SmallNet) -> None:
    net.head[2].bias.requires_grad_(False)
    report = cost_report(net)
    conv1, bn, conv2, fc = 3 * 8 * 9 + 8, 2 * 8, 8 * 16 * 9 + 16, 16 * 14 * 14 * 10 + 10
    assert report.total_params == sum(p.numel() for p in net.parameters()) == conv1 + bn + conv2 + fc
    assert report.trainable_params == report.total_params - 10
    assert [layer.params for layer in report.layers] == [conv1, conv2, fc]


def test_cost_report_single_conv_flops_formula() -> None:
    conv = nn.Conv2d(3, 5, 3, stride=2)  # 32x32 -> 15x15
    report = cost_report(conv, (3, 32, 32))
    expected = 2 * 5 * 3 * 3 * 3 * 15 * 15
    assert report.flops_per_image == expected
    assert [(c.name, c.path, c.flops, c.output_shape) for c in report.layers] == \
        [("conv1", "", expected, (5, 15, 15))]


def test_cost_report_layer_names_paths_shapes_and_flops(net: SmallNet) -> None:
    report = cost_report(net)
    assert [(c.name, c.path, c.kind, c.output_shape) for c in report.layers] == [
        ("conv1", "features.0", "conv", (8, 32, 32)),
        ("conv2", "features.4", "conv", (16, 14, 14)),
        ("fc1", "head.2", "linear", (10,)),
    ]
    assert [c.flops for c in report.layers] == [2 * 8 * 3 * 9 * 32 * 32, 2 * 16 * 8 * 9 * 14 * 14,
                                                2 * 16 * 14 * 14 * 10]
    assert report.flops_per_image == sum(c.flops for c in report.layers)
    assert report.input_shape == (3, 32, 32) and report.device == "cpu"


def test_cost_report_layer_types_conv_only(net: SmallNet) -> None:
    report = cost_report(net, layer_types=("conv",))
    assert [c.name for c in report.layers] == ["conv1", "conv2"]
    assert report.flops_per_image > sum(c.flops for c in report.layers)  # the fc still counts in the total


def test_cost_report_activation_bytes_counts_leaf_outputs_once(net: SmallNet) -> None:
    # conv1, BN (the in-place ReLU reuses its storage), pool, conv2, (flatten is a view), dropout, fc
    floats = 8 * 32 * 32 * 2 + 8 * 16 * 16 + 16 * 14 * 14 + 16 * 14 * 14 + 10
    assert cost_report(net).activation_bytes_per_image == 4 * floats


def test_cost_report_leaves_model_unchanged(net: SmallNet) -> None:
    net.train()
    net.features[1].eval()  # a mixed state must come back exactly
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    cost_report(net, batch_size=4)
    assert torch.equal(torch.rand(3), expected_draw)  # the global RNG stream is untouched
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters(), strict=True))
    assert [m.training for m in net.modules()] == [m is not net.features[1] for m in net.modules()]
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_cost_report_keeps_eval_mode_and_none_grads(net: SmallNet) -> None:
    net.eval()
    cost_report(net)
    assert not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_cost_report_to_dict_is_json_and_no_peak_on_cpu(net: SmallNet) -> None:
    data = json.loads(json.dumps(cost_report(net, measure_peak=True, device="cpu").to_dict()))
    assert data["layers"][0] == {"name": "conv1", "path": "features.0", "kind": "conv", "params": 224,
                                 "flops": 2 * 8 * 3 * 9 * 32 * 32, "output_shape": [8, 32, 32]}
    assert data["input_shape"] == [3, 32, 32] and data["peak_train_step_bytes"] is None
    assert set(data) == set(CostReport.__dataclass_fields__)


def test_cost_report_bad_batch_size_raises(net: SmallNet) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        cost_report(net, batch_size=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cost_report_peak_measured_on_cuda(net: SmallNet) -> None:
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = cost_report(net, device="cuda", batch_size=8)
    weights = 4 * report.total_params
    # weights, their gradients and momentum buffers are all resident at the peak, plus activations
    assert report.peak_train_step_bytes is not None and report.peak_train_step_bytes > 3 * weights
    assert report.device.startswith("cuda")
    assert all(t.device.type == "cpu" for t in net.state_dict().values())  # moved back home
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats restored
    assert all(p.grad is None for p in net.parameters())


def test_peak_step_restores_grads_and_params(net: SmallNet, monkeypatch: pytest.MonkeyPatch) -> None:
    # The CUDA memory counters are faked so the step itself runs (and is checked) on the CPU.
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 1234)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    params = [p.detach().clone() for p in net.parameters()]
    grads = [p.grad.clone() for p in net.parameters()]
    assert cost._peak_step_bytes(net, torch.randn(4, 3, 32, 32)) == 1234
    assert all(torch.equal(a, p) for a, p in zip(params, net.parameters(), strict=True))
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, net.parameters(), strict=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cost_report_cuda_unavailable_raises(net: SmallNet) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        cost_report(net, device="cuda")


# ---- vanishing_summary / summarize_run --------------------------------------------------------

def _block(kind: str, steps: list[int], values: list[list[float]],
           layers: tuple[str, ...] = ("conv1", "conv2", "conv3")) -> NormBlock:
    return NormBlock(kind=kind, steps=np.array(steps, dtype=np.int64), layers=layers,
                     values=np.array(values, dtype=np.float32).reshape(len(steps), len(layers)))


def test_vanishing_summary_exact_means_and_ratio() -> None:
    # 2 steps per epoch: steps 0,1 -> epoch 0; steps 2,3 -> epoch 1
    block = _block("weight", [0, 1, 2, 3], [[1.0, 2.0, 4.0], [3.0, 2.0, 4.0],
                                           [0.5e-3, 1.0, 2.0], [1.5e-3, 3.0, 2.0]])
    s = vanishing_summary(block, steps_per_epoch=2, fraction=1e-2)
    assert s["kind"] == "weight" and s["layers"] == ["conv1", "conv2", "conv3"] and s["has_data"]
    assert s["epochs"] == [0, 1]
    assert s["mean_per_epoch"]["conv1"] == pytest.approx([2.0, 1e-3])
    assert s["mean_per_epoch"]["conv2"] == pytest.approx([2.0, 2.0])
    assert s["mean_per_epoch"]["conv3"] == pytest.approx([4.0, 2.0])
    assert s["first_last_ratio_per_epoch"] == pytest.approx([0.5, 5e-4])
    assert s["first_last_ratio"] == pytest.approx(5e-4)
    assert s["min_layer"] == "conv1"
    assert s["vanishing"] is True and s["fraction"] == 1e-2 and s["nonfinite_steps"] == 0
    json.dumps(s)


def test_vanishing_summary_not_vanishing_and_sparse_epochs() -> None:
    block = _block("activation", [10, 35], [[1.0, 1.0, 2.0], [2.0, 1.0, 4.0]])
    s = vanishing_summary(block, steps_per_epoch=10)
    assert s["epochs"] == [1, 3] and s["first_last_ratio"] == 0.5
    assert s["min_layer"] == "conv2" and s["vanishing"] is False


def test_vanishing_summary_ignores_and_counts_nonfinite() -> None:
    block = _block("weight", [0, 1, 2], [[1.0, 1.0, math.nan], [3.0, math.inf, 2.0], [math.nan, 5.0, 6.0]])
    s = vanishing_summary(block, steps_per_epoch=10)
    assert s["nonfinite_steps"] == 3
    assert s["mean_per_epoch"] == {"conv1": [2.0], "conv2": [3.0], "conv3": [4.0]}
    assert s["first_last_ratio"] == 0.5 and s["vanishing"] is False
    json.dumps(s, allow_nan=False)


def test_vanishing_summary_all_nan_layer_gives_none() -> None:
    block = _block("weight", [0, 1], [[math.nan, 1.0, 1.0], [math.nan, 1.0, 1.0]])
    s = vanishing_summary(block, steps_per_epoch=10)
    assert s["mean_per_epoch"]["conv1"] == [None]
    assert s["first_last_ratio"] is None and s["vanishing"] is None and s["min_layer"] == "conv2"
    json.dumps(s, allow_nan=False)


def test_vanishing_summary_zero_last_layer_ratio_none() -> None:
    s = vanishing_summary(_block("weight", [0], [[1.0, 1.0, 0.0]]), steps_per_epoch=1)
    assert s["first_last_ratio"] is None and s["vanishing"] is None and s["min_layer"] == "conv3"


def test_vanishing_summary_zero_first_layer_vanishes() -> None:
    s = vanishing_summary(_block("weight", [0], [[0.0, 1.0, 1.0]]), steps_per_epoch=1)
    assert s["first_last_ratio"] == 0.0 and s["vanishing"] is True


@pytest.mark.parametrize("block", [None, _block("weight", [], [])])
def test_vanishing_summary_none_or_empty(block: NormBlock | None) -> None:
    s = vanishing_summary(block, steps_per_epoch=5)
    assert s["has_data"] is False and s["vanishing"] is None and s["epochs"] == []
    assert s["first_last_ratio"] is None and s["nonfinite_steps"] == 0
    json.dumps(s)


def test_vanishing_summary_single_layer_ratio_none() -> None:
    block = _block("global", [0, 1], [[2.0], [4.0]], layers=("global",))
    s = vanishing_summary(block, steps_per_epoch=10)
    assert s["mean_per_epoch"] == {"global": [3.0]}
    assert s["first_last_ratio"] is None and s["vanishing"] is None


def test_vanishing_summary_bad_steps_per_epoch_raises() -> None:
    with pytest.raises(ValueError, match="steps_per_epoch"):
        vanishing_summary(None, steps_per_epoch=0)


def test_summarize_run_prefers_activation_verdict() -> None:
    weight = _block("weight", [0], [[1.0, 1.0, 1.0]])
    activation = _block("activation", [0], [[1e-6, 1.0, 1.0]])
    run = summarize_run({"weight": weight, "activation": activation, "global": None},
                        steps_per_epoch=1, fraction=1e-3)
    assert run["weight"]["vanishing"] is False and run["activation"]["vanishing"] is True
    assert run["global"]["has_data"] is False
    assert run["vanishing"] is True and run["vanishing_source"] == "activation"


def test_summarize_run_falls_back_to_weight() -> None:
    run = summarize_run({"weight": _block("weight", [0], [[1e-6, 1.0, 1.0]]), "activation": None},
                        steps_per_epoch=1, fraction=1e-3)
    assert run["vanishing"] is True and run["vanishing_source"] == "weight"
    empty = summarize_run({}, steps_per_epoch=1, fraction=1e-3)
    assert empty == {"vanishing": None, "vanishing_source": None}


# ---- filters -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("in_channels", "channels"), [(3, 3), (1, 1), (4, 1)])
def test_first_layer_filters_shape_and_range(in_channels: int, channels: int) -> None:
    model = nn.Sequential(nn.Conv2d(in_channels, 6, 5), nn.ReLU(), nn.Conv2d(6, 2, 3))
    filters = first_layer_filters(model)
    assert filters.shape == (6, 5, 5, channels) and filters.dtype == np.float32
    assert filters.min(axis=(1, 2, 3)) == pytest.approx(np.zeros(6))
    assert filters.max(axis=(1, 2, 3)) == pytest.approx(np.ones(6))


def test_first_layer_filters_normalizes_each_filter() -> None:
    conv = nn.Conv2d(3, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight[0] = torch.arange(12, dtype=torch.float32).reshape(3, 2, 2) * 10 - 7
        conv.weight[1] = 0.25  # constant
    filters = first_layer_filters(nn.Sequential(conv))
    expected = (np.arange(12, dtype=np.float32).reshape(3, 2, 2) / 11).transpose(1, 2, 0)
    np.testing.assert_allclose(filters[0], expected, atol=1e-6)
    np.testing.assert_array_equal(filters[1], np.full((2, 2, 3), 0.5, np.float32))


def test_first_layer_filters_averages_other_channel_counts() -> None:
    conv = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0]], [[3.0]]]]))
    assert first_layer_filters(conv).shape == (1, 1, 1, 1)


def test_first_layer_filters_no_conv_raises() -> None:
    with pytest.raises(ValueError, match="no trainable conv layer"):
        first_layer_filters(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


@pytest.mark.parametrize(("n", "ncols", "shape"), [(6, None, (2 * 6 + 1, 3 * 6 + 1, 3)),
                                                   (64, None, (8 * 6 + 1, 8 * 6 + 1, 3)),
                                                   (5, 5, (6 + 1, 5 * 6 + 1, 3))])
def test_filter_grid_shape(n: int, ncols: int | None, shape: tuple[int, int, int]) -> None:
    filters = np.zeros((n, 5, 5, 3), np.float32)
    grid = filter_grid(filters, pad=1, ncols=ncols)
    assert grid.shape == shape and grid.dtype == np.float32
    assert grid[0].min() == 1.0 and grid[1:6, 1:6].max() == 0.0  # padding is background, cells hold filters


def test_filter_grid_places_filters_and_background() -> None:
    filters = np.stack([np.full((2, 2, 1), v, np.float32) for v in (0.1, 0.2, 0.3)])
    grid = filter_grid(filters, pad=0, background=0.0)
    assert grid.shape == (4, 4, 1)
    np.testing.assert_allclose(grid[..., 0], [[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2],
                                              [0.3, 0.3, 0.0, 0.0], [0.3, 0.3, 0.0, 0.0]])


def test_filter_grid_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="filters"):
        filter_grid(np.zeros((0, 3, 3, 3)))
    with pytest.raises(ValueError, match="filters"):
        filter_grid(np.zeros((3, 3, 3)))
