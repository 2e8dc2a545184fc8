"""The store on each back-end (a real SQLite file, a real PostgreSQL): block storage, downsampling, resume
truncation, the queue and its claims under concurrency, and the values PostgreSQL refuses where SQLite does not."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from deepgrad_core.histograms import BINS, HistBlock
from deepgrad_core.norms import NormBlock
from deepgrad_core.series import downsample
from deepgrad_server import store
from deepgrad_server.db import Database
from deepgrad_server.models import Job

LAYERS = ("conv1", "conv2", "conv3")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.dispose()


def make_job(db: Database, name: str = "j", spe: int | None = 10) -> str:
    with db.writing() as s:
        job, _ = store.create_job(s, spec={"seed": 0}, name=name, idempotency_key=None, max_queued=1000)
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


def _claim_all(db: Database, owner: str) -> tuple[str, list[str]]:
    """Claim until the queue is empty: ``owner`` and the ids it took."""
    taken = []
    while True:
        with db.writing() as s:
            job = store.claim_next(s, owner=owner, lease_seconds=10)
        if job is None:
            return owner, taken
        assert (job.state, job.lease_owner) == ("running", owner)
        taken.append(job.id)


def _claim_in_process(url: str, owner: str, out: multiprocessing.Queue) -> None:
    db = Database(url)
    out.put(_claim_all(db, owner))
    db.dispose()


def _assert_each_claimed_once(db: Database, ids: set[str], claims: list[tuple[str, list[str]]]) -> None:
    flat = [job_id for _, taken in claims for job_id in taken]
    assert len(flat) == len(set(flat)) and set(flat) == ids  # every job once, none twice
    owner_of = {job_id: owner for owner, taken in claims for job_id in taken}
    with db.reading() as s:
        jobs, _ = store.list_jobs(s, limit=500)
    assert {j.id: (j.state, j.attempts, j.lease_owner) for j in jobs} == {j: ("running", 1, owner_of[j]) for j in ids}


def test_concurrent_processes_claim_each_job_once(db: Database) -> None:
    ids = {make_job(db, name=f"j{i}") for i in range(60)}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(db.url, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    claims = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    _assert_each_claimed_once(db, ids, claims)


def _threads(*targets: tuple) -> list:
    """Run ``(function, *args)`` each in a thread of its own; their results, in order."""
    results: list = [None] * len(targets)

    def run(i: int, fn: Any, *args: Any) -> None:
        results[i] = fn(*args)

    threads = [threading.Thread(target=run, args=(i, *target)) for i, target in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_concurrent_threads_claim_each_job_once(db: Database) -> None:
    ids = {make_job(db, name=f"j{i}") for i in range(200)}
    claims = _threads(*((_claim_all, db, f"t{i}") for i in range(8)))
    _assert_each_claimed_once(db, ids, claims)


def test_cancel_racing_claims_never_cancels_a_claimed_job(db: Database) -> None:
    """A cancel reads the job's state, then writes: on PostgreSQL it must lock the row, or a job a worker has
    just claimed is marked cancelled while it runs."""
    ids = [make_job(db, name=f"j{i}") for i in range(120)]

    def cancel(part: list[str]) -> None:
        for job_id in part:
            with db.writing() as s:
                store.request_cancel(s, job_id=job_id)

    results = _threads(*((_claim_all, db, f"t{i}") for i in range(3)), *((cancel, ids[i::3]) for i in range(3)))
    claimed = {job_id for _, taken in results[:3] for job_id in taken}
    with db.reading() as s:
        jobs = {j.id: j for j in store.list_jobs(s, limit=500)[0]}
    for job_id, job in jobs.items():
        if job_id in claimed:  # claimed before its cancel: running, flagged for its worker to stop
            assert (job.state, job.attempts, job.cancel_requested) == ("running", 1, True), job_id
        else:
            assert (job.state, job.attempts, job.message) == ("cancelled", 0, "cancelled while queued"), job_id


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


def test_concurrent_submissions_keep_keys_and_the_queue_bound(db: Database) -> None:
    """Many submitters at once: one job per idempotency key, and never more queued than ``max_queued`` (PostgreSQL
    runs their transactions side by side: counting then inserting must not race)."""
    def submit(key: str | None, name: str) -> str:
        try:
            with db.writing() as s:
                job, _ = store.create_job(s, spec={"seed": 1}, name=name, idempotency_key=key, max_queued=12)
            return job.id
        except store.QueueFull:
            return "full"

    same_key = _threads(*((submit, "k-1", "same") for _ in range(8)))
    assert len(set(same_key)) == 1 and "full" not in same_key
    others = _threads(*((submit, None, f"n{i}") for i in range(16)))
    assert sorted(others).count("full") == 16 - 11  # 11 places left of 12
    with db.reading() as s:
        assert store.queue_counts(s) == {"queued": 12}


def test_ids_drawn_again_after_a_collision_keep_the_transaction(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """A colliding id fails one INSERT: inside a savepoint, or PostgreSQL aborts the whole transaction."""
    ids = iter(["a" * 12, "a" * 12, "b" * 12, "c" * 12, "d" * 12, "c" * 12, "e" * 12, "d" * 12, "f" * 12])
    monkeypatch.setattr(store, "new_id", lambda: next(ids))
    with db.writing() as s:
        first, _ = store.create_job(s, spec={}, name="first", idempotency_key=None, max_queued=10)
        second, _ = store.create_job(s, spec={}, name="second", idempotency_key=None, max_queued=10)
        one = store.create_study(s, name="one", base={}, grid=None, points=[{}], preset=None,
                                 jobs=[({}, {}, "base")], max_queued=10)
        two = store.create_study(s, name="two", base={}, grid=None, points=[{}], preset=None,
                                 jobs=[({}, {}, "base")], max_queued=10)
    assert (first.id, second.id, one.id, two.id) == ("a" * 12, "b" * 12, "c" * 12, "e" * 12)
    with db.reading() as s:
        assert [j.id for j in store.list_jobs(s)[0]] == ["f" * 12, "d" * 12, "b" * 12, "a" * 12]
        assert [job.name for _, job in store.study_jobs(s, study_id=two.id)] == ["two/1 base"]


def test_lost_idempotency_race_returns_the_winner(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process inserts the same key between our check and our INSERT: the unique constraint fails our
    INSERT (in a savepoint), and the winner's job comes back, the transaction still usable."""
    check = store._check_queue

    def winner_gets_in(s, **kwargs) -> None:  # noqa: ANN001 (a Session)
        monkeypatch.setattr(store, "_check_queue", check)
        s.add(Job(id="f" * 12, name="n", state="queued", spec={"seed": 1}, idempotency_key="k", created_at=0.0,
                  attempts=0, cancel_requested=False))
        s.flush()
        check(s, **kwargs)

    monkeypatch.setattr(store, "_check_queue", winner_gets_in)
    with db.writing() as s:
        job, created = store.create_job(s, spec={"seed": 1}, name="n", idempotency_key="k", max_queued=10)
        other, _ = store.create_job(s, spec={"seed": 2}, name="m", idempotency_key=None, max_queued=10)
    assert (job.id, created) == ("f" * 12, False)
    with db.reading() as s:
        assert store.list_jobs(s)[1] == 2
    with db.writing() as s, pytest.raises(store.IdempotencyConflict):
        store.create_job(s, spec={"seed": 3}, name="n", idempotency_key="k", max_queued=10)


