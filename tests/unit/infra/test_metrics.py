"""buddy.metrics: the fleet collector reads Redis at scrape time; campaign metrics; the endpoint."""

from __future__ import annotations

import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from redis.backoff import NoBackoff
from redis.retry import Retry

from buddy.infra.prometheus import (
    PRIORITY_SEP,
    CampaignMetrics,
    FleetCollector,
    error_budget,
    priority_lists,
    queue_depths,
    serve,
)
from buddy.infra.transport import make_celery
from buddy.models import Mode, Outcome, TaskStatus
from buddy.state.store import Store


def _registry(collector: FleetCollector) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(collector)
    return reg


def _outcome(tid: str, status: TaskStatus) -> Outcome:
    now = datetime.now(UTC)
    return Outcome(
        task_id=tid, campaign_id="c1", agent_id="a1", wave=1, status=status, mode=Mode.MOCK,
        start_time=now, end_time=now,
    )  # fmt: skip


def test_priority_lists_follow_kombu_naming() -> None:
    assert priority_lists("buddy.agent.a1") == [
        "buddy.agent.a1",
        "buddy.agent.a1\x06\x163",
        "buddy.agent.a1\x06\x166",
        "buddy.agent.a1\x06\x169",
    ]


def test_queue_depth_sums_every_priority_list(store: Store) -> None:
    store.r.rpush("buddy.agent.a1", "m1", "m2")
    store.r.rpush(f"buddy.agent.a1{PRIORITY_SEP}3", "m3")
    store.r.rpush(f"buddy.agent.a1{PRIORITY_SEP}9", "m4", "m5", "m6")
    store.r.rpush("buddy.agent.a2", "x")
    assert queue_depths(store.r, ["buddy.agent.a1", "buddy.agent.a2", "buddy.agent.a3"]) == {
        "buddy.agent.a1": 6,
        "buddy.agent.a2": 1,
        "buddy.agent.a3": 0,
    }


def test_fleet_collector_reads_redis_at_scrape_time(store: Store) -> None:
    now = 1_000_000.0
    store.heartbeat("w1@h", ["a1"])  # real time; the collector's clock decides the age below
    store.r.hset(
        "buddy:agent:a1", mapping={"heartbeat": now - 4.0, "processed": 7, "failed": 2, "in_flight": 3}
    )
    store.r.zadd("buddy:agent:a1:workers", {"w1@h": now - 4.0, "w2@h": now - 1.0, "old@h": now - 60})
    reg = _registry(FleetCollector(store, agents=["a9"], clock=lambda: now))

    assert reg.get_sample_value("buddy_redis_up") == 1.0
    q = {"queue": "buddy.agent.a1", "agent": "a1"}
    assert reg.get_sample_value("buddy_queue_depth", q) == 0.0
    store.r.rpush("buddy.agent.a1", "m1", "m2", "m3")  # the next scrape sees it: no caching
    assert reg.get_sample_value("buddy_queue_depth", q) == 3.0
    assert reg.get_sample_value("buddy_queue_depth", {"queue": "buddy.coordinator", "agent": ""}) == 0.0
    assert reg.get_sample_value("buddy_agent_live_workers", {"agent": "a1"}) == 2.0
    assert reg.get_sample_value("buddy_agent_heartbeat_age_seconds", {"agent": "a1"}) == pytest.approx(4.0)
    assert reg.get_sample_value("buddy_agent_in_flight", {"agent": "a1"}) == 3.0
    assert reg.get_sample_value("buddy_agent_processed_total", {"agent": "a1"}) == 7.0
    assert reg.get_sample_value("buddy_agent_failed_total", {"agent": "a1"}) == 2.0
    # an agent asked for but never seen: its queue and zero workers, no heartbeat age
    assert reg.get_sample_value("buddy_queue_depth", {"queue": "buddy.agent.a9", "agent": "a9"}) == 0.0
    assert reg.get_sample_value("buddy_agent_live_workers", {"agent": "a9"}) == 0.0
    assert reg.get_sample_value("buddy_agent_heartbeat_age_seconds", {"agent": "a9"}) is None
    assert reg.get_sample_value("buddy_unacked_messages") == 0.0


