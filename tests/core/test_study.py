"""Study expansion: a grid or a list of overrides over a base spec, one validated spec per point, errors naming
the key; every point keeps the base's seed (a paired comparison)."""

from __future__ import annotations

import pytest

from deepgrad_core.spec import ExperimentSpec
from deepgrad_core.study import StudyError, expand, set_path

BASE = {"model": {"arch": "vgg_deep", "width": 0.25}, "data": {"name": "synthetic"}, "seed": 7}


def test_a_grid_gives_every_combination_in_order_with_one_seed() -> None:
    points = expand(BASE, grid={"model.kernel_size": [3, 5, 7], "model.pooling": ["max", "avg"]})
    assert [(p.spec.model.kernel_size, p.spec.model.pooling) for p in points] == [
        (3, "max"), (3, "avg"), (5, "max"), (5, "avg"), (7, "max"), (7, "avg")]
    assert {p.spec.seed for p in points} == {7} and all(p.spec.model.width == 0.25 for p in points)
    assert points[3].overrides == {"model.kernel_size": 5, "model.pooling": "avg"}
    assert points[3].label == "kernel_size=5, pooling=avg"


def test_points_are_taken_as_listed_and_resolved_per_family() -> None:
    points = expand(BASE, points=[{"model.arch": "vgg16", "train.optimizer": "adam"},
                                  {"model.arch": "resnet18", "train.optimizer": "adamw"}, {}])
    assert [p.spec.model.arch for p in points] == ["vgg16", "resnet18", "vgg_deep"]
    assert points[0].spec.model.batch_norm is True and points[2].spec.model.batch_norm is False  # family defaults
    assert points[2].label == "base" and points[2].spec == ExperimentSpec.model_validate(BASE)


@pytest.mark.parametrize(("kwargs", "loc", "words"), [
    ({"grid": {"model.kernal_size": [3]}}, ("grid", "model.kernal_size"), "unknown key 'model.kernal_size'"),
    ({"grid": {"modle.arch": ["vgg16"]}}, ("grid", "modle.arch"), "valid in the spec: model, data"),
    ({"grid": {"model.kernel_size": []}}, ("grid", "model.kernel_size"), "empty list"),
    ({"grid": {"model.kernel_size": 5}}, ("grid", "model.kernel_size"), "must be a list"),
    ({"grid": {"model.kernel_size": [3, 4]}}, ("grid", "model.kernel_size"), "kernel_size must be one of"),
    ({"grid": {}}, ("grid",), "grid is empty"),
    ({"grid": {"seed": [1, 2]}}, ("grid", "seed"), "same for every job"),
    ({"grid": {"model": [{}]}}, ("grid", "model"), "is a section"),
    ({"points": []}, ("points",), "points is empty"),
    ({"points": [{}, {"train.lr": -1}]}, ("points", 1, "train.lr"), "greater than 0"),
    ({"points": [{"model.arch": "resnet18", "model.extra_convs": 2}]}, ("points", 0, "model.arch"), "VGG family"),
    ({"points": [3]}, ("points", 0), "must be a mapping"),
    ({"grid": {"model.width": [0.1] * 9, "train.lr": [0.1] * 8}, "max_points": 64}, ("grid",), "72 jobs"),
    ({}, (), "either grid"),
    ({"grid": {"train.lr": [0.1]}, "points": [{}]}, (), "either grid"),
])
def test_bad_studies_name_the_key(kwargs: dict, loc: tuple, words: str) -> None:
    with pytest.raises(StudyError) as caught:
        expand(BASE, **kwargs)
    assert caught.value.loc == loc and words in caught.value.msg


def test_a_base_the_spec_refuses_is_named_as_the_base() -> None:
    with pytest.raises(StudyError) as caught:
        expand({**BASE, "train": {"epochs": 0}}, grid={"model.kernel_size": [3]})
    assert caught.value.loc == ("base", "train", "epochs") and "base spec" in caught.value.msg


def test_set_path_creates_sections_and_leaves_others() -> None:
    spec = {"model": {"arch": "vgg16"}, "train": None}
    set_path(spec, "train.lr", 0.1)
    set_path(spec, "data.name", "synthetic")
    assert spec == {"model": {"arch": "vgg16"}, "train": {"lr": 0.1}, "data": {"name": "synthetic"}}
