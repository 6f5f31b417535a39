"""summarize_wave: counts, rates, wall time, throughput and per-agent totals from outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from buddy.models import Mode, Outcome, TaskStatus
from buddy.monitor import summarize_wave

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


def outcome(
    task_id: str,
    status: TaskStatus = TaskStatus.SUCCEEDED,
    *,
    agent: str | None = "a1",
    worker: str | None = "w1",
    start_s: float | None = 0.0,
    end_s: float | None = 1.0,
    duration_ms: float = 100.0,
) -> Outcome:
    return Outcome(
        task_id=task_id,
        campaign_id="c1",
        agent_id=agent,
        wave=2,
        status=status,
        mode=Mode.LIVE,
        attempts=1,
        start_time=None if start_s is None else T0 + timedelta(seconds=start_s),
        end_time=None if end_s is None else T0 + timedelta(seconds=end_s),
        duration_ms=duration_ms,
        worker=worker,
    )


def test_summary_of_a_wave() -> None:
    outs = [
        outcome("t1", start_s=0.0, end_s=1.0, duration_ms=1000.0),
        outcome("t2", TaskStatus.FAILED, worker="w2", start_s=1.0, end_s=3.0, duration_ms=2000.0),
        outcome("t3", agent="a2", worker="w3", start_s=2.0, end_s=4.0, duration_ms=500.0),
        outcome(
            "t4", TaskStatus.TIMED_OUT, agent="a2", worker="w3", start_s=0.5, end_s=2.5, duration_ms=300.0
        ),
    ]
    s = summarize_wave("c1", 2, outs)

    assert (s.campaign_id, s.wave) == ("c1", 2)
    assert s.counts.total == 4
    assert s.counts.by_status == {"succeeded": 2, "failed": 1, "timed_out": 1}
    assert s.counts.succeeded == 2
    assert s.success_rate == pytest.approx(0.5)
    assert s.start_time == T0
    assert s.end_time == T0 + timedelta(seconds=4)
    assert s.wall_s == pytest.approx(4.0)
    assert s.throughput_tps == pytest.approx(1.0)

    assert list(s.agents) == ["a1", "a2"]
    a1, a2 = s.agents["a1"], s.agents["a2"]
    assert a1.counts.total == 2 and a1.counts.by_status == {"succeeded": 1, "failed": 1}
    assert a1.busy_ms == pytest.approx(3000.0)
    assert a1.mean_duration_ms == pytest.approx(1500.0)
    assert a1.workers == ["w1", "w2"]
    assert a2.busy_ms == pytest.approx(800.0)
    assert a2.mean_duration_ms == pytest.approx(400.0)
    assert a2.workers == ["w3"]


def test_agents_and_workers_are_sorted_and_unique() -> None:
    outs = [
        outcome("t1", agent="b", worker="w9"),
        outcome("t2", agent="a", worker="w2"),
        outcome("t3", agent="b", worker="w1"),
        outcome("t4", agent="b", worker="w9"),
    ]
    s = summarize_wave("c1", 1, outs)
    assert list(s.agents) == ["a", "b"]
    assert s.agents["b"].workers == ["w1", "w9"]


def test_outcomes_that_no_worker_ran() -> None:
    """Skipped tasks and tasks without an agent: counted, but they bound no time and add no worker."""
    outs = [
        outcome("t1", start_s=10.0, end_s=12.0, duration_ms=2000.0),
        # written by the coordinator (upstream failed), far outside the wave's run time
        outcome("t2", TaskStatus.SKIPPED, worker=None, start_s=0.0, end_s=100.0, duration_ms=0.0),
        outcome("t3", TaskStatus.SKIPPED, agent=None, worker=None, start_s=None, end_s=None, duration_ms=0.0),
    ]
    s = summarize_wave("c1", 1, outs)
    assert s.counts.total == 3
    assert s.counts.by_status == {"succeeded": 1, "skipped": 2}
    assert s.success_rate == pytest.approx(1 / 3)
    assert s.wall_s == pytest.approx(2.0)
    assert s.throughput_tps == pytest.approx(1.5)
    assert s.agents["a1"].workers == ["w1"]
    # the mean is over tasks that ran: the skipped one does not halve it
    assert s.agents["a1"].mean_duration_ms == pytest.approx(2000.0)
    assert "-" in s.agents
    assert s.agents["-"].counts.total == 1
    assert s.agents["-"].mean_duration_ms == 0.0
    assert s.agents["-"].workers == []


def test_zero_wall_time_gives_zero_throughput() -> None:
    s = summarize_wave("c1", 1, [outcome("t1", start_s=5.0, end_s=5.0, duration_ms=0.0)])
    assert s.wall_s == 0.0
    assert s.throughput_tps == 0.0
    assert s.success_rate == 1.0


def test_empty_wave() -> None:
    s = summarize_wave("c1", 3, [])
    assert (s.campaign_id, s.wave) == ("c1", 3)
    assert s.counts.total == 0
    assert s.counts.by_status == {}
    assert s.agents == {}
    assert s.start_time is None and s.end_time is None
    assert (s.wall_s, s.success_rate, s.throughput_tps) == (0.0, 0.0, 0.0)


def test_accepts_any_iterable_and_round_trips_as_json() -> None:
    outs = (outcome(f"t{i}", start_s=float(i), end_s=float(i) + 0.5) for i in range(3))
    s = summarize_wave("c1", 1, outs)
    assert s.counts.total == 3
    assert type(s).model_validate_json(s.model_dump_json()) == s