def test_priority_messages_sent_by_celery_are_counted(real_redis: redis.Redis, redis_url: str) -> None:
    """kombu's real list names for priorities, not just our idea of them."""
    app = make_celery(redis_url)
    for pri in (0, 3, 9):
        app.send_task("buddy.noop", queue="buddy.agent.a1", priority=pri)
    keys = sorted(k for k in real_redis.keys("buddy.agent.a1*"))
    assert len(keys) == 3, keys  # three lists: plain, \x06\x163, \x06\x169
    reg = _registry(FleetCollector(Store(real_redis), agents=["a1"]))
    assert reg.get_sample_value("buddy_queue_depth", {"queue": "buddy.agent.a1", "agent": "a1"}) == 3.0


def test_scrape_while_redis_is_down_says_so() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    reg = _registry(FleetCollector(Store(dead)))
    assert reg.get_sample_value("buddy_redis_up") == 0.0
    assert reg.get_sample_value("buddy_queue_depth", {"queue": "buddy.coordinator", "agent": ""}) is None


def test_campaign_metrics() -> None:
    m = CampaignMetrics()
    assert m.registry.get_sample_value("buddy_tasks_total", {"status": "failed"}) == 0.0  # pre-created
    assert m.registry.get_sample_value("buddy_error_budget_remaining") == 1.0
    m.set_campaign("c1", tasks=5, mode="mock")
    m.set_current_wave(2)
    m.observe_outcomes(
        [
            _outcome("t1", TaskStatus.SUCCEEDED),
            _outcome("t2", TaskStatus.SUCCEEDED),
            _outcome("t3", TaskStatus.FAILED),
        ]
    )
    m.set_wave_health(1, 87.5)
    m.set_wave_health(2, 250)
    m.set_error_budget(error_budget(failures=1, max_failures=4))
    m.inc_lease_contention(3)
    m.inc_lease_contention(0)
    get = m.registry.get_sample_value
    assert get("buddy_tasks_total", {"status": "succeeded"}) == 2.0
    assert get("buddy_tasks_total", {"status": "failed"}) == 1.0
    assert get("buddy_campaign_tasks_planned") == 5.0
    assert get("buddy_campaign_info", {"campaign": "c1", "mode": "mock"}) == 1.0
    assert get("buddy_current_wave") == 2.0
    assert get("buddy_wave_health", {"wave": "1"}) == 87.5
    assert get("buddy_wave_health", {"wave": "2"}) == 100.0  # clamped to 0-100
    assert get("buddy_error_budget_remaining") == 0.75
    assert get("buddy_lease_contention_total") == 3.0
    # a second object has its own registry: tests (and campaigns) do not share counters
    assert CampaignMetrics().registry.get_sample_value("buddy_tasks_total", {"status": "succeeded"}) == 0.0


def test_error_budget() -> None:
    assert error_budget(0, None) == 1.0
    assert error_budget(0, 0) == 1.0
    assert error_budget(1, 0) == 0.0
    assert error_budget(2, 4) == 0.5
    assert error_budget(9, 4) == 0.0


def test_campaign_metrics_include_the_fleet(store: Store) -> None:
    store.heartbeat("w1@h", ["a1"])
    m = CampaignMetrics(fleet=FleetCollector(store))
    text = generate_latest(m.registry).decode()
    assert 'buddy_queue_depth{agent="a1",queue="buddy.agent.a1"} 0.0' in text
    assert 'buddy_agent_live_workers{agent="a1"} 1.0' in text
    assert "buddy_tasks_total" in text


def test_serve_and_stop() -> None:
    m = CampaignMetrics()
    m.inc_lease_contention(2)
    server = serve(m.registry, 0)
    try:
        assert server.url.startswith("http://127.0.0.1:")
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
        assert "buddy_lease_contention_total 2.0" in body
    finally:
        server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)
