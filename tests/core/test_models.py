"""Architectures: every valid option combination builds and trains a step; invalid ones say why."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from deepgrad_core import ModelSpec, build_model, tracked_layers
from deepgrad_core.spec import ACTIVATIONS, INITS

STRUCTURAL = [
    (arch, k, pool, bn, bottleneck, residual)
    for arch, k, pool, bn, bottleneck, residual in itertools.product(
        ["vgg16", "vgg_deep", "resnet18"], [3, 5, 7], ["max", "avg"], [True, False], [True, False], [True, False])
    if not (arch == "resnet18" and pool == "avg")  # resnet18 has no pooling option (ValueError below)
]


@pytest.mark.parametrize("arch,kernel_size,pooling,batch_norm,bottleneck,residual", STRUCTURAL)
def test_build_model_every_option_combination(arch, kernel_size, pooling, batch_norm, bottleneck, residual):
    """Every structure x every activation: forward, backward, a gradient on every tracked layer.

    Init only rescales weights, so it is rotated across the cases rather than multiplied in:
    each (arch, activation, init) triple still occurs many times over the parametrization.
    """
    x = torch.randn(2, 3, 32, 32)
    case = STRUCTURAL.index((arch, kernel_size, pooling, batch_norm, bottleneck, residual))
    for i, activation in enumerate(ACTIVATIONS):
        init = INITS[(case + i) % len(INITS)]
        spec = dict(arch=arch, kernel_size=kernel_size, pooling=pooling, batch_norm=batch_norm,
                    bottleneck=bottleneck, residual=residual, activation=activation, init=init, width=1 / 16)
        model = build_model(spec)
        out = model(x)
        assert out.shape == (2, 10), spec
        out.float().pow(2).mean().backward()
        layers = tracked_layers(model)
        assert all(layer.weight.grad is not None for layer in layers), spec
        assert torch.isfinite(out).all(), spec


@pytest.mark.parametrize("options,name", [
    ({"arch": "vgg19"}, "arch"),
    ({"arch": "vgg16", "kernel_size": 4}, "kernel_size"),
    ({"arch": "resnet18", "kernel_size": 9}, "kernel_size"),
    ({"arch": "vgg16", "pooling": "min"}, "pooling"),
    ({"arch": "resnet18", "pooling": "avg"}, "pooling"),
    ({"arch": "vgg16", "activation": "swish"}, "activation"),
    ({"arch": "vgg16", "init": "uniform"}, "init"),
    ({"arch": "resnet18", "extra_convs": 2}, "extra_convs"),
    ({"arch": "vgg16", "extra_convs": -1}, "extra_convs"),
    ({"arch": "resnet18", "dropout": 0.5}, "dropout"),
    ({"arch": "vgg16", "dropout": 1.0}, "dropout"),
    ({"arch": "vgg16", "width": 0}, "width"),
    ({"arch": "vgg16", "in_channels": 0}, "in_channels"),
    ({"arch": "vgg16", "num_classes": 1}, "num_classes"),
    ({"arch": "vgg16", "depth": 30}, "depth"),
])
def test_build_model_invalid_option_raises_naming_it(options, name):
    with pytest.raises(ValueError, match=name):
        build_model(options)


def test_resnet18_parameter_count_is_the_standard_cifar_one():
    model = build_model({"arch": "resnet18"})
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


@pytest.mark.parametrize("arch,convs,shortcuts,bn,dropouts", [("vgg16", 13, 0, True, 2), ("vgg_deep", 17, 0, False, 0),
                                                               ("resnet18", 17, 3, True, 0)])
def test_family_defaults_structure(arch, convs, shortcuts, bn, dropouts):
    model = build_model({"arch": arch, "width": 0.25})
    layers = tracked_layers(model)
    main = [la.name for la in layers if la.role in ("stem", "main")]
    assert main == [f"conv{i}" for i in range(1, convs + 1)]
    assert [la.name for la in layers if la.role == "shortcut"] == [f"shortcut{i}" for i in range(1, shortcuts + 1)]
    assert len(layers) == convs + shortcuts and layers[0].role == "stem"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == bn
    dropout = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropout) == dropouts and all(m.p == 0.5 for m in dropout)


def test_vgg_deep_adds_one_conv_to_each_of_blocks_two_to_five():
    blocks = [[], [], [], [], []]
    model = build_model({"arch": "vgg_deep", "width": 0.25})
    block = 0
    for module in model.features:
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            block += 1
        else:
            blocks[block].append(module.conv.out_channels)
    assert [len(b) for b in blocks] == [2, 3, 4, 4, 4]


@pytest.mark.parametrize("arch", ["vgg16", "vgg_deep", "resnet18"])
def test_tracked_layers_are_in_forward_order(arch):
    model = build_model({"arch": arch, "width": 0.125})
    layers = tracked_layers(model)
    called = []
    handles = [la.module.register_forward_hook(lambda m, i, o, n=la.name: called.append(n)) for la in layers]
    model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert called == [la.name for la in layers]
    assert [la.depth for la in layers] == list(range(len(layers)))


def test_resnet18_plain_has_no_shortcuts():
    plain = build_model({"arch": "resnet18", "residual": False, "width": 0.125})
    assert len(tracked_layers(plain)) == 17
    assert not any("shortcut" in la.path for la in tracked_layers(plain))


def test_vgg_residual_adds_identity_where_shapes_match():
    model = build_model({"arch": "vgg_deep", "residual": True, "width": 0.125})
    units = [m for m in model.features if hasattr(m, "residual")]
    # Every conv whose input has its output's channels: all but the first of blocks 1-4
    # (block 5's first conv maps 512 -> 512 and gets one too).
    assert sum(u.residual for u in units) == 17 - 4


def test_bottleneck_inserts_one_by_one_reductions():
    model = build_model({"arch": "vgg16", "bottleneck": True})
    plain = build_model({"arch": "vgg16"})
    ones = [la for la in tracked_layers(model) if la.module.kernel_size == (1, 1)]
    assert len(ones) == 12  # every conv but the stem, whose 3 input channels need no reduction
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in plain.parameters())


def test_fashion_mnist_shape_model():
    model = build_model({"arch": "resnet18", "in_channels": 1, "num_classes": 10, "width": 0.125})
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


@pytest.mark.parametrize("init", ["kaiming_normal", "xavier_normal", "orthogonal"])
def test_init_scheme_sets_expected_scale(init):
    model = build_model({"arch": "vgg16", "init": init, "width": 0.5})
    conv = tracked_layers(model)[5].module
    fan_in = conv.weight[0].numel()
    std = conv.weight.std().item()
    expected = {"kaiming_normal": (2 / fan_in) ** 0.5,
                "xavier_normal": 2 ** 0.5 * (2 / (fan_in + conv.weight.shape[0] * 9)) ** 0.5}.get(init)
    if expected is not None:
        assert std == pytest.approx(expected, rel=0.1)
    assert torch.count_nonzero(conv.bias) == 0


def test_orthogonal_init_gives_orthogonal_rows_or_columns():
    """Each weight, as a matrix [out, in * k * k], has orthonormal rows or columns (whichever are fewer),
    scaled by the activation's gain: W W^T = gain^2 I (or W^T W)."""
    for activation, gain in [("relu", 2 ** 0.5), ("tanh", 5 / 3)]:
        model = build_model({"arch": "resnet18", "init": "orthogonal", "activation": activation, "width": 0.125})
        layers = tracked_layers(model, ("conv", "linear"))
        shapes = set()
        for layer in layers:
            w = layer.weight.detach().flatten(1).double()
            gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            shapes.add(w.shape[0] <= w.shape[1])
            torch.testing.assert_close(gram, gain ** 2 * torch.eye(len(gram), dtype=torch.float64),
                                       atol=1e-5, rtol=0, msg=f"{activation} {layer.name}")
        assert shapes == {True, False}  # wide (3x3 convs) and tall (1x1 shortcuts) matrices were checked


