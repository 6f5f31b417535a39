"""buddy.deadletter (records, the capped list, counters), the worker's tolerant kombu channel
in process, the transport choice for each Redis URL form, execute_batch's validation entry,
the Prometheus counter and the ``buddy deadletter`` commands."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from kombu import Connection, Exchange, Queue
from prometheus_client import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from buddy.cli.ops import ops_app
from buddy.config import get_settings
from buddy.infra.prometheus import FleetCollector
from buddy.infra.transport import EXECUTE_TASK, celery_url
from buddy.state import deadletter as dl
from buddy.state.store import Store

runner = CliRunner()


# -- records and the list -------------------------------------------------------------------


def test_a_record_keeps_what_it_can_show_of_any_payload() -> None:
    raw = dl.DeadLetter.of(dl.UNDECODABLE, b"not json \xff\xfe", queue="buddy.agent.a1", worker="w@h")
    assert raw.payload == "not json \\xff\\xfe" and raw.size == 11 and not raw.truncated
    assert raw.at.tzinfo is not None and raw.at.utcoffset() is not None and not raw.at.utcoffset()
    assert dl.DeadLetter.of(dl.UNDECODABLE, "").payload == ""
    obj = dl.DeadLetter.of(
        dl.INVALID_KWARGS, {"items": ["x"], "n": 1}, task_name=EXECUTE_TASK, campaign_id="c1"
    )
    assert json.loads(obj.payload) == {"items": ["x"], "n": 1}
    assert (obj.task_name, obj.campaign_id) == (EXECUTE_TASK, "c1")
    big = dl.DeadLetter.of(dl.BAD_MESSAGE, "é" * 100, limit=51, detail="x" * 5000)
    assert big.size == 200 and big.truncated and big.payload.startswith("é" * 25)
    assert len(big.detail) == dl.DETAIL_LIMIT
    # ids taken from a forged message are only kept when they are strings
    odd = dl.DeadLetter.of(dl.BAD_MESSAGE, "{}", task_name=["x"], campaign_id=3)  # type: ignore[arg-type]
    assert odd.task_name is None and odd.campaign_id is None


def test_push_keeps_the_newest_maxlen_and_counts_every_reason(redis_client: redis.Redis) -> None:
    for i in range(12):
        reason = dl.UNDECODABLE if i % 3 else dl.BAD_ENVELOPE
        dl.push(redis_client, dl.DeadLetter.of(reason, f"item {i}", queue="q"), maxlen=10)
    assert dl.count(redis_client) == 10
    kept = dl.list_(redis_client, 100)
    assert [r.payload for r in kept] == [f"item {i}" for i in range(11, 1, -1)]  # newest first
    assert [r.payload for r in dl.list_(redis_client, 2)] == ["item 11", "item 10"]
    assert dl.list_(redis_client, 0) == []
    assert dl.counts(redis_client) == {dl.UNDECODABLE: 8, dl.BAD_ENVELOPE: 4}
    assert dl.stats(redis_client) == ({dl.UNDECODABLE: 8, dl.BAD_ENVELOPE: 4}, 10)

    assert dl.purge(redis_client) == 10
    assert dl.count(redis_client) == 0 and dl.list_(redis_client, 10) == []
    assert dl.counts(redis_client) == {dl.UNDECODABLE: 8, dl.BAD_ENVELOPE: 4}  # a counter stays
    assert dl.purge(redis_client) == 0


def test_an_entry_that_is_not_a_record_is_still_listed(redis_client: redis.Redis) -> None:
    redis_client.lpush(dl.KEY, "written by something else")
    [r] = dl.list_(redis_client, 5)
    assert r.reason == "unreadable-record" and r.payload == "written by something else"


def test_dead_letter_logs_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    record = dl.DeadLetter.of(dl.UNDECODABLE, "not json", queue="buddy.agent.a1", detail="JSONDecodeError: x")
    client = fakeredis.FakeRedis()
    with caplog.at_level(logging.WARNING, logger="buddy.deadletter"):
        assert dl.dead_letter(client, record, 100)
    assert dl.count(client) == 1
    assert "dead-lettered a message from queue buddy.agent.a1: undecodable" in caplog.text
    caplog.clear()
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.WARNING, logger="buddy.deadletter"):
        assert not dl.dead_letter(down, record, 100)
    assert "could not store a dead letter" in caplog.text and "not json" in caplog.text


def test_the_fleet_collector_reports_dead_letters(store: Store) -> None:
    reg = CollectorRegistry()
    reg.register(FleetCollector(store))
    assert reg.get_sample_value("buddy_deadletter_messages") == 0.0
    assert reg.get_sample_value("buddy_deadletter_total", {"reason": dl.UNDECODABLE}) is None
    for reason in (dl.UNDECODABLE, dl.UNDECODABLE, dl.INVALID_KWARGS):
        dl.push(store.r, dl.DeadLetter.of(reason, "x"), 100)
    assert reg.get_sample_value("buddy_deadletter_total", {"reason": dl.UNDECODABLE}) == 2.0
    assert reg.get_sample_value("buddy_deadletter_total", {"reason": dl.INVALID_KWARGS}) == 1.0
    assert reg.get_sample_value("buddy_deadletter_messages") == 3.0
    dl.purge(store.r)
    assert reg.get_sample_value("buddy_deadletter_messages") == 0.0
    assert reg.get_sample_value("buddy_deadletter_total", {"reason": dl.UNDECODABLE}) == 2.0


# -- the transport ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw@10.0.0.5:6380/2",
        "redis://localhost/0",
        "rediss://:pw@redis.example:6380/0?ssl_cert_reqs=required",
        "redis+socket:///tmp/buddy/redis.sock",
        "redis+socket://:pw@/tmp/buddy/redis.sock?virtual_host=1",
    ],
)
def test_the_consumer_connection_gets_the_dead_letter_transport_for_every_redis_url(url: str) -> None:
    from workers.transport import TRANSPORT_PATH, Channel, Transport, use_transport

    ssl = {"ssl_cert_reqs": 2} if url.startswith("rediss") else None
    plain = Connection(url, ssl=ssl)
    conn = use_transport(Connection(url, ssl=ssl))
    assert conn.transport_cls == TRANSPORT_PATH and conn.get_transport_cls() is Transport
    assert isinstance(conn.transport, Transport) and conn.transport.Channel is Channel
    # kombu parsed the URL as usual, and it reads the same as kombu's own transport shows it
    assert (conn.hostname, conn.port, conn.userid, conn.password, conn.virtual_host) == (
        plain.hostname, plain.port, plain.userid, plain.password, plain.virtual_host,
    )  # fmt: skip
    assert conn.as_uri() == plain.as_uri()
    assert conn.as_uri(include_password=True) == plain.as_uri(include_password=True)
    assert json.dumps(conn.info(), default=str)  # `celery inspect stats` sends it as JSON
    assert conn.connection_errors == plain.connection_errors


def test_other_brokers_keep_their_transport() -> None:
    from workers.transport import use_transport

    amqp = use_transport(Connection("amqp://guest:guest@localhost:5672//"))
    assert amqp.transport_cls in ("amqp", "librabbitmq", "pyamqp")
    assert use_transport(Connection("memory://")).transport_cls == "memory"


def test_the_worker_app_uses_the_dead_letter_consumer() -> None:
    from workers.app import app

    assert app.conf.worker_consumer == "workers.transport:Consumer"
    from workers.transport import Consumer

    assert Consumer.on_invalid_task is not Consumer.__mro__[1].on_invalid_task


@pytest.fixture
def worker_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The worker side's settings and store pointed at the test's private Redis."""
    monkeypatch.setenv("BUDDY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    from workers.tasks import store

    store.cache_clear()
    yield redis_url
    store.cache_clear()


def test_the_channel_dead_letters_what_it_cannot_deliver_and_keeps_consuming(worker_env: str) -> None:
    """kombu's Redis channel, in process: bad items around good ones; none raises out of a read."""
    from workers.transport import use_transport

    r = redis.Redis.from_url(worker_env)
    conn = use_transport(Connection(celery_url(worker_env)))
    name = "buddy.test.dl"
    queue = Queue(name, Exchange(name, type="direct"), name)
    got: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        if body == {"poison": True}:
            raise ValueError("the consumer cannot use this")  # as Celery does for ["a"]
        got.append(body)
        message.ack()

    with conn, conn.Consumer(queue, callbacks=[on_message], accept=["json"]):
        producer = conn.Producer(serializer="json")
        r.lpush(name, "not json")
        r.lpush(name, "42")
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key=name, declare=[queue])
        r.lpush(
            name, json.dumps({"body": "abc", "properties": {"delivery_tag": "t", "body_encoding": "base64"}})
        )
        for tag in (None, {"not": "hashable"}):  # redis-py cannot send it (DataError) / not a dict key
            props = {"delivery_tag": tag, "body_encoding": "base64", "delivery_info": {"exchange": ""}}
            r.lpush(name, json.dumps({"body": "e30=", "properties": props, "headers": {}}))
        producer.publish({"poison": True}, exchange=queue.exchange, routing_key=name)
        producer.publish({"n": 2}, exchange=queue.exchange, routing_key=name)
        for _ in range(50):
            if len(got) == 2 and dl.count(r) == 6:
                break
            try:
                conn.drain_events(timeout=0.2)
            except TimeoutError:
                pass
    assert got == [{"n": 1}, {"n": 2}]
    reasons = [d.reason for d in reversed(dl.list_(r, 10))]
    assert reasons == [
        dl.UNDECODABLE,
        dl.BAD_ENVELOPE,
        dl.BAD_ENVELOPE,
        dl.BAD_ENVELOPE,
        dl.BAD_ENVELOPE,
        dl.BAD_MESSAGE,
    ]
    assert {d.queue for d in dl.list_(r, 10)} == {name}
    poison = dl.list_(r, 1)[0]
    assert "ValueError: the consumer cannot use this" in poison.detail
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0  # the poison was acked
    assert r.llen(name) == 0


