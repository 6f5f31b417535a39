"""The feedback loop: calibration by hand, prediction checks, agent and tool records, each
learning signal from a crafted wave, the routing table, the files, and the running state."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from buddy.analysis.calibration import Calibration, bin_index
from buddy.analysis.feedback import (
    FeedbackState,
    agent_performance,
    analyze_wave,
    tool_reliability,
    validate_predictions,
)
from buddy.analysis.signals import SIGNAL_TARGETS, LearningSignal
from buddy.models import AttemptError, Mode, Outcome, TaskStatus
from buddy.outputs.analysis_files import SIGNAL_FILES, signal_path, write_feedback
from buddy.outputs.writer import OutputWriter

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
NOW = datetime(2024, 1, 1, 13, 0, 0, tzinfo=UTC)


def out(
    task_id: str,
    agent: str | None = "a1",
    *,
    status: TaskStatus = TaskStatus.SUCCEEDED,
    ms: float = 100.0,
    attempts: int = 1,
    errors: tuple[str, ...] = (),
    error_type: str | None = None,
    tool: str = "t",
    mode: Mode = Mode.MOCK,
    mode_reason: str | None = None,
    worker: str | None = "w1",
    wave: int = 1,
    rolled_back: bool = False,
) -> Outcome:
    return Outcome(
        task_id=task_id,
        campaign_id="c1",
        agent_id=agent,
        wave=wave,
        status=status,
        mode=mode,
        mode_reason=mode_reason,
        attempts=attempts,
        start_time=T0,
        end_time=T0 + timedelta(milliseconds=ms),
        duration_ms=ms,
        worker=worker,
        tool=tool,
        error_type=error_type,
        errors=[AttemptError(attempt=i + 1, error_type=e, error_msg=e, at=T0) for i, e in enumerate(errors)],
        rolled_back=rolled_back,
    )


# -- calibration ------------------------------------------------------------------------------


def test_bins_are_tenths_and_one_is_in_the_last() -> None:
    assert [bin_index(p) for p in (0.0, 0.05, 0.1, 0.3, 0.7, 0.99, 1.0)] == [0, 0, 1, 3, 7, 9, 9]


def test_brier_and_ece_by_hand() -> None:
    c = Calibration.of([(0.80, True), (0.85, True), (0.70, False), (0.20, True)])
    # Brier: (0.2² + 0.15² + 0.7² + 0.8²) / 4 = (0.04 + 0.0225 + 0.49 + 0.64) / 4
    assert c.brier == pytest.approx(0.298125)
    # ECE: bin 8 holds .80 and .85 (mean .825, observed 1), bin 7 .70 (observed 0), bin 2 .20 (observed 1)
    #      (2 × |.825 − 1| + 1 × |.7 − 0| + 1 × |.2 − 1|) / 4 = (0.35 + 0.7 + 0.8) / 4
    assert c.ece == pytest.approx(0.4625)
    assert c.bins[8].n == 2 and c.bins[8].mean_predicted == pytest.approx(0.825)
    assert (c.mean_predicted, c.observed) == (pytest.approx(0.6375), pytest.approx(0.75))


def test_perfect_and_uninformative_predictions() -> None:
    assert Calibration.of([(1.0, True), (0.0, False)]).brier == 0.0
    assert Calibration.of([(1.0, True), (0.0, False)]).ece == 0.0
    coin = Calibration.of([(0.5, True), (0.5, False)])
    assert coin.brier == pytest.approx(0.25) and coin.ece == pytest.approx(0.0)
    assert Calibration().brier == 0.0 and Calibration().ece == 0.0


def test_merge_equals_one_calibration_of_all_pairs() -> None:
    a = [(0.8, True), (0.3, False), (0.9, False)]
    b = [(0.15, True), (0.85, True)]
    merged = Calibration.of(a).merge(Calibration.of(b))
    assert merged.model_dump() == Calibration.of(a + b).model_dump()
    assert Calibration.model_validate_json(merged.model_dump_json()) == merged


def test_of_counts_what_add_counts_one_by_one() -> None:
    pairs = [(0.0, False), (0.05, True), (0.1, True), (0.55, False), (0.999, True), (1.0, True), (1.0, False)]
    one_by_one = Calibration()
    for p, y in pairs:
        one_by_one.add(p, y)
    assert Calibration.of(pairs).model_dump() == one_by_one.model_dump()
    assert [b.n for b in Calibration.of(pairs).bins] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 3]


# -- records ----------------------------------------------------------------------------------


def test_prediction_validation_per_executed_task() -> None:
    outs = [
        out("tp"),
        out("fp", status=TaskStatus.FAILED, error_type="Boom"),
        out("fn", attempts=2, errors=("Flaky",)),
        out("tn", status=TaskStatus.TIMED_OUT, error_type="Timeout"),
        out("skip", status=TaskStatus.SKIPPED, worker=None),
        out("nopred"),
    ]
    pred = {"tp": 0.9, "fp": 0.8, "fn": 0.3, "tn": 0.1, "skip": 0.9}
    v = {p.task_id: p for p in validate_predictions(outs, pred)}
    assert list(v) == ["tp", "fp", "fn", "tn"]  # skipped and unpredicted ones are not judged
    assert [v[k].verdict for k in v] == ["true_positive", "false_positive", "false_negative", "true_negative"]
    assert v["fp"].confidence_delta == pytest.approx(-0.8)
    assert v["fn"].confidence_delta == pytest.approx(0.7) and v["fn"].attempts == 2
    assert v["fp"].squared_error == pytest.approx(0.64)
    assert "overconfident" in v["fp"].error_analysis and "Boom" in v["fp"].error_analysis
    assert "underconfident" in v["fn"].error_analysis


def test_agent_performance_score_by_hand() -> None:
    outs = [
        out("a", "fast", ms=100),
        out("b", "fast", ms=300),
        out("c", "slow", ms=800),
        out("d", "slow", ms=800, status=TaskStatus.FAILED, error_type="conflict", errors=("conflict",)),
        out("e", "slow", status=TaskStatus.SKIPPED, worker=None, error_type="upstream_failed"),
    ]
    planned = {"a": ["fast", 1], "b": ("slow", 1), "c": ("slow", 1)}  # a list, as JSON delivers it
    rows = {a.agent_id: a for a in agent_performance(1, outs, {"a": 1.0, "c": 0.5}, planned)}  # type: ignore[arg-type]
    fast, slow = rows["fast"], rows["slow"]
    # fast: mean 200 ms (the fastest), success 1 → 0.6 × 1 + 0.4 × 1
    assert fast.speed_score == 1.0 and fast.performance_score == pytest.approx(1.0)
    # slow: mean 800 ms → speed 200 / 800 = 0.25, success 1 / 2 → 0.6 × 0.5 + 0.4 × 0.25 = 0.4
    assert slow.speed_score == pytest.approx(0.25) and slow.performance_score == pytest.approx(0.4)
    assert (slow.tasks, slow.executed) == (3, 2)  # the skipped task did not run
    assert fast.coordination_issues == {"off_plan": 1}  # b was planned on slow
    assert slow.coordination_issues == {"conflict": 1, "upstream_failed": 1}
    assert slow.brier == pytest.approx(0.25) and slow.mean_predicted == pytest.approx(0.5)
    assert (fast.attempts, slow.failed_attempts, fast.busy_ms) == (2, 1, pytest.approx(400.0))


def test_tool_reliability_accuracy_and_error_rate() -> None:
    outs = [
        out("a", tool="http", attempts=3, errors=("Timeout", "Timeout")),  # succeeded on the 3rd try
        out("b", tool="http", status=TaskStatus.FAILED, error_type="HTTP5xx", errors=("HTTP5xx",)),
        out("c", tool="file"),
    ]
    rows = {t.tool: t for t in tool_reliability(outs)}
    http = rows["http"]
    # accuracy = 1 succeeded / 2 tasks; error rate = 3 failed attempts / 4 attempts
    assert http.accuracy == pytest.approx(0.5) and http.error_rate == pytest.approx(0.75)
    assert http.error_types == {"HTTP5xx": 1, "Timeout": 2}
    assert rows["file"].accuracy == 1.0 and rows["file"].error_rate == 0.0


# -- signals ----------------------------------------------------------------------------------


def crafted() -> tuple[list[Outcome], dict[str, float]]:
    outs = [
        out("t1", "a1", mode=Mode.LIVE),
        out("t2", "a1", status=TaskStatus.FAILED, error_type="Boom", mode=Mode.LIVE),  # approved, failed
        out(
            "t3",
            "a2",
            attempts=2,
            errors=("lease_lost",),
            mode=Mode.DRY_RUN,
            mode_reason="confidence 0.50 < 0.60",
        ),
        out("t4", "a2", status=TaskStatus.DENIED, worker=None, error_type="approval_denied", mode=Mode.LIVE),
    ]
    return outs, {"t1": 0.9, "t2": 0.9, "t3": 0.5, "t4": 0.95}


def test_every_signal_type_from_a_crafted_wave() -> None:
    outs, pred = crafted()
    fb = analyze_wave(
        "c1",
        1,
        outs,
        pred,
        {"t1": ("a1", 1), "t2": ("a1", 1), "t3": ("a1", 1)},
        approved={"t2"},
        conflicts=[{"resource": "file:/x", "tasks": ["t3", "t9"], "resolution": "serialized"}],
        now=NOW,
    )
    by_type: dict[str, list[LearningSignal]] = {}
    for s in fb.signals:
        by_type.setdefault(s.signal_type, []).append(s)
        assert s.target_phase == SIGNAL_TARGETS[s.signal_type]
        assert s.generated_at == NOW and s.wave == 1 and s.campaign_id == "c1"
        assert 0.0 <= s.confidence <= 1.0
    assert set(by_type) == set(SIGNAL_TARGETS)
    # one per executed predicted task + one calibration summary
    kinds_ = [s.content["kind"] for s in by_type["prediction_validation"]]
    assert kinds_ == ["task", "task", "task", "calibration"]
    assert by_type["prediction_validation"][0].confidence == 1.0
    assert {s.content["agent_id"] for s in by_type["agent_performance"]} == {"a1", "a2"}
    coord = by_type["multi_agent_coordination"][0].content
    assert coord["issues"] == {"lease_lost": 1, "off_plan": 1}
    mism = by_type["approval_mismatch"][0].content
    assert mism["approved_then_failed"] == ["t2"] and mism["denied_though_confident"] == ["t4"]
    modes = by_type["execution_mode_analysis"][0].content
    assert modes["by_mode"]["live"]["tasks"] == 2 and modes["degraded"] == 1
    conflict = by_type["conflict_pattern"][0].content
    assert conflict["planned_count"] == 1 and conflict["runtime_tasks"] == ["t3"]
    heur = by_type["heuristic_feedback"][0].content
    # tool t: 2 of 3 executed succeeded → (2 + 1) / (3 + 2)
    assert heur["tool"] == "t" and heur["suggested_predicted_success"] == pytest.approx(0.6)
    # evidence confidence n / (n + 5) for the tool's 3 tasks
    assert by_type["tool_reliability"][0].confidence == pytest.approx(3 / 8)


def test_a_quiet_wave_emits_no_mismatch_conflict_or_coordination_signal() -> None:
    fb = analyze_wave("c1", 1, [out("t1"), out("t2")], {"t1": 0.9}, now=NOW)
    types = {s.signal_type for s in fb.signals}
    assert not types & {"approval_mismatch", "conflict_pattern", "multi_agent_coordination"}
    assert fb.calibration.n == 1


def test_routing_table_is_the_issues() -> None:
    routes = {k: (SIGNAL_TARGETS[k], SIGNAL_FILES[k]) for k in SIGNAL_TARGETS}
    assert set(SIGNAL_FILES) == set(SIGNAL_TARGETS)
    assert routes == {
        "heuristic_feedback": ("phase16", "heuristic_feedback.jsonl"),
        "agent_performance": ("phase18", "coordination_feedback.jsonl"),
        "multi_agent_coordination": ("phase18", "coordination_feedback.jsonl"),
        "prediction_validation": ("phase20", "prediction_validation_feedback.jsonl"),
        "tool_reliability": ("phase19", "phase22_feedback.jsonl"),
        "execution_mode_analysis": ("phase19", "phase22_feedback.jsonl"),
        "approval_mismatch": ("phase19", "phase22_feedback.jsonl"),
        "conflict_pattern": ("phase19", "phase22_feedback.jsonl"),
    }


def test_write_feedback_appends_routed_jsonl(tmp_path) -> None:
    outs, pred = crafted()
    fb = analyze_wave("c1", 1, outs, pred, approved={"t2"}, conflicts=[{"resource": "r"}], now=NOW)
    paths = write_feedback(OutputWriter(tmp_path), fb)
    write_feedback(OutputWriter(tmp_path), fb)  # appends
    all_lines = (tmp_path / "learning_signals.jsonl").read_text().splitlines()
    assert len(all_lines) == 2 * len(fb.signals)
    assert tmp_path / "feedback" / "phase16" / "heuristic_feedback.jsonl" in paths
    for kind in SIGNAL_TARGETS:
        path = signal_path(tmp_path, kind)
        rows = [LearningSignal.model_validate_json(line) for line in path.read_text().splitlines()]
        assert kind in {r.signal_type for r in rows}
        assert all(signal_path(tmp_path, r.signal_type) == path for r in rows)
    first = json.loads(all_lines[0])
    assert set(first) >= {"signal_type", "target_phase", "content", "confidence", "generated_at"}


# -- running state ----------------------------------------------------------------------------


def test_state_runs_across_waves_is_idempotent_and_json() -> None:
    s0 = FeedbackState(campaign_id="c1")
    w1 = analyze_wave(
        "c1", 1, [out("a", "a1"), out("b", "a2", status=TaskStatus.FAILED)], {"a": 0.8, "b": 0.6}, state=s0
    )
    s1 = s0.absorb(w1)
    assert s1.waves == [1] and s1.calibration.n == 2 and s0.waves == []  # absorb is pure
    assert s1.absorb(w1) == s1  # a redelivered chord body counts once
    w2 = analyze_wave("c1", 2, [out("c", "a1", wave=2)], {"c": 0.9}, state=s1)
    assert w2.running_calibration.n == 3
    s2 = FeedbackState.model_validate_json(s1.absorb(w2).model_dump_json())
    assert s2.waves == [1, 2] and s2.calibration.n == 3
    assert (s2.agents["a1"].tasks, s2.agents["a1"].succeeded, s2.agents["a2"].succeeded) == (2, 2, 0)
    assert s2.agents["a1"].predicted_sum == pytest.approx(1.7)
    assert s2.tools["t"].tasks == 3 and s2.tools["t"].laplace_success() == pytest.approx(3 / 5)
