"""ExperimentSpec: a spec the data set or the architecture cannot run is refused up front, naming the field."""

from __future__ import annotations

import pytest

from deepgrad_core.spec import DATASET_CLASSES, ExperimentSpec


def _spec(model: dict, data: dict) -> ExperimentSpec:
    return ExperimentSpec.model_validate({"model": model, "data": data})


@pytest.mark.parametrize("dataset", sorted(DATASET_CLASSES))
@pytest.mark.parametrize("num_classes", [2, 100])
def test_experiment_spec_num_classes_must_match_data_set(dataset, num_classes):
    channels = 1 if dataset == "fashion_mnist" else 3
    with pytest.raises(ValueError, match=f"model.num_classes is {num_classes} but data set '{dataset}' has 10"):
        _spec({"arch": "resnet18", "num_classes": num_classes, "in_channels": channels}, {"name": dataset})
    assert _spec({"arch": "resnet18", "in_channels": channels}, {"name": dataset}).model.num_classes == 10


@pytest.mark.parametrize("arch", ["vgg16", "vgg_deep"])
@pytest.mark.parametrize("side", [8, 16, 31])
def test_experiment_spec_vgg_needs_images_of_at_least_32(arch, side):
    with pytest.raises(ValueError, match=f"data.image_size is {side} but {arch}"):
        _spec({"arch": arch}, {"name": "synthetic", "image_size": side})


@pytest.mark.parametrize("model,side", [({"arch": "vgg16"}, 32), ({"arch": "vgg_deep"}, 48),
                                        ({"arch": "vgg16"}, None), ({"arch": "resnet18"}, 8)])
def test_experiment_spec_image_sizes_that_run(model, side):
    assert _spec(model, {"name": "synthetic", "image_size": side}).data.image_size == side
