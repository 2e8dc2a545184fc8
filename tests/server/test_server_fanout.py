"""The event streams' fan-out: one store reader per followed job (and one for the job list), whatever the number
of streams. The app runs under uvicorn in this process (no worker), so the tests can count the hub's reads;
streams are read over bare sockets (or not read at all, as a stalled client), and a job's progress, norms and end
are written into its SQLite file as a job process writes them."""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import uvicorn
from live import TINY, TOKEN

from deepgrad_core.norms import NormBlock
from deepgrad_server import fanout, store
from deepgrad_server.app import create_app
from deepgrad_server.db import Database
from deepgrad_server.routes import events
from deepgrad_server.settings import Settings

LAYERS = ("conv1", "conv2")


class Served:
    def __init__(self, data_dir: Path) -> None:
        settings = Settings(data_dir=data_dir, token=TOKEN, worker=False)
        self.app = create_app(settings)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[sock])), daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        self.db = Database(settings.resolved_database_url)  # writes as a job process would
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)

    @property
    def hub(self) -> fanout.Hub:
        return self.app.state.fanout

    def submit(self) -> str:
        r = self.http.post("/jobs", json=TINY)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def write(self, job_id: str, **fields: Any) -> None:
        with self.db.writing() as s:
            store.update_job(s, job_id=job_id, **fields)

    def flush_norms(self, job_id: str, steps: range) -> None:
        block = NormBlock("weight", np.asarray(steps), LAYERS, np.ones((len(steps), len(LAYERS)), np.float32))
        with self.db.writing() as s:
            store.append_norms(s, job_id=job_id, block=block)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("fanout"))
    yield served
    served.http.close()
    served.server.should_exit = True
    served.thread.join(30)
    served.db.dispose()


