"""The source documents' metrics (issue 15): availability, accuracy, tool_success_rate,
execution_latency_ms (mean) and learning_impact, per wave and per campaign, by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.metrics import (
    DECISION_THRESHOLD,
    Metrics,
    WaveMetrics,
    performance,
    prediction_correct,
    unavailable,
)
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, AttemptError, Mode, Outcome, TaskStatus

T0 = datetime(2024, 1, 1, tzinfo=UTC)
S = TaskStatus
AGENTS = [AgentSpec(id="a1", concurrency=1), AgentSpec(id="a2", concurrency=1)]


def o(
    tid: str,
    status: TaskStatus = S.SUCCEEDED,
    *,
    agent: str = "a1",
    wave: int = 1,
    start: float = 0.0,
    ms: float = 1000.0,
    worker: str | None = "w1",
    attempts: int = 1,
    failed: tuple[int, ...] = (),
    error_type: str | None = None,
) -> Outcome:
    return Outcome(
        task_id=tid,
        campaign_id="c",
        agent_id=agent,
        wave=wave,
        status=status,
        mode=Mode.MOCK,
        attempts=attempts,
        start_time=T0 + timedelta(seconds=start),
        end_time=T0 + timedelta(seconds=start, milliseconds=ms),
        duration_ms=ms,
        worker=worker,
        tool="t",
        error_type=error_type,
        errors=[AttemptError(attempt=a, error_type="Boom", error_msg="boom", at=T0) for a in failed],
    )


def wave_of(n: int, outs: list[Outcome], predicted: dict[str, float] | None = None, **kw: Any) -> WaveMetrics:
    planned = {x.task_id: (x.agent_id or "", n) for x in outs}
    return compute_wave_metrics(n, outs, planned, predicted or {}, AGENTS, campaign_id="c", **kw)


def test_the_new_metrics_are_defined_in_the_metrics_docstring() -> None:
    doc = Metrics.__doc__ or ""
    for name in ("availability", "accuracy", "tool_success_rate", "execution_latency_ms", "learning_impact"):
        assert f"``{name}``" in doc and name in Metrics.model_fields


def test_availability_counts_tasks_no_worker_ran_to_their_end() -> None:
    outs = [
        o("ok1"),
        o("ok2"),
        o("lost", S.LOST, worker=None, error_type="lost"),
        o("died", S.NEEDS_REVIEW, error_type="WorkerLost"),
        o("revoked", S.FAILED, worker=None, error_type="revoked"),
        o("boom", S.FAILED, error_type="Boom"),  # a tool error: the fleet was there
        o("skip", S.SKIPPED, worker=None, error_type="upstream_failed"),  # not judged
    ]
    assert [unavailable(x) for x in outs] == [False, False, True, True, True, False, False]
    m = wave_of(1, outs)
    assert m.fleet_judged == 6 and m.unavailable == 3
    assert m.availability == pytest.approx(1 - 3 / 6)
    assert wave_of(1, [o("s", S.SKIPPED, worker=None)]).availability == 1.0  # nothing judged


def test_accuracy_is_the_share_of_right_verdicts() -> None:
    assert prediction_correct(DECISION_THRESHOLD, True) and prediction_correct(0.2, False)
    assert not prediction_correct(0.9, False) and not prediction_correct(0.49, True)
    outs = [
        o("tp"),
        o("tn", S.FAILED, error_type="Boom"),
        o("fp", S.FAILED, error_type="Boom"),
        o("fn"),
        o("np"),
    ]
    predicted = {"tp": 0.9, "tn": 0.1, "fp": 0.8, "fn": 0.3}  # "np" has no prediction
    m = wave_of(1, outs, predicted)
    assert (m.predicted_correct, m.calibration.n) == (2, 4)
    assert m.accuracy == pytest.approx(0.5)
    assert wave_of(1, [o("x")]).accuracy == 1.0  # nothing predicted


def test_tool_success_rate_counts_every_call() -> None:
    outs = [
        o("once"),
        o("retried", attempts=3, failed=(1, 2)),  # two failed calls, then a good one
        o("failed", S.FAILED, failed=(1,), error_type="Boom"),
    ]
    m = wave_of(1, outs)
    # calls 1 + 3 + 1 = 5, failed 0 + 2 + 1 = 3
    assert m.tool_success_rate == pytest.approx(2 / 5)
    assert wave_of(1, []).tool_success_rate == 1.0


def test_execution_latency_is_the_mean_duration_of_executed_tasks() -> None:
    outs = [o("a", ms=100), o("b", ms=300, agent="a2"), o("c", S.DENIED, worker=None, ms=5000)]
    m = wave_of(1, outs)
    assert m.execution_latency_ms == pytest.approx(200.0)
    assert wave_of(1, []).execution_latency_ms == 0.0


def test_learning_impact_is_the_gain_in_performance_since_the_first_wave() -> None:
    # wave 1: a1 gets 4 × 1 s, a2 1 × 1 s: efficiency 2.5 / 4; one of 5 fails
    w1_outs = [o(f"a{i}", start=i) for i in range(4)] + [o("b0", S.FAILED, agent="a2", error_type="Boom")]
    w1 = wave_of(1, w1_outs)
    assert w1.optimization_efficiency == pytest.approx(2.5 / 4)
    assert w1.performance == pytest.approx(performance(0.8, 2.5 / 4)) == pytest.approx(0.5)
    assert w1.baseline_performance == pytest.approx(0.5) and w1.learning_impact == 0.0
    # wave 2: an even split, all succeed: performance 1
    w2_outs = [o(f"c{i}", wave=2, start=i) for i in range(2)] + [
        o(f"d{i}", wave=2, agent="a2", start=i) for i in range(2)
    ]
    w2 = wave_of(2, w2_outs, previous=[w1])
    assert w2.performance == pytest.approx(1.0)
    assert w2.baseline_performance == pytest.approx(0.5)  # carried, not recomputed
    assert w2.learning_impact == pytest.approx(0.5)
    # wave 3 compares with wave 1 too, even when only wave 2 is in its history
    w3 = wave_of(3, [o("e", wave=3)], previous=[w2])
    assert w3.baseline_performance == pytest.approx(0.5)
    camp = campaign_metrics([w1, w2, w3], [*w1_outs, *w2_outs, o("e", wave=3)])
    assert camp.learning_impact == pytest.approx((w2.learning_impact + w3.learning_impact) / 2)
    assert campaign_metrics([w1], w1_outs).learning_impact == 0.0


def test_a_baseline_missing_from_older_metrics_falls_back_to_the_oldest_wave() -> None:
    w1 = wave_of(1, [o("a")]).model_copy(update={"baseline_performance": None, "performance": 0.25})
    w2 = wave_of(2, [o("b", wave=2)], previous=[w1])
    assert w2.baseline_performance == pytest.approx(0.25)


def test_campaign_metrics_recompute_the_seed_metrics_from_the_sums() -> None:
    w1_outs = [
        o("a", ms=100),
        o("lost", S.LOST, worker=None, error_type="lost"),
        o("r", attempts=2, failed=(1,)),
    ]
    w2_outs = [o("b", wave=2, ms=300), o("c", S.FAILED, wave=2, failed=(1,), error_type="Boom")]
    pred = {"a": 0.9, "b": 0.2, "c": 0.1}
    w1, w2 = wave_of(1, w1_outs, pred), wave_of(2, w2_outs, pred)
    m = campaign_metrics([w1, w2], [*w1_outs, *w2_outs])
    assert m.unavailable == 1 and m.availability == pytest.approx(1 - 1 / 5)
    assert (m.predicted_correct, m.calibration.n) == (2, 3) and m.accuracy == pytest.approx(2 / 3)
    assert m.tool_success_rate == pytest.approx((5 - 2) / 5)  # calls 1 + 2 + 1 + 1
    assert m.execution_latency_ms == pytest.approx(m.busy_s * 1000 / m.executed)
    assert m.execution_latency_ms == pytest.approx((100 + 1000 + 300 + 1000) / 4)
