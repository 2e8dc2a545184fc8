"""What the numbers mean: recorded per-layer norms are the true gradient's, before any clipping (issue 11).

With ``grad_clip`` 0.05 and a global norm of 0.29 at step 0, conv1's recorded weight norm was 0.171x its
true gradient (exactly 0.05 / 0.29): the norms were read after clipping, while activation norms were read
before. The study is about the gradient backpropagation delivers.
"""

from __future__ import annotations

import copy

import pytest
import torch

from deepgrad_core.data import load_split
from deepgrad_core.loader import DeviceLoader
from deepgrad_core.models import build_model, tracked_layers
from deepgrad_core.spec import ExperimentSpec
from deepgrad_core.training import train


@pytest.mark.parametrize("arch", ["vgg_deep", "resnet18"])
@pytest.mark.parametrize("clip", [0.05, 1e-4])
def test_norms_under_grad_clip_are_the_unclipped_ones(arch: str, clip: float) -> None:
    spec = ExperimentSpec.model_validate({
        "model": {"arch": arch, "width": 0.125}, "data": {"name": "synthetic", "subset": 8, "test_subset": 2},
        "train": {"epochs": 1, "batch_size": 16, "grad_clip": clip, "lr": 0.1}, "seed": 3})
    splits = [load_split(spec.data, s, seed=spec.seed) for s in ("train", "test")]
    torch.manual_seed(0)
    model = build_model(spec.model)
    reference = copy.deepcopy(model)
    result = train(model, spec, device="cpu", train_data=splits[0], test_data=splits[1])

    # The same first step by hand: the first batch as the loop draws it, forward, backward, no clipping.
    x, y = next(DeviceLoader(splits[0], 16, device="cpu", train=True, augment=True, seed=spec.seed).epoch(0))
    reference.train()
    torch.nn.CrossEntropyLoss()(reference(x).float(), y).backward()
    true = torch.stack([la.weight.grad.norm() for la in tracked_layers(reference)])
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))

    recorded = torch.from_numpy(result.norms["weight"].values[0])
    torch.testing.assert_close(recorded, true, rtol=1e-4, atol=1e-7)
    assert float(total) > clip  # clipping did act on this step: the recorded norms are still the unclipped ones
    torch.testing.assert_close(float(result.norms["global"].values[0, 0]), float(total), rtol=1e-4, atol=1e-7)
