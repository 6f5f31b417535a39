"""Buddy on a RabbitMQ broker (``BUDDY_BROKER_URL=amqp://…``) with Redis as the state store.

Runs against the RabbitMQ on 127.0.0.1:5672 in a private virtual host (``buddy-test-<random>``,
created with ``rabbitmqctl`` for the module and deleted after it), with a private Redis
(:class:`EmbeddedRedis`) for state and results and real ``buddy worker`` processes. Without
``rabbitmqctl`` or a RabbitMQ answering there the module is skipped with the reason; under
``CI=true`` it fails instead.

What it shows: a campaign with a retried task (a countdown, through RabbitMQ's native delayed
delivery) succeeds end to end; the agent queues and ``buddy.coordinator`` are durable quorum
queues; a worker killed with SIGKILL mid-task has its message back in the queue at once (AMQP
requeues a closed connection's unacked messages), and the campaign finishes with every effect
once, without the stall detector resending anything.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from buddy.config import Settings
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import (
    EXECUTE_TASK,
    WholeSecondCelery,
    make_celery,
    redis_client,
    route_batch_retries,
)
from buddy.models import AgentSpec
from buddy.state.store import Store
from tests.helpers import buddy, unavailable, wait_for_workers

pytestmark = pytest.mark.integration

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
LEDGER_TOOLS = "tests.fixtures.ledger_tools"


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    """A private RabbitMQ virtual host the guest user may use; deleted at teardown."""
    if shutil.which("rabbitmqctl") is None:
        unavailable("no RabbitMQ: rabbitmqctl is not on PATH")
    try:
        socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=3).close()
    except OSError as e:
        unavailable(f"no RabbitMQ: nothing answers on {AMQP_HOST}:{AMQP_PORT} ({e})")
    name = f"buddy-test-{secrets.token_hex(4)}"
    try:
        _rabbitmqctl("add_vhost", name)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        unavailable(f"no RabbitMQ: rabbitmqctl add_vhost failed: {getattr(e, 'stderr', '') or e}")
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="module")
def broker(vhost: str) -> str:
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/{vhost}"


@pytest.fixture(scope="module")
def amqp_fleet(
    fleet_redis: EmbeddedRedis, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFleet]:
    """Agents a1 and a2, one worker process each, on the RabbitMQ broker."""
    f = LocalFleet(
        fleet_redis.url,
        [AgentSpec(id="a1"), AgentSpec(id="a2")],
        broker_url=broker,
        env={"BUDDY_TOOLS": LEDGER_TOOLS},
        log_dir=tmp_path_factory.mktemp("amqp-worker-logs"),
    )
    f.start()
    try:
        wait_for_workers(fleet_redis.url, ["a1", "a2"], timeout_s=60)
        yield f
    finally:
        f.stop()


def write_plan(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("\n".join(json.dumps({"confidence": 0.9, **x}) for x in lines) + "\n")
    return path


def executed(out: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for f in sorted(out.glob("wave_*/agent_*/executed_tasks.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            assert row["task_id"] not in rows, f"{row['task_id']} reported twice"
            rows[row["task_id"]] = row
    return rows


def _lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of ``path`` (a line being written is left for the next read)."""
    text = path.read_text()
    return [json.loads(x) for x in text[: text.rfind("\n") + 1].splitlines()]


