"""Real workers report their capacity: pool size and queues in every heartbeat, a
``pool_grow`` within a fraction of the beat interval, and a campaign divides its work and
judges its load by those slots, not by campaign.yaml's ``concurrency`` (issue 15)."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

import buddy
from buddy.config import get_settings
from buddy.coordinator.fleet_view import live_capacity
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import make_dispatcher, redis_client
from buddy.models import AgentSpec
from buddy.state.store import Store
from tests.helpers import private_redis, wait_for_workers
from tests.integration.test_campaign import plan

pytestmark = pytest.mark.integration

#: A beat interval far longer than the test waits for a pool change: a change that shows up
#: was reported by the worker's look at its pool, not by its regular beat.
SLOW_BEATS = {"BUDDY_HEARTBEAT_INTERVAL_S": "10", "BUDDY_HEARTBEAT_STALE_S": "60"}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[EmbeddedRedis]:
    with private_redis() as server:
        yield server


@pytest.fixture(scope="module")
def pools(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """a1: prefork, 1 process; a2: prefork, 3 processes; a3: threads, 2 threads."""
    logs = tmp_path_factory.mktemp("capacity-logs")
    prefork = LocalFleet(
        redis_server.url,
        [AgentSpec(id="a1", concurrency=1), AgentSpec(id="a2", concurrency=3)],
        env=SLOW_BEATS,
        log_dir=logs,
    )
    threads = LocalFleet(
        redis_server.url, [AgentSpec(id="a3", concurrency=2)], pool="threads", env=SLOW_BEATS, log_dir=logs
    )
    prefork.start()
    threads.start()
    try:
        wait_for_workers(redis_server.url, ["a1", "a2", "a3"])
        yield
    finally:
        prefork.stop()
        threads.stop()


def store_of(redis_server: EmbeddedRedis) -> Store:
    return Store(redis_client(redis_server.url), stale_s=60.0)


def capacity_of(store: Store, agent: str) -> int | None:
    return store.agent_info(agent).capacity


def wait_capacity(store: Store, agent: str, want: int, timeout_s: float) -> float:
    """Seconds until ``agent`` reports ``want`` slots; fails after ``timeout_s``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if capacity_of(store, agent) == want:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{agent}: capacity {capacity_of(store, agent)}, not {want}, after {timeout_s} s")


def test_workers_report_pool_size_and_queues(redis_server: EmbeddedRedis, pools: None) -> None:
    store = store_of(redis_server)
    infos = store.agents_info(["a1", "a2", "a3"])
    assert {a: i.capacity for a, i in infos.items()} == {"a1": 1, "a2": 3, "a3": 2}
    for aid, info in infos.items():
        (worker,) = info.live_workers
        assert info.pools == {worker: info.capacity}
        assert info.queues[worker] == sorted([f"buddy.agent.{aid}", "buddy.coordinator"])
        assert info.beats[worker] == pytest.approx(time.time(), abs=30)
    # campaign.yaml says 2 everywhere; the fleet view goes by what the workers run
    yaml = dict.fromkeys(("a1", "a2", "a3", "a4"), 2)
    assert live_capacity(yaml, infos) == {"a1": 1, "a2": 3, "a3": 2, "a4": 2}  # a4: no worker


def test_pool_grow_shows_up_in_the_next_beat(redis_server: EmbeddedRedis, pools: None) -> None:
    store = store_of(redis_server)
    (worker,) = store.live_workers("a2")
    app = make_dispatcher(redis_server.url)
    replies = app.control.pool_grow(2, destination=[worker], reply=True, timeout=5.0)
    assert replies and "ok" in next(iter(replies[0].values()))
    waited = wait_capacity(store, "a2", 5, timeout_s=8.0)
    assert waited < 8.0  # well before the 10 s beat interval: the worker looked at its pool
    app.control.pool_shrink(2, destination=[worker], reply=True, timeout=5.0)
    wait_capacity(store, "a2", 3, timeout_s=8.0)


def test_a_campaign_divides_and_judges_by_live_slots(
    redis_server: EmbeddedRedis, pools: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """campaign.yaml gives a1 and a2 two slots each; their workers run 1 and 3."""
    monkeypatch.setenv("BUDDY_HEARTBEAT_STALE_S", SLOW_BEATS["BUDDY_HEARTBEAT_STALE_S"])
    get_settings.cache_clear()  # the coordinator's view of a live worker: its 10 s beats
    lines = [{"task_id": f"t{i}", "tool": "sleep", "args": {"seconds": 0.05}} for i in range(40)]
    runs = {}
    for optimize in (False, True):
        out = tmp_path / ("adaptive" if optimize else "static")
        result = buddy.Campaign(
            plan(lines), agents=["a1", "a2"], mode="live", redis_url=redis_server.url, out_dir=out,
            local_workers=0, optimize=optimize, console=Console(file=io.StringIO()),
        ).run()  # fmt: skip
        assert result.status == "succeeded", result.summary
        metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        runs[optimize] = (Counter(o.agent_id for o in result.outcomes.values()), metrics, out)
    static, adaptive = runs[False], runs[True]
    # the metrics know the real slots either way, so round robin on 1 + 3 slots is imbalanced
    for _, metrics, _ in (static, adaptive):
        assert {a: r["concurrency"] for a, r in metrics["agents"].items()} == {"a1": 1, "a2": 3}
        assert metrics["slots"] == 4
    assert static[0] == {"a1": 20, "a2": 20}
    assert static[1]["load_balance"] < 0.7
    # the optimizer re-assigns wave 1 by capacity: a2 runs about three tasks for each of a1's
    assert abs(adaptive[0]["a1"] - 10) <= 1 and adaptive[0].total() == 40
    moved = [
        json.loads(x) for f in (adaptive[2] / "wave_1").glob("agent_*/adjusted_schedule.jsonl")
        for x in f.read_text().splitlines()
    ]  # fmt: skip
    assert len(moved) >= 9 and all(not m["pinned"] for m in moved)
    assert all("3 slots × " in m["reason"] and "1 slot × " in m["reason"] for m in moved)
    assert adaptive[1]["load_balance"] > static[1]["load_balance"]
