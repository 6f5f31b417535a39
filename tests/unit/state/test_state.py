"""Store: the Redis state, one suite run on fakeredis and on the session's real Redis.

Every test takes the ``store`` fixture (parametrized in ``tests/conftest.py``), so each runs
twice. Time is injected: ``clock`` replaces the clock :mod:`buddy.state` reads, and
``live_workers`` / ``agent_info`` take ``now``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

import buddy.state.agents
import buddy.state.store
from buddy.models import Mode, Outcome, StatusCounts, TaskStatus, WaveSummary
from buddy.state.claims import Claim, Claims
from buddy.state.control import PauseRequest
from buddy.state.keys import Keys
from buddy.state.store import Store, spec_digest

CID = "c1"
T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


class FakeClock:
    """A clock the test moves by hand (epoch seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Replace the ``time`` module :mod:`buddy.state` reads with a hand-driven clock."""
    c = FakeClock()
    monkeypatch.setattr(buddy.state.store, "time", SimpleNamespace(time=c))
    monkeypatch.setattr(buddy.state.agents, "time", SimpleNamespace(time=c))
    return c


def outcome(
    task_id: str,
    status: TaskStatus = TaskStatus.SUCCEEDED,
    *,
    agent: str | None = "a1",
    worker: str | None = "w1",
    wave: int = 1,
    cid: str = CID,
) -> Outcome:
    return Outcome(
        task_id=task_id,
        campaign_id=cid,
        agent_id=agent,
        wave=wave,
        status=status,
        mode=Mode.MOCK,
        attempts=1,
        start_time=T0,
        end_time=T0 + timedelta(seconds=1),
        duration_ms=1000.0,
        worker=worker,
        tool="noop",
    )


def summary(wave: int = 1, cid: str = CID) -> WaveSummary:
    counts = StatusCounts()
    counts.add("succeeded")
    return WaveSummary(campaign_id=cid, wave=wave, counts=counts, agents={}, success_rate=1.0)


# -- campaigns -------------------------------------------------------------------------------


def test_campaign_create_update_read(store: Store) -> None:
    store.create_campaign(CID, {"status": "running", "mode": "mock"})
    store.update_campaign(CID, status="succeeded", current_wave=3, wall_s=1.5)
    got = store.campaign(CID)
    assert got["status"] == "succeeded"
    assert got["mode"] == "mock"
    assert got["current_wave"] == "3"
    assert got["wall_s"] == "1.5"
    assert datetime.fromisoformat(got["created_at"]).tzinfo is not None


def test_create_campaign_keeps_the_first_created_at(store: Store) -> None:
    store.create_campaign(CID, {"status": "running"})
    first = store.campaign(CID)["created_at"]
    store.create_campaign(CID, {"status": "resumed"})
    assert store.campaign(CID)["created_at"] == first
    assert store.campaign(CID)["status"] == "resumed"


def test_unknown_campaign_reads_empty(store: Store) -> None:
    assert store.campaign("nope") == {}
    assert store.campaign_ids() == []


def test_campaign_ids_newest_first_and_limited(store: Store, clock: FakeClock) -> None:
    # ids in the opposite of creation order, so lexical order cannot pass for time order
    for cid in ("zz", "mm", "aa"):
        store.create_campaign(cid, {"status": "running"})
        clock.advance(1.0)
    assert store.campaign_ids() == ["aa", "mm", "zz"]
    assert store.campaign_ids(limit=2) == ["aa", "mm"]


# -- waves -----------------------------------------------------------------------------------


def test_start_wave_sets_counters_and_current_wave(store: Store) -> None:
    store.create_campaign(CID, {"status": "running"})
    store.start_wave(CID, 2, dispatched=7, chord_id="chord-1")
    w = store.wave_counters(CID, 2)
    assert w["dispatched"] == "7"
    assert w["chord_id"] == "chord-1"
    assert datetime.fromisoformat(w["started_at"]).tzinfo is not None
    assert store.campaign(CID)["current_wave"] == "2"
    assert store.wave_counters(CID, 3) == {}


def test_finish_wave_wakes_the_waiter_of_its_own_dispatch(store: Store) -> None:
    s = summary(wave=1)
    store.finish_wave(CID, s, "tok-1")
    assert store.wait_wave_done(CID, 1, timeout_s=1.0, token="tok-1") == s
    # the wave hash keeps the summary for other readers (buddy status)
    assert WaveSummary.model_validate_json(store.wave_counters(CID, 1)["summary"]) == s


def test_a_stale_dispatchs_summary_is_ignored(store: Store) -> None:
    # a resumed or re-sent wave must not be closed by the chord of an earlier dispatch
    store.finish_wave(CID, summary(wave=1), "old")
    store.finish_wave(CID, summary(wave=1), "new")
    assert store.wait_wave_done(CID, 1, timeout_s=0.2, token="new") is None  # pops "old", drops it
    assert store.wait_wave_done(CID, 1, timeout_s=0.2, token="new") == summary(wave=1)


def test_wait_wave_done_times_out_quickly(store: Store) -> None:
    t = time.monotonic()
    assert store.wait_wave_done(CID, 1, timeout_s=0.05) is None
    assert time.monotonic() - t < 1.0
    # a zero timeout must not block forever (BLPOP 0 would)
    t = time.monotonic()
    assert store.wait_wave_done(CID, 1, timeout_s=0.0) is None
    assert time.monotonic() - t < 1.0


def test_wait_wave_done_is_per_wave(store: Store) -> None:
    store.finish_wave(CID, summary(wave=1))
    assert store.wait_wave_done(CID, 2, timeout_s=0.05) is None
    assert store.wait_wave_done("other", 1, timeout_s=0.05) is None


def test_start_wave_clears_a_stale_done_signal(store: Store) -> None:
    store.finish_wave(CID, summary(wave=1))
    store.start_wave(CID, 1, dispatched=1)  # the wave is dispatched again (resume)
    assert store.wait_wave_done(CID, 1, timeout_s=0.05) is None


def test_the_outcome_write_that_completes_a_dispatch_wakes_the_coordinator(store: Store) -> None:
    store.start_wave(CID, 1, dispatched=3)
    store.record_outcomes([outcome("pre", TaskStatus.SKIPPED)])  # decided before the dispatch
    store.expect_done(CID, 1, 1 + 3)
    key = store.keys.wave_done(CID, 1)
    store.record_outcomes([outcome("a")])
    store.record_outcomes([outcome("b")])
    assert store.r.llen(key) == 0  # 3 of 4: nobody woken
    store.record_outcomes([outcome("c"), outcome("d")])  # crosses 4 (to 5): exactly one wake-up
    assert [x.decode() if isinstance(x, bytes) else x for x in store.r.lrange(key, 0, -1)] == [
        buddy.state.store.WAKE
    ]
    store.record_outcomes([outcome("e")])  # already past: no second wake-up
    assert store.r.llen(key) == 1
    # the wake-up is no summary: the waiter returns None and reads the counters
    assert store.wait_wave_done(CID, 1, timeout_s=0.05, token="tok") is None


def test_no_wake_up_without_an_expected_count(store: Store) -> None:
    store.start_wave(CID, 1, dispatched=1)
    store.record_outcomes([outcome("a")])
    assert store.r.llen(store.keys.wave_done(CID, 1)) == 0


def test_start_wave_forgets_an_earlier_dispatchs_expected_count(store: Store) -> None:
    store.expect_done(CID, 1, 1)
    store.start_wave(CID, 1, dispatched=1)
    assert "expect" not in store.wave_counters(CID, 1)


def test_missing_outcomes_names_the_tasks_without_one(store: Store) -> None:
    store.record_outcomes([outcome("a"), outcome("c")])
    assert store.missing_outcomes(CID, ["a", "b", "c", "d"]) == {"b", "d"}
    assert store.missing_outcomes(CID, []) == set()


# -- outcomes --------------------------------------------------------------------------------


def test_record_outcomes_updates_hash_counters_agents_and_one_event(store: Store) -> None:
    Claims(store.r).acquire(
        CID, 1, {t: (None, Claim(worker="w1", attempt=1, started_at=0.0)) for t in "abc"}, ttl_s=60
    )
    outs = [
        outcome("a"),
        outcome("b", TaskStatus.FAILED),
        outcome("c", TaskStatus.TIMED_OUT, agent="a2", worker="w2"),
    ]
    store.record_outcomes(outs, running_delta=-3)

    assert store.outcomes(CID) == {o.task_id: o for o in outs}
    w = store.wave_counters(CID, 1)
    assert w["done"] == "3"
    assert w["failed"] == "2"
    assert w["status:succeeded"] == "1"
    assert w["status:failed"] == "1"
    assert w["status:timed_out"] == "1"
    assert w["running"] == "0"
    a1 = store.agent_info("a1")
    assert (a1.processed, a1.failed) == (2, 1)
    a2 = store.agent_info("a2")
    assert (a2.processed, a2.failed) == (1, 1)
    events = store.events(CID)
    assert len(events) == 1
    assert events[0]["type"] == "outcomes"
    assert events[0]["data"] == [
        ["a", "succeeded", "a1", 1],
        ["b", "failed", "a1", 1],
        ["c", "timed_out", "a2", 1],
    ]


def test_record_outcomes_accumulates_and_skips_agents_without_a_worker(store: Store) -> None:
    store.record_outcomes([outcome("a")])
    store.record_outcomes([outcome("b", TaskStatus.SKIPPED, worker=None)])
    w = store.wave_counters(CID, 1)
    assert w["done"] == "2"
    assert w["failed"] == "1"
    assert "running" not in w  # no running_delta given
    assert store.agent_info("a1").processed == 1  # the skipped task ran on no worker
    assert len(store.events(CID)) == 2


def test_record_outcomes_of_nothing_writes_nothing(store: Store) -> None:
    store.record_outcomes([], running_delta=-5)
    assert store.outcomes(CID) == {}
    assert store.wave_counters(CID, 1) == {}
    assert store.events(CID) == []


def test_record_outcomes_overwrites_an_outcome(store: Store) -> None:
    store.record_outcomes([outcome("a", TaskStatus.NEEDS_REVIEW)])
    store.record_outcomes([outcome("a", TaskStatus.SUCCEEDED)])
    assert store.outcomes(CID)["a"].status is TaskStatus.SUCCEEDED


def test_outcomes_by_ids_and_all(store: Store) -> None:
    outs = [outcome("a"), outcome("b", TaskStatus.FAILED), outcome("c")]
    store.record_outcomes(outs)
    store.record_outcomes([outcome("x", cid="other")])
    assert store.outcomes(CID, ["c", "a", "missing"]) == {"c": outs[2], "a": outs[0]}
    assert store.outcomes(CID, []) == {}
    assert set(store.outcomes(CID)) == {"a", "b", "c"}
    assert store.outcomes(CID)["b"] == outs[1]
    assert set(store.outcomes("other")) == {"x"}


# -- claims, batches, undo ---------------------------------------------------------------------


def test_begin_batch_returns_outcomes_claims_lock_and_dispatch(store: Store) -> None:
    store.record_outcomes([outcome("a")])
    claim = Claim(worker="w9", attempt=2, started_at=5.0, state="retry_wait", delivery="d:1")
    Claims(store.r).acquire(CID, 1, {"b": (None, claim)}, ttl_s=60)
    item = {"task_id": "c", "tool": "noop", "args": {"n": 1}, "mode": "mock"}
    store.create_campaign(CID, {"status": "running"})
    store.record_dispatch(CID, 3, [item])

    got = store.begin_batch(CID, ["a", "b", "c"])
    assert got.outcomes == {"a": outcome("a")}
    assert got.claims == {"b": claim.dump()}
    assert got.lock is None
    assert got.campaign_status == "running"
    assert got.dispatched == {"c": f"3:{spec_digest(item)}"}

    assert got.pause is None and got.cancelled == frozenset()

    store.r.set(Keys.system_lock(), "maintenance window")
    lock = store.begin_batch(CID, ["c"]).lock
    assert lock is not None and lock.reason == "maintenance window"
    assert (store.system_lock() or lock).reason == lock.reason == "maintenance window"
    store.request_pause(CID, PauseRequest(reason="wait", by="ops@h"))
    store.request_cancel(CID, ["c", "zz"], by="ops@h")
    again = store.begin_batch(CID, ["a", "c"])
    assert again.pause is not None and (again.pause.reason, again.pause.by) == ("wait", "ops@h")
    assert again.cancelled == {"c"}
    assert store.cancel_requested(CID, ["a", "c", "zz"]) == {"c": "ops@h", "zz": "ops@h"}
    assert store.begin_batch("nope", ["c"]).campaign_status is None


def test_spec_digest_changes_with_any_field_but_not_key_order() -> None:
    item = {"task_id": "t", "tool": "noop", "args": {"a": 1, "b": [1, 2]}, "mode": "mock"}
    assert spec_digest(item) == spec_digest(dict(reversed(item.items())))
    for change in ({"mode": "live"}, {"tool": "file.delete"}, {"args": {"a": 2, "b": [1, 2]}}):
        assert spec_digest({**item, **change}) != spec_digest(item)


def test_retry_counts_moves_running_to_retries(store: Store) -> None:
    Claims(store.r).acquire(
        CID, 1, {t: (None, Claim(worker="w1", attempt=1, started_at=1.0)) for t in "ab"}, ttl_s=60
    )
    store.retry_counts(CID, 1, 1, [])
    w = store.wave_counters(CID, 1)
    assert w["running"] == "1"
    assert w["retries"] == "1"
    store.retry_counts(CID, 1, 0, [])
    assert store.wave_counters(CID, 1) == w


def test_save_undo_and_undo_data(store: Store) -> None:
    assert store.undo_data(CID) == {}
    store.save_undo(CID, "a", {"path": "/tmp/x", "existed": True, "n": [1, 2]})
    store.save_undo(CID, "b", {})
    store.save_undo(CID, "a", {"path": "/tmp/y"})  # a later attempt replaces it
    assert store.undo_data(CID) == {"a": {"path": "/tmp/y"}, "b": {}}


# -- events ----------------------------------------------------------------------------------


def test_events_oldest_first_and_newest_count(store: Store) -> None:
    for i in range(5):
        store.event(CID, "tick", n=i, at=T0)
    evs = store.events(CID)
    assert [e["type"] for e in evs] == ["tick"] * 5
    assert [e["data"]["n"] for e in evs] == [0, 1, 2, 3, 4]
    assert evs[0]["data"]["at"] == str(T0)  # non-JSON values are stringified
    assert [e["data"]["n"] for e in store.events(CID, count=2)] == [3, 4]
    ids = [e["id"] for e in evs]
    assert all(isinstance(i, str) for i in ids)
    assert len(set(ids)) == 5
    assert store.events("other") == []


def test_event_stream_cap_is_approximate_but_bounded(store: Store) -> None:
    assert store.events_maxlen == 1000
    for i in range(5000):
        store.event(CID, "tick", n=i)
    n = store.r.xlen(Keys.events(CID))
    assert 1000 <= n < 2000
    assert store.events(CID, count=1)[0]["data"] == {"n": 4999}


def test_record_outcomes_events_are_capped(store: Store) -> None:
    small = Store(store.r, events_maxlen=100)
    for i in range(600):
        small.record_outcomes([outcome(f"t{i}")])
    assert 100 <= small.r.xlen(Keys.events(CID)) < 300


# -- agents ----------------------------------------------------------------------------------


def test_heartbeat_live_workers_and_staleness(store: Store, clock: FakeClock) -> None:
    store.heartbeat("w1", ["a1", "a2"])
    clock.advance(5.0)
    store.heartbeat("w2", ["a1"])
    now = clock.now
    assert store.live_workers("a1", now=now) == ["w1", "w2"]
    assert store.live_workers("a2", now=now) == ["w1"]
    # w1's heartbeat is 5 s old; at stale_s (10 s) it still counts, past it not
    assert store.live_workers("a1", now=now + 5.0) == ["w1", "w2"]
    assert store.live_workers("a1", now=now + 5.5) == ["w2"]
    assert store.live_workers("a1", now=now + 10.5) == []
    assert store.agent_ids() == ["a1", "a2"]


def test_agent_info_status_age_and_params(store: Store, clock: FakeClock) -> None:
    store.heartbeat("w1", ["a1"], params={"batch_size": 4})
    hb = clock.now

    info = store.agent_info("a1", now=hb + 2.0)
    assert info.status == "idle"
    assert info.live_workers == ["w1"]
    assert info.heartbeat_age_s == pytest.approx(2.0)
    assert info.params == {"batch_size": 4}
    assert (info.in_flight, info.processed, info.failed) == (0, 0, 0)

    store.add_in_flight("a1", 3)
    busy = store.agent_info("a1", now=hb + 2.0)
    assert (busy.status, busy.in_flight) == ("busy", 3)

    store.add_in_flight("a1", -3)
    assert store.agent_info("a1", now=hb + 2.0).status == "idle"

    stale = store.agent_info("a1", now=hb + store.stale_s + 1.0)
    assert stale.status == "offline"
    assert stale.live_workers == []
    assert stale.heartbeat_age_s == pytest.approx(store.stale_s + 1.0)


def test_agent_info_keeps_degraded_and_floors_in_flight(store: Store, clock: FakeClock) -> None:
    store.heartbeat("w1", ["a1"], status="degraded")
    assert store.agent_info("a1", now=clock.now).status == "degraded"
    store.add_in_flight("a1", -2)  # a miscount never shows as negative
    assert store.agent_info("a1", now=clock.now).in_flight == 0


def test_agent_info_of_an_unknown_agent(store: Store) -> None:
    info = store.agent_info("ghost", now=1.0)
    assert info.status == "offline"
    assert info.heartbeat_age_s is None
    assert info.live_workers == []
    assert info.params == {}


def test_worker_gone(store: Store, clock: FakeClock) -> None:
    store.heartbeat("w1", ["a1", "a2"])
    store.heartbeat("w2", ["a1"])
    store.worker_gone("w1", ["a1", "a2"])
    assert store.live_workers("a1", now=clock.now) == ["w2"]
    assert store.live_workers("a2", now=clock.now) == []
    assert store.agent_info("a2", now=clock.now).status == "offline"
    store.worker_gone("w2", ["a1"])
    assert store.agent_info("a1", now=clock.now).status == "offline"