def test_spec_round_trips_through_json_and_rebuilds_same_model():
    spec = ModelSpec(arch="vgg_deep", kernel_size=5, activation="elu", width=0.25, init="orthogonal")
    again = ModelSpec.model_validate(json.loads(spec.model_dump_json()))
    assert again == spec
    torch.manual_seed(3)
    a = build_model(spec)
    torch.manual_seed(3)
    b = build_model(again)
    assert a.spec == spec.resolved()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_spec_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from deepgrad_core.spec import ExperimentSpec\n"
            "import deepgrad_core\n"
            "s = ExperimentSpec.model_validate({'model': {'arch': 'vgg_deep'}})\n"
            "assert ExperimentSpec.from_json(s.to_json()) == s\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(("arch", "main_path", "params"), [
    ("vgg11", 8, 9_756_426), ("vgg13", 10, 9_941_322), ("vgg16", 13, 15_253_578), ("vgg_deep", 17, 20_702_410),
    ("resnet18", 17, 11_173_962), ("resnet34", 33, 21_282_122)])
def test_the_depth_family_has_its_papers_depths(arch: str, main_path: int, params: int) -> None:
    """VGG-11/13/16 (Simonyan & Zisserman's A, B, D) and VGG-Deep; ResNet-18/34 (He et al.) at CIFAR size."""
    model = build_model({"arch": arch})
    layers = tracked_layers(model)
    assert len([la for la in layers if la.role in ("stem", "main")]) == main_path
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
