"""GradientTracker: exact values, unscaled norms under AMP, no host sync in a step, clean detach."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from deepgrad_core import GradientTracker, build_model, tracked_layers
from deepgrad_core.norms import NormBlock


def _batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def _run(model, tracker, steps, *, scaler=None, optimizer=None, autocast=contextlib.nullcontext, check=None):
    """Run ``steps`` training steps; ``check(step, model)`` runs after backward, before the update."""
    for step in range(steps):
        x, y = _batch(seed=step)
        tracker.start_step(step)
        with autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if check is not None:
            check(step, model)
        tracker.record_step()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        elif optimizer is not None:
            optimizer.step()
        model.zero_grad(set_to_none=True)


def test_weight_norms_equal_direct_grad_norms():
    torch.manual_seed(0)
    model = build_model({"arch": "resnet18", "width": 0.125})
    blocks: list[NormBlock] = []
    expected = []
    with GradientTracker(model, flush_every=4, on_flush=blocks.append) as tracker:
        _run(model, tracker, 6, check=lambda s, m: expected.append(
            [la.weight.grad.norm().item() for la in tracker.layers]))
        tracker.flush()
    weight = [b for b in blocks if b.kind == "weight"]
    assert [len(b) for b in weight] == [4, 2]
    got = np.concatenate([b.values for b in weight])
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-5)
    assert np.concatenate([b.steps for b in weight]).tolist() == list(range(6))
    assert weight[0].layers == tuple(la.name for la in tracked_layers(model))
    assert weight[0].layers[7] == "shortcut1" and weight[0].layers[-1] == "conv17"  # named by role


def test_activation_norms_equal_output_gradient_norms_on_sampled_steps():
    torch.manual_seed(0)
    model = build_model({"arch": "vgg16", "width": 0.125})
    layers = tracked_layers(model)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inp, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    handles = [la.module.register_forward_hook(keep(la.name)) for la in layers]
    expected = {}
    blocks: list[NormBlock] = []
    with GradientTracker(model, activation_every=3, flush_every=100, on_flush=blocks.append) as tracker:
        _run(model, tracker, 7, check=lambda s, m: expected.__setitem__(
            s, [outputs[la.name].grad.norm().item() for la in layers]))
        tracker.flush()
    for h in handles:
        h.remove()
    act = next(b for b in blocks if b.kind == "activation")
    assert act.steps.tolist() == [0, 3, 6]
    np.testing.assert_allclose(act.values, np.array([expected[s] for s in (0, 3, 6)]), rtol=1e-5)


def test_full_backward_hook_mode_matches_fused_activation_norms():
    torch.manual_seed(0)
    model = build_model({"arch": "vgg_deep", "width": 0.125})
    results = {}
    for mode in ("fused", "full_backward_hook"):
        blocks: list[NormBlock] = []
        with GradientTracker(model, mode=mode, activation_every=1, on_flush=blocks.append) as tracker:
            _run(model, tracker, 3)
            tracker.flush()
        results[mode] = next(b for b in blocks if b.kind == "activation")
        assert _hooks_left(model) == 0
    np.testing.assert_allclose(results["fused"].values, results["full_backward_hook"].values, rtol=1e-5)


@pytest.mark.parametrize("mode", ["fused", "full_backward_hook"])
def test_grad_scaler_records_unscaled_norms(mode):
    blocks = {}
    for scaled in (False, True):
        torch.manual_seed(0)
        model = build_model({"arch": "resnet18", "width": 0.125})
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12) if scaled else None
        got: list[NormBlock] = []
        with GradientTracker(model, mode=mode, activation_every=1, scaler=scaler, on_flush=got.append) as tracker:
            _run(model, tracker, 3, scaler=scaler, optimizer=optimizer)
            tracker.flush()
        blocks[scaled] = {b.kind: b for b in got}
    assert set(blocks[True]) == ({"weight", "activation"} if mode == "fused" else {"activation"})
    for kind, block in blocks[True].items():
        assert np.isfinite(block.values).all()
        np.testing.assert_allclose(block.values, blocks[False][kind].values, rtol=1e-4)


def test_grad_scaler_without_unscale_is_refused():
    model = build_model({"arch": "vgg16", "width": 0.125})
    scaler = torch.amp.GradScaler("cpu")
    tracker = GradientTracker(model, scaler=scaler)
    x, y = _batch()
    tracker.start_step(0)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    with pytest.raises(RuntimeError, match="unscale_"):
        tracker.record_step()


def test_bf16_autocast_norms_are_float32_norms_of_the_bf16_gradients():
    torch.manual_seed(0)
    model = build_model({"arch": "vgg16", "width": 0.125, "dropout": 0.0})
    layers = tracked_layers(model)
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inp, out):
            out.retain_grad()
            outputs[name] = out
        return hook

    handles = [la.module.register_forward_hook(keep(la.name)) for la in layers]
    expected: dict[str, list[list[float]]] = {"weight": [], "activation": []}
    act_dtypes = set()

    def check(step, m):
        act_dtypes.update(outputs[la.name].grad.dtype for la in layers)
        expected["weight"].append([la.weight.grad.float().norm().item() for la in layers])
        expected["activation"].append([outputs[la.name].grad.float().norm().item() for la in layers])

    blocks: list[NormBlock] = []
    with GradientTracker(model, activation_every=1, flush_every=10, on_flush=blocks.append) as tracker:
        assert tracker._wbuf.dtype == tracker._abuf.dtype == torch.float32
        _run(model, tracker, 2, autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16), check=check)
        tracker.flush()
    for h in handles:
        h.remove()
    assert act_dtypes == {torch.bfloat16}  # the output gradients really were bf16
    for block in blocks:
        assert block.values.dtype == np.float32
        # float32 accumulation of bf16 values: agrees with a float32 norm to float32 rounding, where a
        # bf16 accumulation would be off by ~1e-2.
        np.testing.assert_allclose(block.values, np.array(expected[block.kind]), rtol=1e-5)


_SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def _forbid_host_sync(allowed: list[bool]):
    """Count device->host reads of tensors; they are allowed only while ``allowed[0]`` is True."""
    calls = []
    originals = {name: getattr(torch.Tensor, name) for name in _SYNC_METHODS}

    def guard(name):
        def wrapper(self, *args, **kwargs):
            calls.append((name, allowed[0]))
            return originals[name](self, *args, **kwargs)
        return wrapper

    for name in _SYNC_METHODS:
        setattr(torch.Tensor, name, guard(name))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _allow_sync_in_flush(tracker: GradientTracker, allowed: list[bool]) -> None:
    """Wrap ``tracker.flush`` so that host syncs are allowed while it runs (and only then)."""
    original_flush = tracker.flush

    def flush():
        allowed[0] = True
        try:
            return original_flush()
        finally:
            allowed[0] = False

    tracker.flush = flush


def test_no_host_sync_inside_steps_only_at_flushes():
    torch.manual_seed(0)
    model = build_model({"arch": "resnet18", "width": 0.125})
    allowed = [False]
    flushes = []

    def on_flush(block):
        flushes.append(block.kind)

    tracker = GradientTracker(model, activation_every=2, flush_every=5, on_flush=on_flush).attach()
    _allow_sync_in_flush(tracker, allowed)
    with _forbid_host_sync(allowed) as calls:
        _run(model, tracker, 12)
    tracker.detach()
    assert [c for c in calls if not c[1]] == [], "host sync inside a training step"
    assert tracker.flushes == 2  # steps 0-4 and 5-9; 10-11 wait in the device buffer
    assert flushes == ["weight", "activation"] * 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for torch.cuda.set_sync_debug_mode")
def test_no_host_sync_inside_steps_on_cuda():
    model = build_model({"arch": "resnet18", "width": 0.25}).cuda()
    tracker = GradientTracker(model, activation_every=2, flush_every=1000).attach()
    x, y = (t.cuda() for t in _batch(16))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(6):
            tracker.start_step(step)
            nn.functional.cross_entropy(model(x), y).backward()
            tracker.record_step()
            model.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(tracker.flush()[0]) == 6


def test_nonfinite_norms_detected_at_flush():
    model = build_model({"arch": "vgg16", "width": 0.125})
    tracker = GradientTracker(model, flush_every=10)

    def poison(step, m):
        if step == 3:
            tracker.layers[2].weight.grad.fill_(float("nan"))

    _run(model, tracker, 5, check=poison)
    assert tracker.first_nonfinite_step is None  # nothing synced yet
    blocks = tracker.flush()
    weight = next(b for b in blocks if b.kind == "weight")
    assert weight.nonfinite_steps.tolist() == [3]
    assert np.isfinite(weight.values[:3]).all()  # what came before is kept intact
    assert tracker.first_nonfinite_step == 3


@pytest.mark.parametrize("mode", ["fused", "full_backward_hook"])
def test_detach_leaves_no_hooks(mode):
    model = build_model({"arch": "resnet18", "width": 0.125})
    tracker = GradientTracker(model, mode=mode, activation_every=1).attach()
    x, y = _batch()
    tracker.start_step(0)  # a sampled step: hooks armed
    nn.functional.cross_entropy(model(x), y).backward()
    assert mode == "fused" or _hooks_left(model) > 0
    tracker.detach()
    assert _hooks_left(model) == 0


def test_unsampled_steps_carry_no_hooks():
    model = build_model({"arch": "vgg16", "width": 0.125})
    with GradientTracker(model, activation_every=10) as tracker:
        tracker.start_step(3)
        assert _hooks_left(model) == 0
        tracker.start_step(10)
        assert _hooks_left(model) == len(tracker.layers)
        x, y = _batch()
        nn.functional.cross_entropy(model(x), y).backward()
        tracker.record_step()
        assert _hooks_left(model) == 0


def test_tracker_attaches_to_any_module():
    model = torchvision.models.resnet18(num_classes=10)
    blocks: list[NormBlock] = []
    with GradientTracker(model, layer_types=("conv", "linear"), activation_every=1,
                         on_flush=blocks.append) as tracker:
        _run(model, tracker, 2)
        tracker.flush()
    weight = next(b for b in blocks if b.kind == "weight")
    assert weight.layers[-1] == "fc1" and weight.layers[0] == "conv1" and len(weight.layers) == 21
    assert np.isfinite(weight.values).all() and (weight.values > 0).all()
    assert _hooks_left(model) == 0


def test_tracker_follows_the_model_to_another_device():
    model = build_model({"arch": "vgg16", "width": 0.125})
    tracker = GradientTracker(model)
    assert tracker.device == torch.device("cpu")
    model.to("meta")  # moved after the tracker was built, as model.to("cuda") would be
    tracker.start_step(0)
    assert tracker.device.type == "meta" and tracker._wbuf.device.type == "meta"


def test_tracker_refuses_a_model_moved_with_steps_pending():
    model = build_model({"arch": "vgg16", "width": 0.125})
    tracker = GradientTracker(model, flush_every=10)
    _run(model, tracker, 1)
    model.to("meta")
    with pytest.raises(RuntimeError, match="flush"):
        tracker.start_step(1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tracker_built_before_model_moves_to_cuda():
    torch.manual_seed(0)
    model = build_model({"arch": "vgg16", "width": 0.125, "dropout": 0.0})
    tracker = GradientTracker(model, activation_every=1)
    model.cuda()
    expected = []
    x, y = (t.cuda() for t in _batch())
    tracker.start_step(0)
    nn.functional.cross_entropy(model(x), y).backward()
    expected = [la.weight.grad.norm().item() for la in tracker.layers]
    tracker.record_step()
    weight = next(b for b in tracker.flush() if b.kind == "weight")
    np.testing.assert_allclose(weight.values[0], expected, rtol=1e-5)


def test_full_backward_hook_mode_raises_no_warning():
    """The first conv's input needs no gradient; the original mode must not make torch warn about it."""
    model = build_model({"arch": "vgg16", "width": 0.125})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with GradientTracker(model, mode="full_backward_hook") as tracker:
            _run(model, tracker, 2)
    assert [str(w.message) for w in caught] == []