def test_envelope_reasons() -> None:
    from workers.transport import _envelope

    assert _envelope(b"not json") == (dl.UNDECODABLE, None, None)
    assert _envelope(b"\xff") == (dl.UNDECODABLE, None, None)
    assert _envelope(b"[1]") == (dl.BAD_ENVELOPE, None, None)
    env = {"properties": {"delivery_tag": "t1"}, "headers": {"task": EXECUTE_TASK}}
    assert _envelope(json.dumps(env).encode()) == (dl.BAD_ENVELOPE, "t1", EXECUTE_TASK)
    assert _envelope(b'{"properties": 3, "headers": {"task": 5}}') == (dl.BAD_ENVELOPE, None, None)


# -- the task ---------------------------------------------------------------------------


def test_execute_batch_dead_letters_kwargs_that_do_not_validate(worker_env: str) -> None:
    from workers.tasks import execute_batch

    r = redis.Redis.from_url(worker_env)
    kwargs = {"campaign_id": "c-bad", "wave": 1, "agent_id": "a1", "items": ["not a TaskSpec", {"tool": 3}]}
    result = execute_batch.apply(kwargs=kwargs)
    assert result.successful() and result.get() == []
    [d] = dl.list_(r, 5)
    assert d.reason == dl.INVALID_KWARGS and d.campaign_id == "c-bad" and d.task_name == EXECUTE_TASK
    assert json.loads(d.payload)["kwargs"]["items"][0] == "not a TaskSpec"
    assert "items.0" in d.detail and "items.1.task_id" in d.detail
    for bad in ({**kwargs, "items": 5}, {**kwargs, "items": [], "wave": "one"}, {**kwargs, "campaign_id": 7}):
        assert execute_batch.apply(kwargs=bad).get() == []
    assert dl.counts(r) == {dl.INVALID_KWARGS: 4}
    assert dl.list_(r, 1)[0].campaign_id is None  # 7 is no campaign id


