"""Shared fixtures: real CIFAR-10 subsets on disk, built from ``../shared/data/cifar10-jpeg.npz``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pgserver import PostgresServer, free_port, pg_bin

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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session, on loopback (see ``pgserver``). Skipped where PostgreSQL is not
    installed, unless ``DEEPGRAD_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it: CI never skips these silently)."""
    if pg_bin() is None:
        if os.environ.get("DEEPGRAD_REQUIRE_POSTGRES") == "1":
            pytest.fail("PostgreSQL is required (DEEPGRAD_REQUIRE_POSTGRES=1) but not installed")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    server = PostgresServer(free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store back-end in turn: a SQLite file, and a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("postgres_url")