def test_importing_the_tracker_leaves_warning_filters_alone():
    code = ("import warnings, torch, deepgrad_core.models  # torch adds filters of its own\n"
            "before = list(warnings.filters)\n"
            "import deepgrad_core.tracker\n"
            "assert warnings.filters == before, warnings.filters[:3]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tracker_rejects_bad_arguments():
    model = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no layer"):
        GradientTracker(model)
    with pytest.raises(ValueError, match="mode"):
        GradientTracker(build_model({"arch": "vgg16", "width": 0.125}), mode="sometimes")


def test_sync_guard_catches_the_original_methods_per_layer_item():
    """The guard above is not vacuous: the original method syncs once per layer per step."""
    model = build_model({"arch": "vgg16", "width": 0.125})
    tracker = GradientTracker(model, mode="full_backward_hook", flush_every=100).attach()
    with _forbid_host_sync([False]) as calls:
        _run(model, tracker, 2)
    tracker.detach()
    assert sum(1 for name, allowed in calls if name == "item" and not allowed) == 2 * len(tracker.layers)


def _direct_histogram(grad: torch.Tensor) -> np.ndarray:
    """The bins of ``deepgrad_core.histograms`` computed directly: floor((log10|g| - LOW) * BINS / span)."""
    from deepgrad_core import histograms as h

    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.abs(grad.detach().double().numpy().ravel()))
    logs = np.clip(np.nan_to_num(logs, nan=h.HIGH, posinf=h.HIGH, neginf=h.LOW), h.LOW, h.HIGH)
    index = np.minimum(np.floor((logs - h.LOW) * h.BINS / (h.HIGH - h.LOW)).astype(int), h.BINS - 1)
    return np.bincount(index, minlength=h.BINS)