# -- the CLI --------------------------------------------------------------------------------


def _rows(table: str) -> list[dict[str, str]]:
    """A rich table's data rows by column header; a cell's lines joined without spaces."""
    lines = table.splitlines()

    def joined(rows: list[str], sep: str) -> list[str]:
        cells: list[str] = []
        for line in rows:
            parts = [c.replace(" ", "") for c in line.split(sep)[1:-1]]
            cells = [a + b for a, b in zip(cells, parts, strict=True)] if cells else parts
        return cells

    top = next(i for i, x in enumerate(lines) if x.startswith("┏"))
    mid = next(i for i, x in enumerate(lines) if x.startswith("┡"))
    names = joined(lines[top + 1 : mid], "┃")
    rows: list[dict[str, str]] = []
    block: list[str] = []
    for line in lines[mid + 1 :]:
        if line.startswith("│"):
            block.append(line)
        elif block:
            rows.append(dict(zip(names, joined(block, "│"), strict=True)))
            block = []
    return rows


def test_deadletter_list_and_purge(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    res = runner.invoke(ops_app, ["deadletter", "list", "--redis-url", redis_url])
    assert res.exit_code == 0 and "no dead letters" in res.stdout
    long_worker = "a1-1-" + "w" * 60 + "@host.example.internal"
    dl.push(r, dl.DeadLetter.of(dl.INVALID_KWARGS, "y" * 1000, campaign_id="c1", task_name=EXECUTE_TASK), 100)
    dl.push(r, dl.DeadLetter.of(dl.UNDECODABLE, "not json", queue="buddy.agent.a1", worker=long_worker), 100)

    res = runner.invoke(ops_app, ["deadletter", "list", "--json", "--redis-url", redis_url])
    assert res.exit_code == 0, res.output
    newest, older = (dl.DeadLetter.model_validate_json(x) for x in res.stdout.splitlines())
    assert newest.worker == long_worker and older.payload == "y" * 1000  # newest first, payload whole

    res = runner.invoke(ops_app, ["deadletter", "list", "--redis-url", redis_url], env={"COLUMNS": "60"})
    assert res.exit_code == 0, res.output
    first, second = _rows(res.stdout)
    assert first["queue/worker"] == "buddy.agent.a1" + long_worker  # folded onto lines, never cut
    assert first["when(UTC)/reason"].endswith(dl.UNDECODABLE) and first["payload"] == "notjson"
    assert second["task/campaign"] == f"{EXECUTE_TASK}c1"
    assert (
        second["payload"].startswith("y" * dl_preview())
        and "(1000bytes;--jsonshowsitwhole)" in second["payload"]
    )

    res = runner.invoke(ops_app, ["deadletter", "purge", "--redis-url", redis_url], input="n\n")
    assert res.exit_code == 1 and dl.count(r) == 2
    res = runner.invoke(ops_app, ["deadletter", "purge", "--yes", "--redis-url", redis_url])
    assert res.exit_code == 0 and "deleted 2 dead letter(s)" in res.stdout and dl.count(r) == 0
    res = runner.invoke(ops_app, ["deadletter", "purge", "--yes", "--redis-url", redis_url])
    assert res.exit_code == 0 and "no dead letters" in res.stdout


def dl_preview() -> int:
    from buddy.cli.ops import PAYLOAD_PREVIEW

    return PAYLOAD_PREVIEW