def queues(vhost: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(
        _rabbitmqctl("list_queues", "-p", vhost, "name", "type", "durable", "--formatter", "json")
    )
    return {r["name"]: r for r in rows}


def events(redis_url: str, out: Path) -> list[dict[str, Any]]:
    cid = json.loads((out / "campaign.json").read_text())["campaign_id"]
    return Store(redis_client(redis_url)).events(cid, count=10_000)


# -- configuration (no RabbitMQ needed) ---------------------------------------------------


def test_amqp_broker_settings_keep_state_on_redis() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", broker_url="amqp://u:secret@mq:5672/v")
    app = make_celery(None, settings)
    assert isinstance(app, WholeSecondCelery)
    conf = app.conf
    assert conf.broker_url.startswith("amqp://") and conf.result_backend == "redis://127.0.0.1:1/0"
    assert conf.task_default_queue_type == conf.task_create_missing_queue_type == "quorum"
    assert conf.task_default_exchange_type == conf.task_create_missing_queue_exchange_type == "topic"
    assert conf.broker_native_delayed_delivery_queue_type == "quorum"
    assert conf.broker_transport_options == {"confirm_publish": True}  # no Redis-only options
    assert "visibility_timeout" in conf.result_backend_transport_options
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_use_ssl is False
    # a Redis broker keeps today's settings
    redis_app = make_celery(None, Settings(redis_url="redis://127.0.0.1:1/0"))
    assert type(redis_app) is not WholeSecondCelery
    assert redis_app.conf.broker_url == redis_app.conf.result_backend == "redis://127.0.0.1:1/0"
    assert redis_app.conf.broker_transport_options["visibility_timeout"] == settings.visibility_timeout_s
    assert redis_app.conf.task_create_missing_queue_type == "classic"


def test_amqps_checks_the_server_certificate() -> None:
    settings = Settings(
        broker_url="amqps://u:p@mq:5671/v?ssl_ca_certs=/etc/ca.pem", redis_url="redis://h:1/0"
    )
    conf = make_celery(None, settings).conf
    assert conf.broker_use_ssl == {
        "context": {"check_hostname": True, "cafile": "/etc/ca.pem"},
        "server_hostname": None,
    }
    assert "?" not in conf.broker_url  # the TLS options are not left for kombu to misread
    # TLS of a rediss:// state Redis is for the result backend only
    both = Settings(broker_url="amqp://u:p@mq/v", redis_url="rediss://h:6380/0?ssl_cert_reqs=none")
    conf = make_celery(None, both).conf
    assert conf.broker_use_ssl is False and conf.redis_backend_use_ssl == {"ssl_cert_reqs": ssl.CERT_NONE}


def test_retries_stay_on_their_agent_queue_and_whole_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_celery(None, Settings(redis_url="redis://127.0.0.1:1/0", broker_url="amqp://u:p@mq/v"))
    # a retry carries the delivery's exchange and routing key, not its queue
    retry = {"exchange": "celery_delayed_delivery", "routing_key": "0.0.1.buddy.agent.a1"}
    assert (
        app.amqp.router.route(dict(retry), EXECUTE_TASK, (), {"agent_id": "a1"})["queue"].name
        == "buddy.agent.a1"
    )
    sent = app.amqp.router.route({"queue": "buddy.agent.a2"}, EXECUTE_TASK, (), {"agent_id": "a1"})
    assert sent["queue"].name == "buddy.agent.a2"  # an explicit queue wins
    assert route_batch_retries("buddy.wave_complete", (), {"agent_id": "a1"}, {}) is None
    seen: list[Any] = []
    monkeypatch.setattr(
        "celery.Celery.send_task", lambda self, name, *a, countdown=None, **kw: seen.append(countdown)
    )
    for countdown in (0.5, 1.0, 2.2, None, 0):
        app.send_task(EXECUTE_TASK, countdown=countdown)
    assert seen == [1, 1, 3, None, 0]


# -- against RabbitMQ ----------------------------------------------------------------------


def test_campaign_with_a_retry_runs_on_quorum_queues(
    amqp_fleet: LocalFleet, fleet_redis: EmbeddedRedis, broker: str, vhost: str, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"
    plan = write_plan(
        tmp_path / "plan.jsonl",
        [
            {"task_id": "flaky", "tool": "flaky", "args": {"fail_first": 1}, "agent": "a1"},
            {"task_id": "l1", "tool": "ledger.append", "args": {"path": str(ledger), "line": "l1"}},
            {"task_id": "l2", "tool": "ledger.append", "args": {"path": str(ledger), "line": "l2"}},
            {"task_id": "after", "tool": "noop", "depends_on": ["flaky", "l1", "l2"]},
        ],
    )
    out = tmp_path / "out"
    proc = buddy("run", str(plan), "--mode", "live", "--agents", "a1,a2", "--redis-url", fleet_redis.url,
                 "--broker-url", broker, "--tools", LEDGER_TOOLS, "--out", str(out), "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = executed(out)
    assert {t: r["status"] for t, r in rows.items()} == dict.fromkeys(
        ("flaky", "l1", "l2", "after"), "succeeded"
    )
    # the retry went through a countdown (native delayed delivery) back to a1's queue
    assert rows["flaky"]["attempts"] == 2 and rows["flaky"]["agent_id"] == "a1"
    assert [e["error_type"] for e in rows["flaky"]["errors"]] == ["FlakyError"]
    assert sorted(ledger.read_text().splitlines()) == ["l1", "l2"]
    assert rows["after"]["wave"] == 2
    found = queues(vhost)
    for name in ("buddy.agent.a1", "buddy.agent.a2", "buddy.coordinator"):
        assert found[name]["type"] == "quorum" and found[name]["durable"] is True, found.get(name)
    assert found["celery_delayed_0"]["type"] == "quorum"  # the delay queues of the countdowns
    bindings = _rabbitmqctl("list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key")
    assert "celery_delayed_delivery\tbuddy.agent.a1\t#.buddy.agent.a1" in bindings


def test_refused_messages_are_dead_lettered_on_amqp(
    amqp_fleet: LocalFleet, fleet_redis: EmbeddedRedis, broker: str
) -> None:
    """The worker's consumer (workers.transport) keeps kombu's AMQP transport and still
    dead-letters what Celery refuses into the state Redis; the worker goes on serving."""
    from kombu import Producer

    from buddy.state import deadletter as dl

    marker = secrets.token_hex(4)
    with Connection(broker) as conn:
        producer = Producer(conn.default_channel)
        route = {"exchange": "buddy.agent.a2", "routing_key": "buddy.agent.a2"}
        producer.publish([[], {}, {}], headers={"task": f"nope.{marker}", "id": f"u-{marker}"}, **route)
        producer.publish(
            b"{not json " + marker.encode(),
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": EXECUTE_TASK, "id": f"d-{marker}"},
            **route,
        )
        client = redis_client(fleet_redis.url)
        deadline = time.monotonic() + 30
        mine: dict[str, dl.DeadLetter] = {}
        while len(mine) < 2 and time.monotonic() < deadline:
            mine = {r.reason: r for r in dl.list_(client, 100) if marker in r.payload}
            time.sleep(0.1)
        assert set(mine) == {dl.UNKNOWN_TASK, dl.DECODE_ERROR}, mine
        assert all(r.queue == "buddy.agent.a2" and r.worker.startswith("a2-1-") for r in mine.values())
        _, ready, consumers = conn.default_channel.queue_declare("buddy.agent.a2", passive=True)
        assert (ready, consumers) == (0, 1)  # acked, not requeued; the worker still consumes
    assert len(amqp_fleet.alive()) == 2


def test_worker_killed_mid_task_is_requeued_at_once(
    fleet_redis: EmbeddedRedis, broker: str, tmp_path: Path
) -> None:
    """Two workers of agent k1 run one task each; the one running ``long`` gets SIGKILL (its
    whole process group). RabbitMQ puts the message back as the connection closes; the other
    worker runs it once it is free, taking the dead attempt's claim over."""
    fleet = LocalFleet(
        fleet_redis.url,
        [AgentSpec(id="k1", concurrency=1)],
        workers_per_agent=2,
        broker_url=broker,
        env={"BUDDY_TOOLS": LEDGER_TOOLS},
        log_dir=tmp_path / "logs",
    )
    fleet.start()
    run: subprocess.Popen[str] | None = None
    try:
        wait_for_workers(fleet_redis.url, ["k1"], timeout_s=60)
        ledger = tmp_path / "ledger.txt"
        starts = Path(str(ledger) + ".starts")
        plan = write_plan(
            tmp_path / "plan.jsonl",
            [
                {
                    "task_id": "long",
                    "tool": "ledger.append",
                    "args": {"path": str(ledger), "line": "long", "seconds": 6},
                },
                {
                    "task_id": "busy",
                    "tool": "ledger.append",
                    "args": {"path": str(ledger), "line": "busy", "seconds": 8},
                },
            ],
        )
        out = tmp_path / "out"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
        run = subprocess.Popen(
            [sys.executable, "-m", "buddy", "run", str(plan), "--mode", "live", "--agents", "k1",
             "--redis-url", fleet_redis.url, "--broker-url", broker, "--tools", LEDGER_TOOLS,
             "--batch-size", "1", "--out", str(out), "--no-progress"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # wait until both tasks run, one on each worker
        deadline = time.monotonic() + 60
        first: dict[str, dict[str, Any]] = {}
        while len(first) < 2 and time.monotonic() < deadline:
            if starts.exists():
                first = {s["task"]: s for s in _lines(starts)}
            time.sleep(0.05)
        assert len(first) == 2, f"tasks did not start: {first}"
        victim = first["long"]["worker"]
        assert victim != first["busy"]["worker"]
        time.sleep(1.0)  # mid-task
        index = int(str(victim).split("@")[0].split("-")[1]) - 1  # k1-<n>-<pid>@host
        with Connection(broker) as conn:
            channel = conn.default_channel
            _, ready, consumers = channel.queue_declare("buddy.agent.k1", passive=True)
            assert (ready, consumers) == (0, 2)
            killed_at, killed_wall = time.monotonic(), time.time()
            os.killpg(fleet.procs[index].pid, signal.SIGKILL)
            while time.monotonic() - killed_at < 10:
                _, ready, consumers = channel.queue_declare("buddy.agent.k1", passive=True)
                if ready == 1:
                    break
                time.sleep(0.02)
            requeued_s = time.monotonic() - killed_at
        assert (ready, consumers) == (1, 1), "the killed worker's message is not back in the queue"
        assert requeued_s < 2.0, f"requeued after {requeued_s:.2f} s"
        print(f"message back in the queue {requeued_s * 1000:.0f} ms after SIGKILL")

        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
        rows = executed(out)
        assert {t: r["status"] for t, r in rows.items()} == {"long": "succeeded", "busy": "succeeded"}
        assert rows["long"]["worker"] != victim
        # every effect once; "long" started twice (the killed attempt and the rerun)
        assert sorted(ledger.read_text().splitlines()) == ["busy", "long"]
        tries = [s for s in _lines(starts) if s["task"] == "long"]
        assert len(tries) == 2 and tries[0]["worker"] == victim and tries[1]["worker"] != victim
        print(f"rerun of the killed task started {tries[1]['at'] - killed_wall:.1f} s after SIGKILL")
        # the redelivery ran it: the stall detector had nothing to resend
        kinds = [e["type"] for e in events(fleet_redis.url, out)]
        assert "campaign_finished" in kinds and "tasks_resent" not in kinds, kinds
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        fleet.stop()


# -- fail fast -----------------------------------------------------------------------------


def test_unreachable_broker_fails_fast(fleet_redis: EmbeddedRedis, broker: str, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.jsonl", [{"task_id": "t", "tool": "noop"}])
    no_vhost = broker.rsplit("/", 1)[0] + "/buddy-test-missing"
    cases = [
        ("amqp://guest:guest@127.0.0.1:1/x", "connection refused"),
        (broker.replace("guest:guest@", "guest:wrong-pass@"), "refused the login"),
        (no_vhost, "rabbitmqctl add_vhost buddy-test-missing"),
    ]
    for url, said in cases:
        t0 = time.monotonic()
        proc = buddy("run", str(plan), "--redis-url", fleet_redis.url, "--broker-url", url,
                     "--out", str(tmp_path / "out"), "--no-progress")  # fmt: skip
        assert proc.returncode == 3, proc.stderr
        assert time.monotonic() - t0 < 20
        assert "cannot reach the broker at" in proc.stderr and said in proc.stderr, proc.stderr
        assert "wrong-pass" not in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "out").exists()
    proc = buddy(
        "worker", "--agent", "a9", "--redis-url", fleet_redis.url, "--broker-url", no_vhost, timeout=60
    )
    assert proc.returncode == 3 and "no access to the virtual host" in proc.stderr, proc.stderr
    proc = buddy("run", str(plan), "--redis-url", fleet_redis.url, "--broker-url", "kafka://h:9092")
    assert proc.returncode == 2 and "bad broker URL" in proc.stderr, proc.stderr