def test_histograms_equal_a_direct_computation_on_sampled_steps():
    from deepgrad_core.histograms import BINS, HistBlock

    torch.manual_seed(0)
    model = build_model({"arch": "vgg_deep", "width": 0.125})
    blocks: list[HistBlock] = []
    expected = {}

    def check(step, m):
        if step % 3 == 0:
            layers = tracker.layers
            layers[0].weight.grad.view(-1)[:5] = 0.0  # zeros land in the first bin
            layers[1].weight.grad.view(-1)[0] = float("nan")  # non-finite values in the last
            layers[2].weight.grad.view(-1)[0] = 1e6
            expected[step] = np.stack([_direct_histogram(la.weight.grad) for la in layers])

    with GradientTracker(model, flush_every=4, histogram_every=3, on_histograms=blocks.append) as tracker:
        _run(model, tracker, 8, check=check)
        tracker.flush()
    steps = np.concatenate([b.steps for b in blocks])
    counts = np.concatenate([b.counts for b in blocks])
    assert steps.tolist() == [0, 3, 6] and counts.shape == (3, 17, BINS)
    assert blocks[0].layers == tuple(la.name for la in tracker.layers)
    for i, step in enumerate(steps):
        # float32 on the tracker's side, float64 here: a value on a bin edge may fall either side of it
        np.testing.assert_allclose(counts[i], expected[step], atol=2)
        assert counts[i].sum(axis=1).tolist() == [la.weight.numel() for la in tracker.layers]
    assert counts[0, 0, 0] >= 5 and counts[0, 1, -1] >= 1 and counts[0, 2, -1] >= 1


def test_histograms_off_cost_nothing_and_stay_within_one_flush_of_rows():
    model = build_model({"arch": "resnet18", "width": 0.125})
    off = GradientTracker(model, histogram_every=0)
    assert off._hbuf.shape[0] == 0
    on = GradientTracker(model, flush_every=100_000, histogram_every=100)
    assert on._hbuf.shape[0] == 1001  # rows of one flush interval, not one per step


def test_no_host_sync_inside_steps_with_histograms():
    torch.manual_seed(0)
    model = build_model({"arch": "resnet18", "width": 0.125})
    allowed, got = [False], []
    tracker = GradientTracker(model, flush_every=5, histogram_every=2, on_histograms=got.append).attach()
    _allow_sync_in_flush(tracker, allowed)
    with _forbid_host_sync(allowed) as calls:
        _run(model, tracker, 10)
    tracker.detach()
    assert [c for c in calls if not c[1]] == [], "host sync inside a training step"
    assert [b.steps.tolist() for b in got] == [[0, 2, 4], [6, 8]]  # with the norms, at each flush
