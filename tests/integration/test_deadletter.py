"""Hostile input with real workers: a bad message is dead-lettered, the worker keeps serving.

Before ``workers.transport``, each of these ended the worker (``Unrecoverable error``):
a queue item that is not JSON, a kombu envelope whose body is not base64, and a body that is
not the ``(args, kwargs, embed)`` triple, which also went back on the queue and stopped the
next worker too. Here every shape pushed into ``buddy.agent.a1`` ends up in
``buddy:deadletter`` with its reason, is gone from the queue and from kombu's unacked
bookkeeping, is not redelivered after the visibility timeout, and the same worker processes
go on to run a batch and a live campaign. The same for a broadcast on Celery's control
channel that is not a kombu message, and over ``redis://`` (the module fleet is on a unix
socket, ``redis+socket://``).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import EXECUTE_TASK, make_celery, redis_client
from buddy.models import AgentSpec, TaskSpec
from buddy.state import deadletter
from buddy.state.keys import Keys
from buddy.state.store import Store
from tests.helpers import buddy, free_port, start_redis, wait_for_workers

pytestmark = pytest.mark.integration

QUEUE = "buddy.agent.a1"
#: A queue no worker reads: real envelopes are sent here, popped and tampered with.
CAPTURE = "buddy.capture"
VISIBILITY_TIMEOUT_S = 10  # the least Buddy accepts; kombu sweeps for expired ones every 1 s
ENV = {
    "BUDDY_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    "BUDDY_TOOLS": "",
    "BUDDY_HEARTBEAT_STALE_S": "6",
}


def _wait(predicate: Callable[[], object], timeout_s: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _log(fleet: LocalFleet) -> str:
    assert fleet.log_dir is not None
    return "".join(p.read_text(errors="replace") for p in sorted(fleet.log_dir.glob("*.log")))


@pytest.fixture(scope="module")
def dl_fleet(fleet_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """Two worker processes for agent a1 (one pool child each) on the module's unix-socket Redis."""
    f = LocalFleet(
        fleet_redis.url,
        [AgentSpec(id="a1", concurrency=1)],
        workers_per_agent=2,
        env=ENV,
        log_dir=tmp_path_factory.mktemp("deadletter-worker-logs"),
    )
    f.start()
    try:
        wait_for_workers(fleet_redis.url, ["a1"], timeout_s=90)
        yield f
    finally:
        f.stop()


def _batch(cid: str, path: Path, content: str = "ran\n") -> dict[str, Any]:
    item = {"task_id": "write", "tool": "file.write", "args": {"path": str(path), "content": content}}
    return {"campaign_id": cid, "wave": 1, "agent_id": "a1", "items": [{**item, "mode": "live"}]}


def _envelope(sender: Celery, r: Any, **send: Any) -> dict[str, Any]:
    """A real kombu envelope of a task message (sent to a queue nobody reads and popped back)."""
    send.setdefault("kwargs", {})
    sender.send_task(send.pop("name", EXECUTE_TASK), queue=CAPTURE, **send)
    raw = r.rpop(CAPTURE)
    assert raw is not None
    env: dict[str, Any] = json.loads(raw)
    return env


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _records(r: Any) -> list[deadletter.DeadLetter]:
    return deadletter.list_(r, 100_000)


def _assert_serving(fleet: LocalFleet, store: Store, sender: Celery, tmp_path: Path, pids: list[int]) -> None:
    """The same worker processes are alive, and a real batch still runs on them."""
    assert [p.pid for p in fleet.alive()] == pids, "a worker process exited"
    assert "Unrecoverable error" not in _log(fleet)
    target = tmp_path / f"serving-{uuid.uuid4().hex[:6]}.txt"
    cid = f"serving-{uuid.uuid4().hex[:8]}"
    batch = _batch(cid, target)
    store.create_campaign(cid, {"status": "running"})  # what a coordinator records before it sends
    store.record_dispatch(
        cid, 1, [TaskSpec.model_validate(i).model_dump(mode="json") for i in batch["items"]]
    )
    sender.send_task(EXECUTE_TASK, kwargs=batch, queue=QUEUE)
    _wait(lambda: store.outcomes(cid).get("write") is not None, what="a good batch to run after the bad ones")
    assert store.outcomes(cid)["write"].status.value == "succeeded"
    assert target.read_text() == "ran\n"


