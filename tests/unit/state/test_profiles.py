"""Profiles kept across campaigns: folding, decay by age, reading back (fakeredis and Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from buddy.state.profiles import HALF_LIFE_S, AgentProfile, Observation, Profiles, ToolProfile, fold
from buddy.state.store import Store

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def seen(tasks: int, busy_ms: float, failed: int = 0) -> Observation:
    return Observation(tasks=tasks, attempts=tasks + failed, failed_attempts=failed, busy_ms=busy_ms)


def test_a_first_campaign_is_taken_as_it_is() -> None:
    p = fold(AgentProfile(agent_id="a1", updated_at=T0), seen(10, 200.0, failed=2), T0)
    assert (p.samples, p.mean_duration_ms, p.campaigns) == (10.0, 20.0, 1)
    assert p.service_rate == pytest.approx(50.0)  # 20 ms a task: 50 tasks/s per slot
    assert p.success == pytest.approx(10 / 12)


def test_older_evidence_counts_less_with_age() -> None:
    old = fold(AgentProfile(agent_id="a1", updated_at=T0), seen(10, 1000.0), T0)  # 100 ms
    a_week = T0 + timedelta(seconds=HALF_LIFE_S)
    assert old.weight(a_week) == pytest.approx(5.0)
    new = fold(old, seen(5, 50.0), a_week)  # 10 ms, counted as much as the halved old ones
    assert new.mean_duration_ms == pytest.approx(55.0)
    assert new.samples == pytest.approx(10.0) and new.campaigns == 2
    assert not old.usable(T0 + timedelta(seconds=HALF_LIFE_S * 3))  # 10 → 1.25 < 3


def test_nothing_seen_changes_nothing() -> None:
    old = AgentProfile(agent_id="a1", updated_at=T0, samples=4, mean_duration_ms=7)
    assert fold(old, seen(0, 0.0), T0 + timedelta(days=1)) == old


def test_record_reads_back_and_forget(store: Store) -> None:
    profiles = Profiles(store.r)
    agents = {"a1": (seen(8, 80.0), 0.9, 8), "a2": (seen(2, 200.0, failed=2), 0.5, 1)}
    profiles.record(agents, {"noop": seen(10, 280.0)}, T0)
    got = profiles.agents()
    assert set(got) == {"a1", "a2"}
    assert (got["a1"].capacity, got["a1"].calibration_weight, got["a1"].service_rate) == (8, 0.9, 100.0)
    assert got["a2"].success == pytest.approx(0.5)
    assert profiles.tools() == {"noop": ToolProfile(tool="noop", samples=10, mean_duration_ms=28.0,
                                                    updated_at=T0, campaigns=1)}  # fmt: skip
    again = profiles.record({"a1": (seen(8, 80.0), 0.9, 8)}, {}, T0)[0]
    assert again["a1"].samples == 16 and again["a1"].campaigns == 2
    assert profiles.agents(["a1", "nope"]).keys() == {"a1"}
    assert profiles.forget() == 3 and profiles.agents() == {} and profiles.tools() == {}