def test_text_is_fitted_alike_on_every_backend(db: Database) -> None:
    """What PostgreSQL refuses and SQLite keeps: text over its column's length, NUL; what no driver encodes: lone
    surrogates (an exception's message about a file name that is not UTF-8). Stored the same way on both."""
    with db.writing() as s:
        job, _ = store.create_job(s, spec={"note": "a\x00b"}, name="n\x00" + "x" * 150, idempotency_key=None,
                                  max_queued=10)
        other, _ = store.create_job(s, spec={}, name="o", idempotency_key=None, max_queued=10)
        store.claim_next(s, owner="w", lease_seconds=10)
        store.update_job(s, job_id=other.id, message="bad \udcff name")
        store.finish(s, job_id=job.id, state="failed", reason="r" * 40, message="Error: " + "\x00" * 3000)
        study = store.create_study(s, name="s" * 120, base={}, grid=None, points=[{}], preset="p" * 40,
                                   jobs=[({}, {}, "v" * 200)], max_queued=10)
    with pytest.raises(ValueError, match="idempotency key"), db.writing() as s:  # keys are never cut: refused
        store.create_job(s, spec={}, name="k", idempotency_key="k" * 201, max_queued=10)
    with pytest.raises(ValueError, match="lease owner"), db.writing() as s:
        store.claim_next(s, owner="w\x00", lease_seconds=10)
    with db.reading() as s:
        job, other = store.get_job(s, job_id=job.id), store.get_job(s, job_id=other.id)
        study, (_, study_job) = store.get_study(s, study_id=study.id), store.study_jobs(s, study_id=study.id)[0]
    assert job.name == "n\ufffd" + "x" * 97 + "\u2026" and job.spec == {"note": "a\x00b"}  # JSON escapes NUL
    assert job.reason == "r" * 31 + "\u2026" and job.message == "Error: " + "\ufffd" * 1992 + "\u2026"
    assert other.message == "bad \ufffd name"
    assert (len(study.name), len(study.preset), len(study_job.name)) == (100, 32, 100)