def test_every_bad_shape_is_dead_lettered_acked_and_never_redelivered(
    fleet_redis: EmbeddedRedis, dl_fleet: LocalFleet, tmp_path: Path
) -> None:
    url = fleet_redis.url
    store = Store(redis_client(url))
    r = store.r
    sender = make_celery(url)
    pids = [p.pid for p in dl_fleet.alive()]
    assert len(pids) == 2
    before = Counter(d.reason for d in _records(r))

    # the transport layer: what kombu's Redis channel could not decode or deliver
    raw_items: list[tuple[str, str | bytes]] = [
        (deadletter.UNDECODABLE, "not json"),
        (deadletter.UNDECODABLE, ""),
        (deadletter.UNDECODABLE, b"\xff\xfe not utf-8"),
        (deadletter.BAD_ENVELOPE, "42"),  # JSON, but not an envelope: kombu would raise TypeError
        (deadletter.BAD_ENVELOPE, json.dumps(["a", "list"])),
        (deadletter.BAD_ENVELOPE, json.dumps({"body": "e30=", "headers": {}})),  # no properties
    ]
    bad_b64 = _envelope(sender, r, kwargs=_batch("b64", tmp_path / "never.txt"))
    bad_b64["body"] = "abc"  # not base64 (kombu: binascii.Error, Incorrect padding)
    raw_items.append((deadletter.BAD_ENVELOPE, json.dumps(bad_b64)))
    not_triple = _envelope(sender, r)
    not_triple["body"] = _b64(b'["a"]')  # Celery: not enough values to unpack (expected 3, got 1)
    raw_items.append((deadletter.BAD_MESSAGE, json.dumps(not_triple)))
    # Celery's consumer hooks: decodable envelopes Celery refuses
    bad_json = _envelope(sender, r)
    bad_json["body"] = _b64(b"{not json")
    raw_items.append((deadletter.DECODE_ERROR, json.dumps(bad_json)))
    no_task = _envelope(sender, r)
    no_task["headers"] = {}
    no_task["body"] = _b64(json.dumps({"no": "task name"}).encode())
    raw_items.append((deadletter.UNKNOWN_MESSAGE, json.dumps(no_task)))
    unknown = _envelope(sender, r, name="buddy.no_such_task")
    raw_items.append((deadletter.UNKNOWN_TASK, json.dumps(unknown)))
    pickled = _envelope(sender, r, kwargs=_batch("pickled", tmp_path / "pickled.txt"), serializer="pickle")
    raw_items.append((deadletter.INVALID_TASK, json.dumps(pickled)))
    # the task layer: a well-formed execute_batch whose kwargs are not Buddy's models
    cid_bad = f"badkw-{uuid.uuid4().hex[:8]}"
    bad_kwargs = {"campaign_id": cid_bad, "wave": 1, "agent_id": "a1", "items": ["not a TaskSpec", 3]}

    for _, item in raw_items:
        r.lpush(QUEUE, item)
    res = sender.send_task(EXECUTE_TASK, kwargs=bad_kwargs, queue=QUEUE)
    expected = Counter(reason for reason, _ in raw_items) + Counter({deadletter.INVALID_KWARGS: 1})

    def new_reasons() -> Counter[str]:
        return Counter(d.reason for d in _records(r)) - before

    _wait(
        lambda: new_reasons() == expected, what=f"dead letters {dict(expected)}, have {dict(new_reasons())}"
    )
    assert r.llen(QUEUE) == 0
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0, "a refused message is still unacked"
    assert res.get(timeout=30) == [], "an invalid batch returns no statuses instead of raising"
    assert not (tmp_path / "never.txt").exists() and not (tmp_path / "pickled.txt").exists()
    assert list(r.scan_iter(match=f"{Keys.campaign(cid_bad)}*")) == [], "the invalid batch wrote state"

    records = _records(r)
    by_reason: dict[str, list[deadletter.DeadLetter]] = {}
    for d in records:
        by_reason.setdefault(d.reason, []).append(d)
    [kw] = by_reason[deadletter.INVALID_KWARGS]
    assert kw.campaign_id == cid_bad and kw.task_name == EXECUTE_TASK and "not a TaskSpec" in kw.payload
    assert "items.0" in kw.detail
    [triple] = by_reason[deadletter.BAD_MESSAGE]
    assert not_triple["headers"]["id"] in triple.payload and "ValueError" in triple.detail
    assert triple.task_name == EXECUTE_TASK
    assert any(d.payload == "not json" and "JSONDecodeError" in d.detail for d in records)
    assert any(d.payload == "\\xff\\xfe not utf-8" for d in records)
    assert any("Incorrect padding" in d.detail for d in by_reason[deadletter.BAD_ENVELOPE])
    assert "ContentDisallowed" in by_reason[deadletter.INVALID_TASK][0].detail
    worker_names = {d.worker for d in records}
    assert all(w.startswith("a1-") and "@" in w for w in worker_names), worker_names
    assert {d.queue for d in records} == {QUEUE}
    assert "dead-lettered a message from queue buddy.agent.a1" in _log(dl_fleet)  # WARNING lines

    # past the visibility timeout (and kombu's 1 s sweep) nothing comes back
    time.sleep(VISIBILITY_TIMEOUT_S + 3)
    assert new_reasons() == expected, "a refused message was redelivered and refused again"
    assert r.llen(QUEUE) == 0 and r.hlen("unacked") == 0
    _assert_serving(dl_fleet, store, sender, tmp_path, pids)


