"""The store on a real SQLite file: block storage, downsampling, resume truncation, the queue."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from deepgrad_core.norms import NormBlock
from deepgrad_core.series import downsample
from deepgrad_server import store
from deepgrad_server.db import Database

LAYERS = ("conv1", "conv2", "conv3")


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    yield database
    database.dispose()


def make_job(db: Database, name: str = "j", spe: int | None = 10) -> str:
    with db.writing() as s:
        job, _ = store.create_job(s, spec={"seed": 0}, name=name, idempotency_key=None, max_queued=100)
        store.update_job(s, job_id=job.id, steps_per_epoch=spe)
    return job.id


def block(first: int, n: int, kind: str = "weight") -> NormBlock:
    steps = np.arange(first, first + n)
    values = (steps[:, None] * 10 + np.arange(len(LAYERS))).astype(np.float32)
    return NormBlock(kind, steps, LAYERS, values)


def test_blocks_round_trip_and_range(db: Database) -> None:
    job_id = make_job(db)
    with db.writing() as s:
        for first in range(0, 100, 25):
            store.append_norms(s, job_id=job_id, block=block(first, 25))
    with db.reading() as s:
        whole = store.load_norms(s, job_id=job_id, kind="weight")
        part = store.load_norms(s, job_id=job_id, kind="weight", start=20, end=30)
        assert store.load_norms(s, job_id=job_id, kind="activation") is None
    assert whole.layers == LAYERS and whole.steps.tolist() == list(range(100))
    np.testing.assert_array_equal(whole.values, block(0, 100).values)
    assert part.steps.tolist() == list(range(20, 30))


def test_truncate_splits_a_straddling_block_and_drops_epochs(db: Database) -> None:
    job_id = make_job(db, spe=10)
    with db.writing() as s:
        store.append_norms(s, job_id=job_id, block=block(0, 25))
        store.append_norms(s, job_id=job_id, block=block(25, 25))
        for epoch in range(5):
            store.put_epoch(s, job_id=job_id, metrics={"epoch": epoch})
        store.truncate_from(s, job_id=job_id, step=20)
    with db.reading() as s:
        assert store.load_norms(s, job_id=job_id, kind="weight").steps.tolist() == list(range(20))
        assert [m["epoch"] for m in store.epochs(s, job_id=job_id)] == [0, 1]


def test_downsample_keeps_extremes_and_nonfinite() -> None:
    steps = np.arange(10_000)
    values = np.sin(steps / 300.0)[:, None].repeat(2, axis=1).astype(np.float32)
    values[1234, 0] = 50.0  # a spike
    values[7000, 1] = np.nan  # divergence
    out_steps, out = downsample(steps, values, 500)
    assert len(out_steps) <= 500 and np.all(np.diff(out_steps) > 0)
    assert out[:, 0].max() == 50.0 and np.nanmin(out[:, 0]) == values[:, 0].min()
    assert np.isnan(out[:, 1]).sum() == 1
    same_steps, same = downsample(steps[:100], values[:100], 500)
    assert same_steps is steps[:100] or np.array_equal(same_steps, steps[:100])


def test_downsample_uneven_last_bucket() -> None:
    steps = np.arange(101)
    values = np.arange(101, dtype=np.float32)[:, None]
    out_steps, out = downsample(steps, values, 10)
    assert out_steps[0] == 0 and out_steps[-1] == 100 and out[-1, 0] == 100.0 and len(out_steps) <= 10


def test_claim_takes_oldest_and_never_twice(db: Database) -> None:
    ids = [make_job(db, name=f"j{i}") for i in range(3)]
    with db.writing() as s:
        first = store.claim_next(s, owner="a", lease_seconds=10)
    with db.writing() as s:
        second = store.claim_next(s, owner="b", lease_seconds=10)
    assert [first.id, second.id] == ids[:2] and first.attempts == 1 and first.lease_owner == "a"


def _claim_all(url: str, owner: str, out: multiprocessing.Queue) -> None:
    db = Database(url)
    taken = []
    while True:
        with db.writing() as s:
            job = store.claim_next(s, owner=owner, lease_seconds=10)
        if job is None:
            break
        taken.append(job.id)
    out.put(taken)


def test_concurrent_workers_claim_each_job_once(db: Database) -> None:
    ids = {make_job(db, name=f"j{i}") for i in range(60)}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db.url, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    taken = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    flat = [j for part in taken for j in part]
    assert sorted(flat) == sorted(ids)  # every job once, none twice


def test_requeue_until_retry_limit(db: Database) -> None:
    job_id = make_job(db)
    states = []
    for _ in range(3):
        with db.writing() as s:
            store.claim_next(s, owner="w", lease_seconds=10)
            states.append(store.requeue_or_fail(s, job_id=job_id, max_retries=2, why="killed"))
    assert states == ["queued", "queued", "failed"]
    with db.reading() as s:
        job = store.get_job(s, job_id=job_id)
    assert job.reason == "worker_lost" and "3 attempts" in job.message


def test_histograms_round_trip_select_steps_and_truncate_on_resume(db: Database) -> None:
    from deepgrad_core.histograms import BINS, HistBlock

    job_id = make_job(db)
    rng = np.random.default_rng(0)

    def hist(steps: list[int]) -> HistBlock:
        return HistBlock(np.array(steps, np.int64), ("a", "b"), rng.random((len(steps), 2, BINS)).astype(np.float32))

    first, second = hist([0, 5, 10]), hist([15, 20])
    with db.writing() as s:
        store.append_histograms(s, job_id=job_id, block=first)
        store.append_histograms(s, job_id=job_id, block=second)
    with db.reading() as s:
        assert store.histogram_steps(s, job_id=job_id).tolist() == [0, 5, 10, 15, 20]
        whole = store.load_histograms(s, job_id=job_id)
        assert whole.layers == ("a", "b") and np.array_equal(whole.counts[3:], second.counts)
        picked = store.load_histograms(s, job_id=job_id, steps=[5, 20])
        assert picked.steps.tolist() == [5, 20] and np.array_equal(picked.counts[0], first.counts[1])
        assert store.load_histograms(s, job_id=job_id, steps=[7]) is None
    with db.writing() as s:
        store.truncate_from(s, job_id=job_id, step=10)  # a resumed run replays from step 10
    with db.reading() as s:
        assert store.histogram_steps(s, job_id=job_id).tolist() == [0, 5]
        assert np.array_equal(store.load_histograms(s, job_id=job_id).counts, first.counts[:2])
    with db.writing() as s:
        store.delete_job(s, job_id=job_id)
    with db.reading() as s:
        assert store.load_histograms(s, job_id=job_id) is None