class RawStream:
    """An event stream over a bare socket, read only when pumped (never, for a stalled client)."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                          "Accept: text/event-stream\r\n\r\n".encode())
        self.sock.setblocking(False)
        self.raw = self.body = b""
        self.status: int | None = None
        self.events: list[tuple[str, Any, float]] = []  # (name, data, when it arrived)
        self.comments = 0
        self.ended = False  # the server ended the stream

    def pump(self) -> None:
        try:
            while data := self.sock.recv(65536):
                self.raw += data
        except BlockingIOError:
            pass
        if self.status is None:
            if b"\r\n\r\n" not in self.raw:
                return
            head, self.raw = self.raw.split(b"\r\n\r\n", 1)
            self.status = int(head.split()[1])
            assert self.status == 200, head
        while True:  # chunked transfer encoding
            size, sep, rest = self.raw.partition(b"\r\n")
            if not sep or len(rest) < int(size, 16) + 2:
                break
            n = int(size, 16)
            self.body, self.raw = self.body + rest[:n], rest[n + 2:]
            self.ended = self.ended or n == 0
        while b"\n\n" in self.body:
            block, self.body = self.body.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if not line.startswith(":"))
            if "event" in fields:
                self.events.append((fields["event"], json.loads(fields["data"]), time.monotonic()))
            else:
                self.comments += 1

    @property
    def names(self) -> list[str]:
        return [e[0] for e in self.events]

    def close(self) -> None:
        self.sock.close()


def pump_until(streams: list[RawStream], done: Callable[[], bool], timeout: float = 10.0) -> None:
    with selectors.DefaultSelector() as sel:
        for stream in streams:
            sel.register(stream.sock, selectors.EVENT_READ, stream)
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, [s.names for s in streams[:3]]
            for key, _ in sel.select(0.05):
                key.data.pump()


def wait(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_fanout_one_reader_feeds_every_follower_the_same_events(served: Served) -> None:
    job_id, topic = served.submit(), None
    streams = [RawStream(served.port, f"/jobs/{job_id}/events") for _ in range(40)]
    try:
        pump_until(streams, lambda: all(s.events for s in streams))
        topic = f"job:{job_id}"
        assert served.hub.topics == {topic}
        before, t0 = served.hub.reads[topic], time.monotonic()
        pump_until(streams, lambda: time.monotonic() - t0 > 2.0)
        ticks = (time.monotonic() - t0) / served.hub.interval
        assert served.hub.reads[topic] - before <= ticks + 2  # one reader, not one per stream (40x as many)

        served.write(job_id, state="running", started_at=store.now())
        pump_until(streams, lambda: all(len(s.events) >= 2 for s in streams))
        served.write(job_id, progress={"epoch": 0, "epochs": 2, "step": 3, "total_steps": 8, "loss": 2.3,
                                       "updated_at": store.now()})
        served.flush_norms(job_id, range(0, 4))
        pump_until(streams, lambda: all("norms" in s.names for s in streams))
        with served.db.writing() as s:
            assert store.finish(s, job_id=job_id, state="succeeded", final={"test_acc": 0.5})
        pump_until(streams, lambda: all(s.ended for s in streams))
    finally:
        for stream in streams:
            stream.close()
    seen = [[(name, data) for name, data, _ in s.events] for s in streams]
    assert all(events == seen[0] for events in seen)  # the same events, in the same order
    names = [name for name, _ in seen[0]]
    assert names[:2] == ["state", "state"] and names[-1] == "end" and {"progress", "norms"} <= set(names)
    assert [d["state"] for n, d in seen[0] if n == "state"] == ["queued", "running", "succeeded"]
    assert dict(seen[0])["norms"] == {"weight": 3}
    assert dict(seen[0])["progress"]["step"] == 3 and dict(seen[0])["progress"]["state"] == "running"
    assert seen[0][-1][1]["state"] == "succeeded" and seen[0][-1][1]["final"] == {"test_acc": 0.5}
    wait(lambda: topic not in served.hub.topics)  # the streams ended: the reader stopped

    # A stream opened on the ended job: as before the fan-out (no norms: its end says all).
    late = RawStream(served.port, f"/jobs/{job_id}/events")
    pump_until([late], lambda: late.ended)
    assert late.names == ["state", "progress", "end"]


def test_fanout_reader_stops_when_the_last_follower_leaves(served: Served) -> None:
    job_id = served.submit()
    topic = f"job:{job_id}"
    streams = [RawStream(served.port, f"/jobs/{job_id}/events") for _ in range(3)]
    pump_until(streams, lambda: all(s.events for s in streams))
    for stream in streams[:2]:
        stream.close()
    time.sleep(0.5)
    assert topic in served.hub.topics
    streams[2].close()
    wait(lambda: topic not in served.hub.topics, timeout=2.0)
    reads = served.hub.reads[topic]
    time.sleep(3 * served.hub.interval)
    assert served.hub.reads[topic] == reads


def test_fanout_norms_reach_a_stream_within_two_seconds_of_a_flush(served: Served) -> None:
    job_id = served.submit()
    served.write(job_id, state="running", started_at=store.now())
    stream = RawStream(served.port, f"/jobs/{job_id}/events")
    stalled = RawStream(served.port, f"/jobs/{job_id}/events")  # never read
    try:
        pump_until([stream], lambda: stream.names == ["state"])
        for first in (0, 50, 100):
            flushed = time.monotonic()
            served.flush_norms(job_id, range(first, first + 50))
            pump_until([stream], lambda last=first + 49: stream.events[-1][:2] == ("norms", {"weight": last}))
            assert stream.events[-1][2] - flushed < 2.0
    finally:
        stream.close()
        stalled.close()


def test_fanout_stalled_follower_keeps_a_bounded_backlog_and_delays_no_one(served: Served) -> None:
    """Against the hub itself (a stalled socket would need megabytes of events to fill its buffers): one mailbox
    is never emptied while the job changes every tick; the other still gets every change at once."""
    job_id = served.submit()
    served.write(job_id, state="running")

    async def main() -> tuple[list[Any], list[Any]]:
        got: list[Any] = []
        async with fanout.Hub.running(served.db, interval=0.02) as hub:
            async with hub.follow_job(job_id) as stalled, hub.follow_job(job_id) as box:
                for step in range(1, 41):
                    progress = {"epoch": 0, "epochs": 1, "step": step, "total_steps": 40}
                    await anyio.to_thread.run_sync(partial(served.write, job_id, progress=progress))
                    with anyio.fail_after(2):
                        while not got or json.loads(got[-1].progress_json or "{}").get("step") != step:
                            got.extend(await box.take(1.0) or [])
                return got, await stalled.take(0)

    got, backlog = anyio.run(main)
    assert [json.loads(s.progress_json)["step"] for s in got if s.progress_json] == list(range(1, 41))
    assert len(backlog) == fanout.BACKLOG and json.loads(backlog[-1].progress_json)["step"] == 40


def test_fanout_a_deleted_job_ends_its_streams(served: Served) -> None:
    job_id = served.submit()
    stream = RawStream(served.port, f"/jobs/{job_id}/events")
    pump_until([stream], lambda: bool(stream.events))
    with served.db.writing() as s:
        store.delete_job(s, job_id=job_id)
    pump_until([stream], lambda: stream.ended)
    assert stream.names == ["state", "end"] and stream.events[-1][1] == {"id": job_id, "state": "deleted"}


def test_fanout_job_list_stream_is_quiet_until_a_job_changes(served: Served, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(events, "KEEPALIVE_S", 0.3)
    served.submit()
    streams = [RawStream(served.port, "/events?limit=2") for _ in range(5)]
    pump_until(streams, lambda: all(s.events for s in streams))
    first = streams[0].events[0][1]
    total = served.http.get("/jobs").json()["count"]
    assert streams[0].names == ["jobs"] and len(first["data"]) == 2 and first["count"] == total
    assert first["data"][0]["state"] == "queued" and first["deleted"] == []
    assert served.hub.topics >= {"jobs"}
    before, t0 = served.hub.reads["jobs"], time.monotonic()
    pump_until(streams, lambda: time.monotonic() - t0 > 1.5)
    assert all(s.names == ["jobs"] and s.comments >= 3 for s in streams)  # idle: keep-alives only
    assert served.hub.reads["jobs"] - before <= 1.5 / served.hub.interval + 2  # one reader for five streams

    job_id = served.submit()
    pump_until(streams, lambda: all(len(s.events) == 2 for s in streams))
    change = streams[0].events[-1][1]
    assert [j["id"] for j in change["data"]] == [job_id] and change["data"][0]["state"] == "queued"
    assert change["count"] == total + 1 and change["deleted"] == []
    assert served.http.post(f"/jobs/{job_id}/cancel").status_code == 202
    pump_until(streams, lambda: all(len(s.events) == 3 for s in streams))
    assert [(j["id"], j["state"]) for j in streams[0].events[-1][1]["data"]] == [(job_id, "cancelled")]
    assert served.http.delete(f"/jobs/{job_id}").status_code == 204  # an ended job: found by the count
    pump_until(streams, lambda: all(len(s.events) == 4 for s in streams))
    assert streams[0].events[-1][1] == {"data": [], "deleted": [job_id], "count": total}
    assert all([e[:2] for e in s.events] == [e[:2] for e in streams[0].events] for s in streams)
    for stream in streams:
        stream.close()
    wait(lambda: "jobs" not in served.hub.topics)


def test_fanout_job_list_stream_needs_the_token(served: Served) -> None:
    r = httpx.get(served.url + "/events", timeout=10)
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    assert served.http.get("/events", params={"limit": 0}).status_code == 422
    assert served.http.delete("/events").status_code == 405  # a path of its own: no job route answers for it


def test_fanout_readers_tell_only_what_changed(database_url: str) -> None:
    """The two readers against each store back-end: None while nothing changed, else the change."""
    db = Database(database_url)
    try:
        jobs = fanout.JobsReader()
        assert jobs.read(db) is None  # the first read: what later ones compare with
        with db.writing() as s:
            job_id = store.create_job(s, spec=TINY, name="a", idempotency_key=None, max_queued=10)[0].id
            other = store.create_job(s, spec=TINY, name="b", idempotency_key=None, max_queued=10)[0].id
        change = jobs.read(db)
        assert set(change.rows) == {job_id, other} and change.count == 2 and not change.deleted
        assert [json.loads(row)["name"] for _, row in sorted(change.rows.values(), reverse=True)] == ["b", "a"]
        assert jobs.read(db) is None

        one = fanout.JobReader(job_id)
        first = one.read(db)
        assert (first.state, first.progress, first.norms, first.end_json) == ("queued", None, {}, None)
        assert one.read(db) is None
        with db.writing() as s:
            store.update_job(s, job_id=job_id, state="running", progress={"epoch": 0, "epochs": 1, "step": 9,
                                                                          "total_steps": 9})
            store.append_norms(s, job_id=job_id, block=NormBlock("weight", np.arange(10), LAYERS,
                                                                 np.ones((10, 2), np.float32)))
            store.append_norms(s, job_id=job_id, block=NormBlock("weight", np.arange(10, 20), LAYERS,
                                                                 np.ones((10, 2), np.float32)))
        snap = one.read(db)
        assert (snap.state, snap.norms) == ("running", {"weight": 19})
        assert json.loads(snap.progress_json)["state"] == "running"
        assert set(jobs.read(db).rows) == {job_id}
        with db.writing() as s:
            assert store.finish(s, job_id=job_id, state="succeeded")
        assert json.loads(one.read(db).end_json)["state"] == "succeeded"
        assert json.loads(jobs.read(db).rows[job_id][1])["state"] == "succeeded"
        with db.writing() as s:
            store.delete_job(s, job_id=job_id)  # an ended job: only the count tells
        assert (jobs.read(db).deleted, jobs.read(db)) == (frozenset([job_id]), None)
        assert json.loads(one.read(db).end_json) == {"id": job_id, "state": "deleted"}
    finally:
        db.dispose()
