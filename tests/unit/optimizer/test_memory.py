"""What a campaign leaves for the next: live executions folded into profiles, recalled when
usable (fakeredis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import fakeredis

from buddy.models import AttemptError, Mode, Outcome, TaskStatus
from buddy.optimizer.memory import observations, recall, remember
from buddy.state.profiles import Profiles

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def out(tid: str, agent: str, tool: str, ms: float, *, mode: Mode = Mode.LIVE, failed_before: int = 0,
        status: TaskStatus = TaskStatus.SUCCEEDED, worker: str | None = "w1") -> Outcome:  # fmt: skip
    errors = [AttemptError(attempt=i + 1, error_type="X", error_msg="x", at=T0) for i in range(failed_before)]
    return Outcome(task_id=tid, campaign_id="c", agent_id=agent, wave=1, status=status, mode=mode,
                   attempts=failed_before + 1, duration_ms=ms, tool=tool, worker=worker, errors=errors)  # fmt: skip


def test_only_live_executions_count() -> None:
    outs = [
        out("a", "a1", "sleep", 20.0),
        out("b", "a1", "sleep", 40.0, failed_before=1),
        out("m", "a1", "sleep", 0.1, mode=Mode.MOCK),  # the stand-in, not the agent
        out("s", "a2", "sleep", 0.0, status=TaskStatus.SKIPPED, worker=None),  # never ran
    ]
    agents, tools = observations(outs)
    assert set(agents) == {"a1"} and set(tools) == {"sleep"}
    a1 = agents["a1"]
    assert (a1.tasks, a1.attempts, a1.failed_attempts, a1.busy_ms) == (2, 3, 1, 60.0)


def test_a_second_campaign_recalls_what_the_first_left() -> None:
    profiles = Profiles(fakeredis.FakeRedis())
    outs = [out(f"t{i}", "fast", "sleep", 10.0) for i in range(6)] + [
        out(f"u{i}", "slow", "sleep", 100.0) for i in range(6)
    ]
    remember(profiles, outs, {"fast": 1.0, "slow": 0.8}, {"fast": 8, "slow": 1}, T0)
    got = recall(profiles, ["fast", "slow", "new"], ["sleep", "noop"], T0 + timedelta(hours=1))
    assert set(got.agents) == {"fast", "slow"} and set(got.tools) == {"sleep"}
    assert got.agents["fast"].service_rate == 100.0 and got.agents["slow"].service_rate == 10.0
    assert got.agents["slow"].calibration_weight == 0.8 and got.agents["fast"].capacity == 8
    assert "fast: 100.0 tasks/s per slot" in got.describe()
    # a month later the evidence has faded below what planning needs
    assert recall(profiles, ["fast"], [], T0 + timedelta(days=30)).agents == {}


def test_a_campaign_that_ran_nothing_live_writes_nothing() -> None:
    profiles = Profiles(fakeredis.FakeRedis())
    assert remember(profiles, [out("m", "a1", "noop", 0.0, mode=Mode.MOCK)], {}, {}) == ({}, {})
    assert profiles.agents() == {}


def test_a_smaller_pool_is_advice_and_not_recorded_as_applied() -> None:
    from buddy.optimizer.learner import _advise_shrinks
    from buddy.optimizer.tuner import ParameterChange, TunedParameters

    tuned = {"a1": TunedParameters(agent_id="a1", concurrency=3, max_retries=2, batch_size=8)}
    changes = [
        ParameterChange(
            agent_id="a1", parameter="concurrency", old=4, new=3, reason="failing", changed_at=T0
        ),
        ParameterChange(agent_id="a1", parameter="batch_size", old=1, new=8, reason="fast", changed_at=T0),
    ]
    kept, recorded = _advise_shrinks(tuned, changes, {"a1": 4})
    assert kept["a1"].concurrency == 4 and kept["a1"].batch_size == 8
    assert [c.parameter for c in recorded] == ["batch_size"]