def test_a_bad_broadcast_on_the_control_channel_is_dead_lettered(
    fleet_redis: EmbeddedRedis, dl_fleet: LocalFleet, tmp_path: Path
) -> None:
    """``PUBLISH /0.celery.pidbox '[1]'`` stopped every worker at once (kombu's pub/sub read)."""
    url = fleet_redis.url
    store = Store(redis_client(url))
    r = store.r
    sender = make_celery(url)
    pids = [p.pid for p in dl_fleet.alive()]
    channel = "/0.celery.pidbox"  # kombu's fanout topic for Celery's broadcast mailbox, db 0
    marker = uuid.uuid4().hex
    receivers = r.publish(channel, json.dumps([marker]))
    assert receivers == 2, "both workers listen on the broadcast channel"
    r.publish(channel, json.dumps({"no": "properties", "marker": marker}))

    def mine() -> list[deadletter.DeadLetter]:
        return [d for d in _records(r) if marker in d.payload]

    _wait(lambda: len(mine()) == 4, what="each worker to dead-letter both broadcasts")
    assert {d.reason for d in mine()} == {deadletter.BAD_ENVELOPE} and {d.queue for d in mine()} == {channel}
    replies = sender.control.ping(timeout=5)
    assert len(replies) == 2, f"the control channel still works: {replies}"
    _assert_serving(dl_fleet, store, sender, tmp_path, pids)


def test_a_live_campaign_runs_after_hostile_messages(
    fleet_redis: EmbeddedRedis, dl_fleet: LocalFleet, tmp_path: Path
) -> None:
    """The finding: after a poison message the next live campaign aborted (no live worker)."""
    url = fleet_redis.url
    r = redis_client(url)
    sender = make_celery(url)
    poison = _envelope(sender, r)
    poison["body"] = _b64(b'["a"]')
    for item in ("not json", "", "42", json.dumps(poison)):
        r.lpush(QUEUE, item)
    _wait(lambda: r.llen(QUEUE) == 0, what="the poison to leave the queue")
    _wait(lambda: r.hlen("unacked") == 0, what="the poison to leave the unacked hash")
    plan = tmp_path / "plan.jsonl"
    rows = [
        {"task_id": "w", "tool": "file.write", "args": {"path": str(tmp_path / "live.txt"), "content": "x"}},
        {"task_id": "n", "tool": "noop", "depends_on": ["w"]},
    ]
    plan.write_text("".join(json.dumps({"confidence": 0.99, **row}) + "\n" for row in rows))
    res = buddy(
        "run", str(plan), "--agents", "a1", "--redis-url", url, "--out", str(tmp_path / "out"),
        "--mode", "live", "--no-progress", "--worker-wait", "30", env=ENV,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "live.txt").read_text() == "x"
    assert len(dl_fleet.alive()) == 2


