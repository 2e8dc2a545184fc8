"""``pre_migration.db``: a store made by DeepGrad before migrations (commit 6594f3a: ``create_all``, no revision),
written through that commit's store functions. ``tests/server/test_server_migrations.py`` upgrades copies of it
and reads them back against ``content()``.

Rebuild it with that commit's code, never today's (today's ``Database`` would migrate it)::

    git worktree add /tmp/dg-6594f3a 6594f3a
    PYTHONPATH=/tmp/dg-6594f3a/server:/tmp/dg-6594f3a .venv/bin/python tests/data/pre_migration.py \\
        tests/data/pre_migration.db
    git worktree remove /tmp/dg-6594f3a

Only store functions that exist at that commit are used here, so the tests can import ``content()`` today.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np

from deepgrad_core.histograms import BINS, HistBlock
from deepgrad_core.norms import NormBlock

LAYERS = ("conv1", "conv2", "fc1")
SPEC = {"arch": "vgg11", "dataset": "cifar10", "epochs": 2, "batch_size": 32, "lr": 0.01, "seed": 0}


def content() -> dict[str, Any]:
    """What the file holds, by job name: the same numbers on every call (seeded)."""
    rng = np.random.default_rng(6594)
    steps = np.arange(40, dtype=np.int64)
    sampled = steps[::5]
    hist_steps = np.array([0, 10, 20, 39], np.int64)
    counts = rng.integers(0, 50, (len(hist_steps), len(LAYERS), BINS)).astype(np.float32)
    return {
        "vgg11 baseline": {
            "state": "succeeded",
            "norms": {
                "weight": NormBlock("weight", steps, LAYERS, rng.random((40, 3), dtype=np.float32)),
                "activation": NormBlock("activation", sampled, LAYERS, rng.random((8, 3), dtype=np.float32)),
                "global": NormBlock("global", steps, ("global",), rng.random((40, 1), dtype=np.float32)),
            },
            "epochs": [{"epoch": e, "train_loss": 2.3 - e / 2, "test_acc": 0.1 + e / 10} for e in range(2)],
            "filters_init": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
            "filters": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
            "histograms": HistBlock(hist_steps, LAYERS, counts),
            "fields": {"steps_per_epoch": 20, "summary": {"vanishing": False}, "final": {"test_acc": 0.2},
                       "layer_means": {"weight": {"conv1": [0.5, 0.4]}}, "layers": list(LAYERS)},
        },
        "idempotent failed": {"state": "failed", "key": "key-1", "reason": "error", "message": "it broke"},
        "study": {"name": "depth", "base": SPEC, "grid": {"arch": ["vgg11", "vgg13"]},
                  "points": [{"arch": "vgg11"}, {"arch": "vgg13"}]},
    }


def fill(db: Any) -> None:
    """Write ``content()`` through the store (``db``: a ``deepgrad_server.db.Database``)."""
    from deepgrad_server import store

    c = content()
    with db.writing() as s:
        job, _ = store.create_job(s, spec=SPEC, name="vgg11 baseline", idempotency_key=None, max_queued=100)
        base = c["vgg11 baseline"]
        for block in base["norms"].values():  # two flushes per kind
            half = len(block) // 2
            for part in (slice(0, half), slice(half, None)):
                store.append_norms(s, job_id=job.id, block=NormBlock(block.kind, block.steps[part], block.layers,
                                                                     block.values[part]))
        for metrics in base["epochs"]:
            store.put_epoch(s, metrics=metrics, job_id=job.id)
        store.put_array(s, job_id=job.id, name="filters_init", array=base["filters_init"])
        hist = base["histograms"]
        for part in (slice(0, 2), slice(2, None)):
            store.append_histograms(s, job_id=job.id, block=HistBlock(hist.steps[part], hist.layers,
                                                                      hist.counts[part]))
        store.update_job(s, job_id=job.id, state="running", **base["fields"],
                         filters=store.encode_array(base["filters"]))
        store.finish(s, job_id=job.id, state="succeeded")

        failed = c["idempotent failed"]
        job, _ = store.create_job(s, spec=SPEC, name="idempotent failed", idempotency_key=failed["key"],
                                  max_queued=100)
        store.update_job(s, job_id=job.id, state="running")
        store.finish(s, job_id=job.id, state="failed", reason=failed["reason"], message=failed["message"])

        study = c["study"]
        store.create_study(s, name=study["name"], base=study["base"], grid=study["grid"], points=study["points"],
                           preset=None, max_queued=100,
                           jobs=[(p, {**SPEC, **p}, p["arch"]) for p in study["points"]])


def build(path: Path) -> None:
    from deepgrad_server.db import Database

    path.unlink(missing_ok=True)
    db = Database(f"sqlite:///{path}")
    fill(db)
    db.dispose()
    with sqlite3.connect(path) as conn:  # one self-contained, small file: no WAL beside it, no free pages
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("VACUUM")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
