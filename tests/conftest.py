"""Shared fixtures: real CIFAR-10 subsets on disk, built from ``../shared/data/cifar10-jpeg.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TRAIN_PER_CLASS = 100
CIFAR10_TEST_PER_CLASS = 20


def cifar10_npz_path() -> Path | None:
    """``$DEEPGRAD_CIFAR10_NPZ``, else ``cifar10-jpeg.npz`` in ``../shared/data`` or ``shared/data``."""
    env = os.environ.get("DEEPGRAD_CIFAR10_NPZ")
    candidates = [Path(env)] if env else []
    candidates += [base / "shared" / "data" / "cifar10-jpeg.npz" for base in (REPO.parent, REPO)]
    return next((p for p in candidates if p.is_file()), None)


def write_cifar10_imagefolder(npz: Path, out: Path, per_class: dict[str, int], seed: int = 0) -> None:
    """Write ``out/{split}/<class>/NNNN.jpg`` with seeded random images per class, JPEG bytes as stored.

    The npz is grouped by class (all airplanes first), so a subset is drawn per class, never the first N.
    """
    with np.load(npz) as pack:
        classes = [str(c) for c in pack["classes"]]
        for split, count in per_class.items():
            jpeg, offsets, labels = pack[f"{split}_jpeg"], pack[f"{split}_offsets"], pack[f"{split}_labels"]
            rng = np.random.default_rng([seed, int(split == "test")])
            for label, name in enumerate(classes):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                picked = np.sort(rng.choice(np.flatnonzero(labels == label), count, replace=False))
                for i in picked:
                    (folder / f"{i:05d}.jpg").write_bytes(jpeg[offsets[i]:offsets[i + 1]].tobytes())


@pytest.fixture(scope="session")
def cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding real CIFAR-10 JPEGs in ``<root>/cifar10/{train,test}/<class>/*.jpg``.

    100 train and 20 test images per class; pass it as ``root=`` to ``deepgrad_core.data.load_split``.
    Shared by the session: copy it before changing files (loading writes ``<root>/.cache``).
    """
    npz = cifar10_npz_path()
    if npz is None:
        pytest.skip("cifar10-jpeg.npz not found (looked in ../shared/data and shared/data; "
                    "set DEEPGRAD_CIFAR10_NPZ to its path)")
    root = tmp_path_factory.mktemp("data")
    write_cifar10_imagefolder(npz, root / "cifar10",
                              {"train": CIFAR10_TRAIN_PER_CLASS, "test": CIFAR10_TEST_PER_CLASS})
    return root
