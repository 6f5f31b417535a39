"""An agent's capacity from its workers' heartbeats: pool sizes and queues per worker, summed
over the live ones (fakeredis and the session's real Redis; time injected)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import buddy.state.agents
from buddy.coordinator.fleet_view import live_capacity
from buddy.state.agents import worker_fields
from buddy.state.store import Store


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(buddy.state.agents, "time", SimpleNamespace(time=c))
    return c


def test_capacity_is_the_sum_of_live_pools(store: Store, clock: Clock) -> None:
    store.heartbeat(
        "w1", ["a1", "a2"], pool=4, queues=["buddy.agent.a1", "buddy.agent.a2", "buddy.coordinator"]
    )
    store.heartbeat("w2", ["a1"], pool=2, queues=["buddy.agent.a1"])
    info = store.agent_info("a1", now=clock.now)
    assert info.capacity == 6
    assert info.pools == {"w1": 4, "w2": 2}
    assert info.queues["w1"] == ["buddy.agent.a1", "buddy.agent.a2", "buddy.coordinator"]
    assert info.beats == {"w1": clock.now, "w2": clock.now}
    assert store.agent_info("a2", now=clock.now).capacity == 4


def test_a_new_pool_size_replaces_the_old_and_a_stale_worker_drops_out(store: Store, clock: Clock) -> None:
    store.heartbeat("w1", ["a1"], pool=4)
    store.heartbeat("w2", ["a1"], pool=2)
    clock.now += 8.0
    store.heartbeat("w2", ["a1"], pool=5)  # pool_grow 3: the next beat says so
    assert store.agent_info("a1", now=clock.now).capacity == 9
    # w1's last beat is 8 s old; 3 s later it is past stale_s (10 s): its slots leave
    later = store.agent_info("a1", now=clock.now + 3.0)
    assert later.live_workers == ["w2"] and later.capacity == 5 and later.beats == {"w2": clock.now}


def test_a_clean_shutdown_removes_the_workers_slots(store: Store, clock: Clock) -> None:
    store.heartbeat("w1", ["a1"], pool=3, queues=["buddy.agent.a1"])
    store.heartbeat("w2", ["a1"], pool=1)
    store.worker_gone("w1", ["a1"])
    assert store.agent_info("a1", now=clock.now).capacity == 1
    assert not any(store.r.hexists(store.keys.agent("a1"), f) for f in worker_fields("w1"))
    store.worker_gone("w2", ["a1"])
    info = store.agent_info("a1", now=clock.now)
    assert info.capacity is None and info.status == "offline"


def test_live_capacity_falls_back_to_campaign_yaml(store: Store, clock: Clock) -> None:
    store.heartbeat("w1", ["a1"], pool=8)
    store.heartbeat("w2", ["a1"])  # an older worker: no pool in its beat
    store.heartbeat("w3", ["a2"])
    declared = {"a1": 3, "a2": 2, "a3": 2}  # campaign.yaml
    infos = store.agents_info(["a1", "a2", "a3"], now=clock.now)
    assert infos["a2"].capacity is None
    # a1: 8 reported + 3 for the silent worker; a2: its concurrency; a3: no worker, its concurrency
    assert live_capacity(declared, infos) == {"a1": 11, "a2": 2, "a3": 2}