def test_cli_and_metrics_show_the_dead_letters(fleet_redis: EmbeddedRedis, dl_fleet: LocalFleet) -> None:
    from prometheus_client import CollectorRegistry

    from buddy.infra.prometheus import FleetCollector

    url = fleet_redis.url
    r = redis_client(url)
    marker = f"cli-{uuid.uuid4().hex}"
    r.lpush(QUEUE, f"not json {marker}")
    _wait(lambda: any(marker in d.payload for d in deadletter.list_(r, 20)), what="the record")

    listed = buddy("deadletter", "list", "--json", "--limit", "5", "--redis-url", url)
    assert listed.returncode == 0, listed.stderr
    newest = deadletter.DeadLetter.model_validate_json(listed.stdout.splitlines()[0])
    assert newest.reason == deadletter.UNDECODABLE and marker in newest.payload and newest.queue == QUEUE
    table = buddy("deadletter", "list", "--limit", "1", "--redis-url", url, env={"COLUMNS": "80"})
    assert table.returncode == 0, table.stderr
    row = _first_row(table.stdout)  # narrow: long cells fold onto more lines, never cut
    assert row["queue/worker"] == f"{QUEUE}{newest.worker}"
    assert row["payload"] == f"notjson{marker}"  # (the cells' spaces are dropped)

    reg = CollectorRegistry()
    reg.register(FleetCollector(Store(r), agents=["a1"]))
    counted = reg.get_sample_value("buddy_deadletter_total", {"reason": deadletter.UNDECODABLE})
    assert counted is not None and counted >= 1
    kept = deadletter.count(r)
    assert reg.get_sample_value("buddy_deadletter_messages") == kept

    purged = buddy("deadletter", "purge", "--yes", "--redis-url", url)
    assert purged.returncode == 0, purged.stderr
    assert f"deleted {kept} dead letter(s)" in purged.stdout
    assert deadletter.count(r) == 0
    # the counter is a counter: purging the records does not take it back
    assert reg.get_sample_value("buddy_deadletter_total", {"reason": deadletter.UNDECODABLE}) == counted


def _first_row(table: str) -> dict[str, str]:
    """The first data row of a rich table by column header, each cell's lines joined without spaces."""
    lines = table.splitlines()

    def joined(rows: list[str], sep: str) -> list[str]:
        cells: list[str] = []
        for line in rows:
            parts = [c.replace(" ", "") for c in line.split(sep)[1:-1]]
            cells = [a + b for a, b in zip(cells, parts, strict=True)] if cells else parts
        return cells

    top = next(i for i, x in enumerate(lines) if x.startswith("┏"))
    mid = next(i for i, x in enumerate(lines) if x.startswith("┡"))
    end = next(i for i, x in enumerate(lines) if i > mid and not x.startswith("│"))
    return dict(zip(joined(lines[top + 1 : mid], "┃"), joined(lines[mid + 1 : end], "│"), strict=True))


def test_over_tcp_redis_a_bad_item_is_dead_lettered_too(tmp_path: Path) -> None:
    """``redis://`` (kombu's own URL parsing, not the socket prefix) gets the same channel."""
    server = start_redis(port=free_port())
    url = server.tcp_url
    fleet = LocalFleet(url, [AgentSpec(id="a1", concurrency=1)], env=ENV, log_dir=tmp_path / "logs")
    try:
        fleet.start()
        wait_for_workers(url, ["a1"], timeout_s=90)
        store = Store(redis_client(url))
        pids = [p.pid for p in fleet.alive()]
        store.r.lpush(QUEUE, "not json over tcp")
        _wait(lambda: deadletter.count(store.r) == 1, what="the dead letter")
        [d] = deadletter.list_(store.r, 10)
        assert d.reason == deadletter.UNDECODABLE and d.payload == "not json over tcp"
        assert "Connected to redis://" in _log(fleet)  # the consumer's URL reads as kombu's
        _assert_serving(fleet, store, make_celery(url), tmp_path, pids)
    finally:
        fleet.stop()
        server.stop()


def test_a_forged_batch_for_a_campaign_nobody_started_is_dead_lettered(
    fleet_redis: EmbeddedRedis, dl_fleet: LocalFleet, tmp_path: Path
) -> None:
    """Finding 4: a well-formed batch for a campaign id no coordinator started ran its tools."""
    r = fleet_redis.client()
    store = Store(r)
    sender = make_celery(fleet_redis.url)
    target = tmp_path / "forged.txt"
    cid = f"forged-{uuid.uuid4().hex[:8]}"
    before = len(_records(r))
    sender.send_task(EXECUTE_TASK, kwargs=_batch(cid, target), queue=QUEUE)
    _wait(lambda: len(_records(r)) > before, what="the forged batch's dead letter")
    rec = next(x for x in _records(r) if x.campaign_id == cid)
    assert rec.reason == deadletter.NOT_DISPATCHED
    assert "does not exist" in rec.detail and "file.write" in rec.payload
    assert not target.exists()
    assert store.outcomes(cid) == {}
