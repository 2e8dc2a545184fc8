"""Presets: every one expands into valid, paired specs; the ``init`` preset, run small on real CIFAR-10 images,
shows what the classic fixes do (the numbers it measured are in docs/studies.md)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from deepgrad_core.experiment import prepare
from deepgrad_core.presets import PRESETS
from deepgrad_core.study import set_path

SMALL = {"model.width": 0.125, "data.subset": 20, "data.test_subset": 5, "train.epochs": 1, "train.batch_size": 50}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/core/conftest.py


def _small(name: str) -> dict:
    base = copy.deepcopy(PRESETS[name].base)
    for key, value in SMALL.items():
        set_path(base, key, value)
    return base


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_expands_paired_at_full_size_and_small(name: str) -> None:
    preset = PRESETS[name]
    full, small = preset.expand(), preset.expand(_small(name))
    assert len(full) == len(small) == preset.jobs >= 2
    assert len({p.spec.seed for p in full}) == 1 and len({p.label for p in full}) == len(full)
    assert {p.spec.data.name for p in full} == {"cifar10"} and {p.spec.model.width for p in small} == {0.125}


def test_original_follows_the_studys_protocol() -> None:
    points = {p.label: p.spec for p in PRESETS["original"].expand()}
    firsts = ("arch=vgg16, optimizer=adam", "arch=vgg_deep", "arch=resnet18, optimizer=adamw")
    vgg16, deep, resnet = (points[k] for k in points if k.startswith(firsts))
    assert (vgg16.train.optimizer, deep.train.optimizer, resnet.train.optimizer) == ("adam", "sgd", "adamw")
    assert vgg16.model.batch_norm and vgg16.model.dropout == 0.5 and not deep.model.batch_norm
    kinds = {(s.model.kernel_size, s.model.pooling, s.model.activation, s.model.bottleneck) for s in points.values()}
    assert {(5, "max", "relu", False), (7, "max", "relu", False), (3, "avg", "relu", False),
            (3, "max", "gelu", False), (3, "max", "relu", True)} <= kinds


def test_the_init_preset_small_shows_the_classic_fixes(cifar10_root: Path, capsys: pytest.CaptureFixture) -> None:
    results = {}
    for point in PRESETS["init"].expand(_small("init")):
        result = prepare(point.spec, data_root=cifar10_root, device="cpu").run()
        results[point.label] = result.summary
    with capsys.disabled():  # the table docs/studies.md quotes
        print("\ninit preset, small (width 0.125, 200 CIFAR-10 images, 1 epoch): first/last ratio (weight, "
              "activation)")
        for label, s in results.items():
            print(f"  {label:40s} {s['weight']['first_last_ratio']:.1e}  {s['activation']['first_last_ratio']:.1e}")
    default = results["init=default, batch_norm=false"]
    assert default["vanishing"] is True and default["weight"]["first_last_ratio"] < 1e-4
    for label, summary in results.items():
        if label != "init=default, batch_norm=false":  # Kaiming, Xavier, or batch norm: the gradient arrives
            assert summary["vanishing"] is False and summary["weight"]["first_last_ratio"] > 1e-2, label
