"""The monitor: summarize_wave (counts, rates, wall time, per-agent totals), every metric of
compute_wave_metrics against a hand-computed wave, campaign metrics, each anomaly on a crafted
wave, and the health score's weights and penalty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from buddy.analysis.agents import summarize_wave
from buddy.analysis.anomalies import Anomaly, detect_anomalies, severity
from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.health import below_min_health, health, health_status
from buddy.analysis.metrics import WaveMetrics, percentile
from buddy.analysis.monitor import HealthWeights, MonitorConfig
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, AttemptError, Mode, Outcome, TaskStatus
from buddy.outputs.analysis_files import write_monitoring
from buddy.outputs.writer import OutputWriter

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
    # throughput is over executed tasks: one ran in 2 s
    assert s.throughput_tps == pytest.approx(0.5)
    assert s.agents["a1"].workers == ["w1"]
    # the mean is over tasks that ran: the skipped one does not halve it
    assert s.agents["a1"].mean_duration_ms == pytest.approx(2000.0)
    assert "-" in s.agents
    assert s.agents["-"].counts.total == 1
    assert s.agents["-"].mean_duration_ms == 0.0
    assert s.agents["-"].workers == []


def test_an_instant_wave_is_measured_over_at_least_a_second() -> None:
    s = summarize_wave("c1", 1, [outcome("t1", start_s=5.0, end_s=5.0, duration_ms=0.0)])
    assert s.wall_s == 0.0
    assert s.throughput_tps == 1.0  # one task, not thousands per second
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


# == compute_wave_metrics, campaign_metrics, anomalies, health ==================================


def run(
    task_id: str,
    agent: str | None,
    *,
    status: TaskStatus = TaskStatus.SUCCEEDED,
    start: float = 0.0,
    end: float = 1.0,
    ms: float = 1000.0,
    attempts: int = 1,
    errors: tuple[str, ...] = (),
    error_type: str | None = None,
    mode: Mode = Mode.MOCK,
    tool: str = "y",
    rolled_back: bool = False,
    worker: str | None = "w1",
    wave: int = 3,
) -> Outcome:
    """An outcome; ``errors`` are the error types of failed attempts 1, 2, …"""
    return Outcome(
        task_id=task_id,
        campaign_id="c1",
        agent_id=agent,
        wave=wave,
        status=status,
        mode=mode,
        attempts=attempts,
        start_time=T0 + timedelta(seconds=start),
        end_time=T0 + timedelta(seconds=end),
        duration_ms=ms,
        worker=worker,
        tool=tool,
        error_type=error_type,
        errors=[AttemptError(attempt=i + 1, error_type=e, error_msg=e, at=T0) for i, e in enumerate(errors)],
        rolled_back=rolled_back,
    )


AGENTS = [AgentSpec(id="a1", concurrency=2), AgentSpec(id="a2", concurrency=1)]


def hand_wave() -> tuple[list[Outcome], dict[str, tuple[str, int]], dict[str, float]]:
    """The wave every metric below is computed from by hand.

    task  agent  start end  ms    status     attempts  mode     predicted  planned
    t1    a1     0     1    1000  succeeded  1         live     0.80       a1/3
    t2    a1     0     2    2000  succeeded  2 (1st: conflict) dry_run 0.85 a1/3
    t3    a2     1     4    3000  failed     1 (Boom)  live     0.70       a1/3  (ran off plan), rolled back
    t4    a2     2     3    1000  succeeded  1         mock     0.20       a2/3
    t5    a2     (skipped by the coordinator: no worker, upstream_failed)  0.50  a2/3
    """
    outs = [
        run("t1", "a1", start=0, end=1, ms=1000, mode=Mode.LIVE),
        run("t2", "a1", start=0, end=2, ms=2000, attempts=2, errors=("conflict",), mode=Mode.DRY_RUN),
        run(
            "t3",
            "a2",
            status=TaskStatus.FAILED,
            start=1,
            end=4,
            ms=3000,
            errors=("Boom",),
            error_type="Boom",
            mode=Mode.LIVE,
            tool="x",
            rolled_back=True,
        ),
        run("t4", "a2", start=2, end=3, ms=1000),
        run(
            "t5",
            "a2",
            status=TaskStatus.SKIPPED,
            start=10,
            end=10,
            ms=0,
            attempts=0,
            worker=None,
            error_type="upstream_failed",
        ),
    ]
    planned = {"t1": ("a1", 3), "t2": ("a1", 3), "t3": ("a1", 3), "t4": ("a2", 3), "t5": ("a2", 3)}
    predicted = {"t1": 0.80, "t2": 0.85, "t3": 0.70, "t4": 0.20, "t5": 0.50}
    return outs, planned, predicted


def hand_metrics() -> WaveMetrics:
    outs, planned, predicted = hand_wave()
    return compute_wave_metrics(
        3, outs, planned, predicted, AGENTS, approvals_requested=2, approvals_granted=1, conflicts=1
    )


def test_percentile_interpolates_between_ranks() -> None:
    xs = [1000.0, 2000.0, 3000.0, 1000.0]  # sorted: 1000 1000 2000 3000
    assert percentile(xs, 50) == pytest.approx(1500.0)  # rank 1.5
    assert percentile(xs, 95) == pytest.approx(2850.0)  # rank 2.85
    assert percentile(xs, 99) == pytest.approx(2970.0)  # rank 2.97
    assert percentile(xs, 0) == 1000.0 and percentile(xs, 100) == 3000.0
    assert percentile([], 50) == 0.0 and percentile([7.0], 99) == 7.0


def test_counts_rates_and_time() -> None:
    m = hand_metrics()
    assert (m.campaign_id, m.wave) == ("c1", 3)
    assert (m.tasks, m.executed, m.succeeded) == (5, 4, 3)  # t5 never ran
    assert m.by_status == {"failed": 1, "skipped": 1, "succeeded": 3}
    assert m.success_rate == pytest.approx(3 / 5)
    # executed starts 0,0,1,2 and ends 1,2,4,3: wall = 4 − 0
    assert m.wall_s == pytest.approx(4.0)
    assert m.throughput_tps == pytest.approx(4 / 4)
    # busy = (1000 + 2000 + 3000 + 1000) ms = 7 s; slots = 2 + 1 = 3; slot_s = 4 × 3 = 12
    assert m.busy_s == pytest.approx(7.0)
    assert (m.slots, m.slot_s) == (3, pytest.approx(12.0))
    assert m.agent_utilization == pytest.approx(7 / 12)


def test_load_balance_and_optimization_efficiency() -> None:
    m = hand_metrics()
    # utilization a1 = 3 s / (4 s × 2) = 0.375, a2 = 4 s / (4 s × 1) = 1.0
    assert m.agents["a1"].utilization == pytest.approx(0.375)
    assert m.agents["a2"].utilization == pytest.approx(1.0)
    # mean 0.6875, population σ 0.3125, CV 0.454545…, balance 1 − CV
    assert m.load_balance == pytest.approx(1 - 0.3125 / 0.6875)
    # capacity = 2 / 1.5 s + 1 / 2 s = 1.8333 tasks/s: a split by capacity takes 4 / 1.8333 =
    # 2.18 s, but no split beats the longest task (t3, 3 s): ideal = 3 s
    # assigned = max(max(3 s / 2, 2 s), max(4 s / 1, 3 s)) = 4 s; efficiency = 3 / 4
    assert m.ideal_makespan_s == pytest.approx(3.0)
    assert m.assigned_makespan_s == pytest.approx(4.0)
    assert m.optimization_efficiency == pytest.approx(3 / 4)
    assert m.load_agents == 2


def test_calibration_and_confidence() -> None:
    m = hand_metrics()
    # executed with a prediction: (0.80, 1) (0.85, 1) (0.70, 0) (0.20, 1); t5 was skipped
    # Brier = (0.04 + 0.0225 + 0.49 + 0.64) / 4 = 0.298125
    assert m.calibration.n == 4
    assert m.brier == pytest.approx(0.298125)
    # bins: [.8,.9): 0.80, 0.85 → mean .825, observed 1 → |.175| × 2; [.7,.8): |.7 − 0|; [.2,.3): |.2 − 1|
    # ECE = (2 × 0.175 + 0.7 + 0.8) / 4 = 0.4625
    assert m.ece == pytest.approx(0.4625)
    assert m.confidence == pytest.approx(1 - 0.4625)
    # mean predicted 2.55 / 4 = 0.6375, observed 3 / 4 → bias −0.1125
    assert m.prediction_bias == pytest.approx(-0.1125)
    assert m.running_calibration.n == 4


def test_adherence_retries_latency_rollback_conflict_live_approvals() -> None:
    m = hand_metrics()
    # t3 was planned on a1 but ran on a2: 3 of the 4 executed planned tasks on plan
    assert (m.planned, m.on_plan) == (4, 3)
    assert m.schedule_adherence == pytest.approx(0.75)
    # attempts 1 + 2 + 1 + 1 = 5, retries 1
    assert (m.attempts, m.retries) == (5, 1)
    assert m.retry_rate == pytest.approx(1 / 5)
    assert (m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms) == (
        pytest.approx(1500.0),
        pytest.approx(2850.0),
        pytest.approx(2970.0),
    )
    assert m.rolled_back == 1 and m.rollback_frequency == pytest.approx(1 / 4)
    # 1 planned conflict + t2's conflict attempt, over 5 tasks
    assert m.conflicts == 2 and m.conflict_rate == pytest.approx(2 / 5)
    # t2 (conflict); t5 was skipped after an upstream failure, counted apart
    assert m.coordination_issues == 1 and m.upstream_failed == 1
    assert m.live == 2 and m.live_execution_ratio == pytest.approx(2 / 4)
    assert m.live_min_predicted == pytest.approx(0.70)
    assert m.live_failed_unrolled == 0  # t3 failed live but was rolled back
    # live and predicted: t1 (0.80, succeeded) and t3 (0.70, failed): |0.2| and |0.7|, worst first
    assert (m.live_judged, m.live_drift_tasks) == (2, ["t3", "t1"])
    assert m.live_drift == pytest.approx(0.45) and m.live_drift_sum == pytest.approx(0.9)
    # fleet: t5 (skipped) is not judged; t3 failed
    assert (m.fleet_judged, m.fleet_failures, m.fleet_success) == (4, 1, 0.75)
    assert m.approval_rate == pytest.approx(1 / 2)
    assert m.failure_patterns == {"x:Boom": 1}


def test_planned_pairs_may_arrive_as_json_lists() -> None:
    outs, planned, predicted = hand_wave()
    as_json = {k: list(v) for k, v in planned.items()}  # what a Celery JSON message delivers
    m = compute_wave_metrics(3, outs, as_json, predicted, AGENTS)  # type: ignore[arg-type]
    assert (m.planned, m.on_plan) == (4, 3)


def test_per_agent_and_per_tool_rows() -> None:
    m = hand_metrics()
    a1, a2 = m.agents["a1"], m.agents["a2"]
    assert (a1.tasks, a1.executed, a1.succeeded, a1.attempts, a1.failed_attempts) == (2, 2, 2, 3, 1)
    assert a1.success_rate == 1.0 and a1.attempt_success_rate == pytest.approx(2 / 3)
    assert a1.mean_duration_ms == pytest.approx(1500.0)
    assert (a1.retries, a1.retried, a1.retried_succeeded) == (1, 1, 1)
    assert (a1.predicted_n, a1.predicted_sum, a1.predicted_succeeded) == (2, pytest.approx(1.65), 2)
    assert a1.throughput_tps == pytest.approx(2 / 4)
    assert a1.slot_s == pytest.approx(8.0)
    assert (a2.tasks, a2.executed, a2.succeeded) == (3, 2, 1)
    assert a2.success_rate == pytest.approx(0.5) and a2.attempt_success_rate == pytest.approx(0.5)
    assert m.tools["y"].executed == 3 and m.tools["x"].failed_attempts == 1


def test_empty_and_unplanned_waves_are_neutral() -> None:
    m = compute_wave_metrics(1, [], {}, {}, AGENTS)
    assert (m.tasks, m.success_rate, m.throughput_tps, m.wall_s) == (0, 0.0, 0.0, 0.0)
    assert (m.schedule_adherence, m.approval_rate, m.optimization_efficiency, m.load_balance) == (1, 1, 1, 1)
    assert (m.brier, m.ece, m.confidence) == (0.0, 0.0, 1.0)
    assert set(m.agents) == {"a1", "a2"}
    assert type(m).model_validate_json(m.model_dump_json()) == m


def test_running_calibration_merges_previous_waves() -> None:
    first = hand_metrics()
    outs = [run("u1", "a1", wave=4), run("u2", "a1", wave=4)]
    second = compute_wave_metrics(4, outs, {}, {"u1": 0.95, "u2": 0.95}, AGENTS, previous=[first])
    assert second.calibration.n == 2
    assert second.running_calibration.n == 6
    # Σ squared errors: 1.1925 (wave 3) + 2 × 0.05² = 1.1975 over 6 predictions
    assert second.running_calibration.brier == pytest.approx(1.1975 / 6)


def test_campaign_metrics_sum_waves_and_recompute_ratios() -> None:
    outs3, _, _ = hand_wave()
    w3 = hand_metrics()
    outs4 = [
        run("u1", "a1", start=10, end=11, ms=500, wave=4),
        run("u2", "a1", start=10, end=11, ms=500, wave=4),
    ]
    w4 = compute_wave_metrics(4, outs4, {"u1": ("a1", 4)}, {"u1": 0.95, "u2": 0.95}, AGENTS, previous=[w3])
    c = campaign_metrics([w3, w4], [*outs3, *outs4])
    assert (c.waves, c.tasks, c.executed, c.succeeded) == (2, 7, 6, 5)
    assert c.success_rate == pytest.approx(5 / 7)
    assert c.wall_s == pytest.approx(4 + 1)  # waves' wall times added
    assert c.throughput_tps == pytest.approx(6 / 5)
    # busy 7 + 1 = 8 s over slot-seconds 12 + 1 × 3
    assert c.agent_utilization == pytest.approx(8 / 15)
    assert c.retry_rate == pytest.approx(1 / 7)
    assert c.schedule_adherence == pytest.approx(4 / 5)
    assert c.calibration.n == 6 and c.brier == pytest.approx(1.1975 / 6)
    # latency over all six executed durations: 500 500 1000 1000 2000 3000 → p50 at rank 2.5
    assert c.latency_p50_ms == pytest.approx(1000.0)
    assert c.agents["a1"].executed == 4 and c.agents["a1"].success_rate == 1.0
    assert c.agents["a1"].utilization == pytest.approx((3 + 1) / (8 + 2))
    assert c.optimization_efficiency == pytest.approx((w3.ideal_makespan_s + w4.ideal_makespan_s) / (4 + 0.5))


# -- anomalies --------------------------------------------------------------------------------

TWO = [AgentSpec(id="a1", concurrency=1), AgentSpec(id="a2", concurrency=1)]


def healthy_outcomes(n: int = 10) -> list[Outcome]:
    """n tasks of 1 s alternating on a1 and a2 (concurrency 1 each), all succeed."""
    return [run(f"t{i}", "a1" if i % 2 == 0 else "a2", start=i // 2, end=i // 2 + 1) for i in range(n)]


def metrics_of(
    outs: list[Outcome],
    *,
    predicted: dict[str, float] | None = None,
    planned: dict[str, tuple[str, int]] | None = None,
    agents: list[AgentSpec] | None = None,
    conflicts: int = 0,
    previous: list[WaveMetrics] | None = None,
) -> WaveMetrics:
    predicted = {o.task_id: 1.0 for o in outs} if predicted is None else predicted
    planned = {o.task_id: (o.agent_id or "", 3) for o in outs} if planned is None else planned
    return compute_wave_metrics(
        3, outs, planned, predicted, agents or TWO, conflicts=conflicts, previous=previous or []
    )


def kinds(anomalies: list[Anomaly]) -> set[str]:
    return {a.type for a in anomalies}


def test_a_healthy_wave_has_no_anomaly_and_full_health() -> None:
    m = metrics_of(healthy_outcomes())
    assert m.optimization_efficiency == pytest.approx(1.0) and m.load_balance == pytest.approx(1.0)
    assert detect_anomalies(m, [m]) == []
    h = health(m, [])
    assert h.score == pytest.approx(100.0) and h.status == "EXCELLENT"


def failed(o: Outcome, error: str = "Boom", **kw: object) -> Outcome:
    return o.model_copy(
        update={"status": TaskStatus.FAILED, "error_type": error, **kw},
    )


def test_high_failure() -> None:
    outs = healthy_outcomes()
    outs[:3] = [failed(o, f"E{i}") for i, o in enumerate(outs[:3])]
    found = {a.type: a for a in detect_anomalies(metrics_of(outs, predicted={}), [])}
    assert "high_failure" in found
    # success 0.7: excess 0.2 over room 0.9 → 1 + round(9 × 0.222) = 3
    assert found["high_failure"].severity == 3
    assert found["high_failure"].evidence["success_rate"] == pytest.approx(0.7)
    assert "agent_failure" not in found  # 0.6 and 0.8 per agent stay above 0.5


def test_schedule_drift() -> None:
    outs = healthy_outcomes()
    planned = {o.task_id: (o.agent_id or "", 3) for o in outs}
    planned["t0"] = ("a2", 3)  # t0 ran on a1
    a = detect_anomalies(metrics_of(outs, planned=planned), [])
    assert kinds(a) == {"schedule_drift"}
    assert a[0].evidence["off_plan"] == 1


def test_confidence_drop_compares_with_the_previous_calibrated_wave() -> None:
    before = metrics_of(healthy_outcomes())  # predictions 1.0, all succeed: confidence 1
    outs = healthy_outcomes()
    outs[5:] = [failed(o) for o in outs[5:]]
    pred = {o.task_id: (0.6 if i < 5 else 0.4) for i, o in enumerate(outs)}  # bias 0, ECE 0.4
    now = metrics_of(outs, predicted=pred)
    assert now.confidence == pytest.approx(0.6) and now.prediction_bias == pytest.approx(0.0)
    found = kinds(detect_anomalies(now, [before]))
    assert "confidence_drop" in found and "prediction_drift" not in found
    assert "confidence_drop" not in kinds(detect_anomalies(now, []))  # nothing to compare with


def test_excessive_retries() -> None:
    outs = healthy_outcomes()
    outs[:3] = [o.model_copy(update={"attempts": 3}) for o in outs[:3]]
    outs[:3] = [
        o.model_copy(
            update={
                "errors": [AttemptError(attempt=k, error_type="Flaky", error_msg="", at=T0) for k in (1, 2)]
            }
        )
        for o in outs[:3]
    ]
    m = metrics_of(outs)
    assert m.retry_rate == pytest.approx(6 / 16)  # 6 retries in 7 + 9 attempts
    assert kinds(detect_anomalies(m, [])) == {"excessive_retries"}


def test_optimization_failure_and_load_imbalance_on_a_bad_split() -> None:
    # a1 has 8 slots, a2 one; equal speed; tasks split 5 / 5 → a2 is the bottleneck
    agents = [AgentSpec(id="a1", concurrency=8), AgentSpec(id="a2", concurrency=1)]
    outs = [run(f"t{i}", "a1", start=0, end=1) for i in range(5)]
    outs += [run(f"u{i}", "a2", start=i, end=i + 1) for i in range(5)]
    m = metrics_of(outs, agents=agents)
    # ideal = 10 / (8/1 + 1/1) = 1.11 s; assigned = max(5/8, 5/1) = 5 s
    assert m.optimization_efficiency == pytest.approx(10 / 9 / 5)
    assert {"optimization_failure", "load_imbalance"} <= kinds(detect_anomalies(m, []))


def test_agent_failure() -> None:
    outs = healthy_outcomes()
    outs = [failed(o, f"E{i}") if o.agent_id == "a2" and i < 9 else o for i, o in enumerate(outs)]
    found = [a for a in detect_anomalies(metrics_of(outs, predicted={}), []) if a.type == "agent_failure"]
    assert [a.agent_id for a in found] == ["a2"]
    assert found[0].evidence["success_rate"] == pytest.approx(1 / 5)


def test_coordination_issue() -> None:
    outs = healthy_outcomes()
    outs[:2] = [
        o.model_copy(
            update={
                "attempts": 2,
                "errors": [AttemptError(attempt=1, error_type="lease_lost", error_msg="", at=T0)],
            }
        )
        for o in outs[:2]
    ]
    found = kinds(detect_anomalies(metrics_of(outs), []))
    assert "coordination_issue" in found and "high_conflict" not in found  # 2 / 10 ≤ 0.5


def test_prediction_drift() -> None:
    outs = healthy_outcomes()
    a = detect_anomalies(metrics_of(outs, predicted={o.task_id: 0.5 for o in outs}), [])
    assert kinds(a) == {"prediction_drift"}
    assert a[0].evidence["bias"] == pytest.approx(-0.5)
    assert "underconfident" in a[0].message


def test_load_imbalance() -> None:
    outs = [run(f"t{i}", "a1", start=i, end=i + 1) for i in range(8)]
    outs += [run(f"u{i}", "a2", start=i, end=i + 1) for i in range(2)]
    m = metrics_of(outs)
    # utilization 8/8 and 2/8: mean 0.625, σ 0.375, balance 1 − 0.6 = 0.4
    assert m.load_balance == pytest.approx(0.4)
    assert "load_imbalance" in kinds(detect_anomalies(m, []))


def test_repeated_failures() -> None:
    outs = healthy_outcomes()
    outs[:3] = [failed(o, "ConnectError", tool="http") for o in outs[:3]]
    a = [x for x in detect_anomalies(metrics_of(outs, predicted={}), []) if x.type == "repeated_failures"]
    assert len(a) == 1
    assert a[0].evidence == {"tool": "http", "error_type": "ConnectError", "count": 3, "threshold": 3}
    assert a[0].severity == 1 + round(9 * 3 / 10)


def test_high_rollback() -> None:
    outs = healthy_outcomes()
    outs[:4] = [
        o.model_copy(update={"status": TaskStatus.ROLLED_BACK, "rolled_back": True}) for o in outs[:4]
    ]
    assert "high_rollback" in kinds(detect_anomalies(metrics_of(outs, predicted={}), []))
    outs = healthy_outcomes()
    outs[:3] = [o.model_copy(update={"rolled_back": True}) for o in outs[:3]]
    assert kinds(detect_anomalies(metrics_of(outs), [])) == set()  # 0.3 is not above 0.3


def test_high_conflict() -> None:
    found = kinds(detect_anomalies(metrics_of(healthy_outcomes(), conflicts=6), []))
    assert found == {"high_conflict"}
    assert kinds(detect_anomalies(metrics_of(healthy_outcomes(), conflicts=5), [])) == set()


def test_thresholds_come_from_the_config() -> None:
    outs = healthy_outcomes()
    outs[0] = failed(outs[0])
    m = metrics_of(outs, predicted={})
    assert "high_failure" not in kinds(detect_anomalies(m, []))  # 0.9 meets the 0.90 default
    strict = MonitorConfig(min_success_rate=0.95)
    assert "high_failure" in kinds(detect_anomalies(m, [], strict))


def test_severity_rule() -> None:
    assert severity(0.0, 0.5) == 1
    assert severity(0.5, 0.5) == 10
    assert severity(0.25, 0.5) == 1 + round(4.5)
    assert severity(2.0, 1.0) == 10


# -- health -----------------------------------------------------------------------------------


def test_health_of_the_hand_wave() -> None:
    m = hand_metrics()
    h = health(m, [])
    # components: fleet success .75 (t5 skipped is not judged), adherence .75, calibration
    # .5375, retries .8, efficiency .75, load balance .545454, rollback .75, conflict .6
    bal = 1 - 0.3125 / 0.6875
    assert h.components == pytest.approx(
        {
            "success": 0.75,
            "schedule_adherence": 0.75,
            "calibration": 0.5375,
            "retries": 0.8,
            "optimization_efficiency": 0.75,
            "load_balance": bal,
            "rollback": 0.75,
            "conflict": 0.6,
        }
    )
    # 4 executed tasks on 2 agents: load and efficiency are judged (busiest agent 4 s ≥ 1 s)
    assert h.not_judged == []
    # quality = (0.5 + 0.1 × (0.75 + 0.8 + 0.75 + 0.6) + 0.05 × (0.75 + bal)) / 1.0 (calibration
    # weighs 0); score = 100 × 0.75 × quality
    quality = 0.5 + 0.1 * (0.75 + 0.8 + 0.75 + 0.6) + 0.05 * (0.75 + bal)
    assert h.quality == pytest.approx(quality)
    assert h.score == pytest.approx(100 * 0.75 * quality)  # 64.5
    assert h.status == "FAIR" and h.wave == 3 and h.penalty == 0


def test_health_penalty_per_anomaly_severity_is_capped() -> None:
    m = hand_metrics()
    anomalies = detect_anomalies(m, [])
    # optimization_failure and load_imbalance (the scheduler's split) take no points by default
    unscored = set(MonitorConfig().unscored_anomalies)
    assert "optimization_failure" in kinds(anomalies)
    sev = sum(a.severity for a in anomalies if a.type not in unscored)
    assert sev > 0
    base = health(m, []).score
    assert health(m, anomalies).score == pytest.approx(base - min(30, sev))
    many = anomalies * 20
    assert health(m, many).penalty == 30.0
    cfg = MonitorConfig(penalty_per_severity=0.5, max_penalty=100)
    assert health(m, anomalies, cfg).score == pytest.approx(base - 0.5 * sev)
    every = MonitorConfig(unscored_anomalies=[])
    assert health(m, anomalies, every).score == pytest.approx(
        base - min(30, sum(a.severity for a in anomalies))
    )


def test_changing_a_weight_changes_the_score_by_hand() -> None:
    m = hand_metrics()
    only_success = HealthWeights(
        success=1,
        schedule_adherence=0,
        calibration=0,
        retries=0,
        optimization_efficiency=0,
        load_balance=0,
        rollback=0,
        conflict=0,
    )
    assert health(m, [], MonitorConfig(weights=only_success)).score == pytest.approx(75.0)
    # success 3, retries 1 (others 0): quality (3 + 0.8) / 4 = 0.95; 100 × 0.75 × 0.95
    w = only_success.model_copy(update={"success": 3.0, "retries": 1.0})
    assert health(m, [], MonitorConfig(weights=w)).score == pytest.approx(71.25)
    with pytest.raises(ValueError, match="must not all be zero"):
        HealthWeights(**dict.fromkeys(HealthWeights.model_fields, 0.0))


def test_health_status_bands_and_min_health() -> None:
    assert [health_status(s) for s in (100, 90, 89.9, 75, 74.9, 50, 49.9, 0)] == [
        "EXCELLENT",
        "EXCELLENT",
        "GOOD",
        "GOOD",
        "FAIR",
        "FAIR",
        "POOR",
        "POOR",
    ]
    h = health(hand_metrics(), [])
    assert below_min_health(h, 70) and not below_min_health(h, 60) and not below_min_health(h, None)


def test_write_monitoring_files(tmp_path) -> None:
    import json

    m = hand_metrics()
    anomalies = detect_anomalies(m, [])
    h = health(m, anomalies)
    paths = write_monitoring(OutputWriter(tmp_path), m, anomalies, h)
    write_monitoring(OutputWriter(tmp_path), m, anomalies, h, history=[h])
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2
    assert WaveMetrics.model_validate_json((tmp_path / "metrics.jsonl").read_text().splitlines()[0]) == m
    lines = (tmp_path / "anomalies.jsonl").read_text().splitlines()
    assert len(lines) == 2 * len(anomalies)
    agent_file = tmp_path / "wave_3" / "agent_a1" / "agent_metrics.jsonl"
    assert agent_file in paths and json.loads(agent_file.read_text())["agent_id"] == "a1"
    doc = json.loads((tmp_path / "system_health.json").read_text())
    assert doc["health"]["score"] == pytest.approx(h.score)
    assert len(doc["history"]) == 2 and doc["metrics"]["wave"] == 3