def test_step_bounds_beyond_int32(db: Database) -> None:
    """Steps are int64 and the API takes bounds up to 2**62: compared with the INTEGER step columns they must not
    overflow (psycopg would bind them as INTEGER)."""
    job_id = make_job(db)
    far = [2**31, 2**40, 2**62]
    with db.writing() as s:
        store.append_norms(s, job_id=job_id, block=block(0, 10))
        store.append_histograms(s, job_id=job_id, block=HistBlock(np.arange(3), ("a",), np.ones((3, 1, BINS),
                                                                                                 np.float32)))
        for step in far:
            store.truncate_from(s, job_id=job_id, step=step)  # keeps everything
    with db.reading() as s:
        for step in far:
            assert store.series_extent(s, job_id=job_id, kind="weight", start=step, end=2**62).rows == 0
            assert store.series_extent(s, job_id=job_id, kind="weight", start=5, end=step).rows == 5
            assert store.load_norms(s, job_id=job_id, kind="weight", start=step).steps.tolist() == []
            assert store.load_norms(s, job_id=job_id, kind="weight", end=step).steps.tolist() == list(range(10))
            assert store.load_histograms(s, job_id=job_id, steps=[2, step]).steps.tolist() == [2]
        assert store.list_jobs(s, offset=2**62) == ([], 1)


def test_name_filter_matches_the_same_on_every_backend(db: Database) -> None:
    """A substring, ASCII case ignored (SQLite's LIKE ignores it, PostgreSQL's does not), wildcards literal."""
    for name in ("VGG-deep", "a%b", "a_b", "a\\b", "axb"):
        make_job(db, name=name)
    with db.reading() as s:
        found = {q: sorted(j.name for j in store.list_jobs(s, name=q)[0]) for q in ("vgg", "Deep", "%", "_", "\\",
                                                                                    "a_")}
    assert found == {"vgg": ["VGG-deep"], "Deep": ["VGG-deep"], "%": ["a%b"], "_": ["a_b"], "\\": ["a\\b"],
                     "a_": ["a_b"]}


def test_a_run_writes_only_while_it_holds_the_job(db: Database) -> None:
    """Fencing: each claim gives the job a new run token; a process of an earlier run (cut off from its worker,
    still training) can never write into the run that replaced it, nor finish it."""
    job_id = make_job(db)
    with db.writing() as s:
        assert store.claim_next(s, owner="w1", lease_seconds=60, run_token="run-1").run_token == "run-1"
    with db.writing() as s:
        store.hold(s, job_id=job_id, run_token="run-1")
        store.append_norms(s, job_id=job_id, block=block(0, 5))
    with db.writing() as s:  # its worker is taken as lost: requeued, claimed again by another
        assert store.requeue_or_fail(s, job_id=job_id, max_retries=5, why="lost") == "queued"
    with db.writing() as s:
        assert store.claim_next(s, owner="w2", lease_seconds=60, run_token="run-2").run_token == "run-2"
    with pytest.raises(store.Superseded, match="running as another run"), db.writing() as s:
        store.hold(s, job_id=job_id, run_token="run-1")
        store.append_norms(s, job_id=job_id, block=block(5, 5))  # never reached
    with pytest.raises(store.Superseded), db.writing() as s:
        store.hold(s, job_id=job_id, run_token="run-1")
        store.finish(s, job_id=job_id, state="failed", reason="error")
    with db.reading() as s:
        assert store.load_norms(s, job_id=job_id, kind="weight").steps.tolist() == list(range(5))
        assert store.get_job(s, job_id=job_id).state == "running"
    with db.writing() as s:
        store.hold(s, job_id=job_id, run_token="run-2")
        store.finish(s, job_id=job_id, state="succeeded")
    with pytest.raises(store.Superseded, match="succeeded"), db.writing() as s:
        store.hold(s, job_id=job_id, run_token="run-2")  # a finished job takes no more writes
