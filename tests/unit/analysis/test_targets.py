"""The source documents' performance targets (issue 15): each met, missed and not judged, and
throughput and utilization judged only where the plan allows them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from buddy.analysis.calibration import Calibration
from buddy.analysis.health import HealthReport
from buddy.analysis.metrics import AgentWaveMetrics, CampaignMetrics, WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.analysis.targets import (
    GOALS,
    allowed_throughput,
    allowed_utilization,
    judge_targets,
    predictions_given,
)
from buddy.models import PlanTask, Target

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def camp(**kw: Any) -> CampaignMetrics:
    """A campaign that meets every target: 2 agents, 100 tasks, a load worth judging."""
    base: dict[str, Any] = {
        "campaign_id": "c",
        "waves": 1,
        "tasks": 100,
        "executed": 100,
        "succeeded": 100,
        "fleet_judged": 100,
        "fleet_failures": 0,
        "fleet_success": 1.0,
        "window_s": 2.0,
        "throughput_tps": 50.0,
        "busy_s": 8.0,
        "slots": 4,
        "slot_s": 10.0,
        "agent_utilization": 0.8,
        "load_agents": 2,
        "calibration": Calibration(n=50),
        "confidence": 0.97,
        "planned": 100,
        "on_plan": 100,
        "schedule_adherence": 1.0,
        "ideal_makespan_s": 1.9,
        "assigned_makespan_s": 2.0,
        "optimization_efficiency": 0.95,
        "agents": {a: AgentWaveMetrics(agent_id=a, wave=0, concurrency=2, executed=50) for a in ("a1", "a2")},
    }
    base.update(kw)
    return CampaignMetrics(**base)


def wave(executed: int = 100, ideal_s: float = 1.9, busy_s: float = 8.0, slots: int = 4) -> WaveMetrics:
    return WaveMetrics(
        campaign_id="c", wave=1, executed=executed, ideal_makespan_s=ideal_s, busy_s=busy_s, slots=slots
    )


def report(score: float = 95.0) -> HealthReport:
    status = "EXCELLENT" if score >= 90 else "GOOD"
    return HealthReport(
        score=score, status=status, components={}, weights={}, penalty=0.0, anomalies=0, generated_at=NOW
    )


def judged(m: CampaignMetrics | None = None, h: HealthReport | None = None, **kw: Any) -> dict[str, Target]:
    waves = kw.pop("waves", [wave()])
    out = judge_targets(camp() if m is None else m, report() if h is None else h, waves, **kw)
    assert [t.name for t in out] == list(GOALS)
    return {t.name: t for t in out}


def test_a_good_campaign_meets_every_target() -> None:
    targets = judged(predictions=100)
    assert {n: t.met for n, t in targets.items()} == dict.fromkeys(GOALS, True)
    assert targets["throughput"].value == 50.0 and targets["throughput"].unit == "tasks/s"
    assert targets["utilization"].target == "0.70–1.00"
    assert (targets["utilization"].low, targets["utilization"].high) == (0.70, 1.00)
    assert targets["health"].value == 95.0 and targets["health"].target == "≥ 90"


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("success_rate", {"fleet_failures": 11, "fleet_success": 0.89}),
        ("throughput", {"throughput_tps": 34.9}),
        ("utilization", {"agent_utilization": 0.69}),
        ("confidence", {"confidence": 0.94}),
        ("schedule_accuracy", {"on_plan": 94, "schedule_adherence": 0.94}),
        ("optimization_efficiency", {"optimization_efficiency": 0.89}),
    ],
)
def test_each_target_missed(name: str, change: dict[str, Any]) -> None:
    targets = judged(camp(**change))
    assert targets[name].met is False
    assert all(t.met for n, t in targets.items() if n != name)


def test_health_missed_and_not_judged() -> None:
    assert judged(h=report(89.9))["health"].met is False
    t = judge_targets(camp(), None, [wave()])[5]
    assert (t.name, t.met, t.value) == ("health", None, None)
    assert t.why == "no wave was analyzed"


def test_a_value_equal_to_its_goal_meets_it() -> None:
    targets = judged(
        camp(fleet_failures=10, fleet_success=1 - 10 / 100, agent_utilization=0.7, confidence=0.95)
    )
    assert targets["success_rate"].met and targets["utilization"].met and targets["confidence"].met
    assert judged(h=report(90.0))["health"].met


def test_nothing_is_judged_without_a_wave() -> None:
    targets = judge_targets(None, None)
    assert [t.name for t in targets] == list(GOALS)
    assert all(t.met is None and t.value is None and t.why == "no wave ran" for t in targets)


def test_success_is_not_judged_when_the_fleet_ran_nothing_of_its_own() -> None:
    t = judged(camp(fleet_judged=0, fleet_failures=0))["success_rate"]
    assert t.met is None and "skipped, denied or cancelled" in t.why


def test_throughput_is_not_judged_where_the_plan_does_not_allow_it() -> None:
    # a wave of 20 tasks: its window is at least 1 s, so 20 tasks/s at most
    small = judged(camp(executed=20, throughput_tps=20.0), waves=[wave(executed=20, ideal_s=0.01)])
    t = small["throughput"]
    assert t.met is None and t.value == 20.0 and "at most 20.0 tasks/s" in t.why
    # 100 tasks too long for the slots: 10 s of ideal makespan, 10 tasks/s at most
    long = judged(camp(throughput_tps=9.0), waves=[wave(ideal_s=10.0)])["throughput"]
    assert long.met is None and "at most 10.0 tasks/s" in long.why
    # nothing ran
    assert judged(camp(executed=0), waves=[])["throughput"].why == "no task ran"


def test_throughput_is_judged_and_missed_where_the_plan_allows_it() -> None:
    t = judged(camp(throughput_tps=20.0), waves=[wave(ideal_s=0.5)])["throughput"]
    assert t.met is False and "allows up to 100.0 tasks/s" in t.why
    # without the waves' metrics, the bound comes from the campaign's sums
    assert judged(camp(throughput_tps=20.0, ideal_makespan_s=0.5), waves=[])["throughput"].met is False


def test_allowed_throughput_sums_waves_with_a_one_second_floor() -> None:
    assert allowed_throughput([]) == 0.0
    assert allowed_throughput([wave(executed=0)]) == 0.0
    # 100 tasks in max(1, 0.5) s and 60 tasks in max(1, 2) s
    assert allowed_throughput([wave(100, 0.5), wave(60, 2.0)]) == pytest.approx(160 / 3)


def test_utilization_is_not_judged_on_a_small_load_or_where_the_plan_cannot_fill_the_slots() -> None:
    short = judged(camp(assigned_makespan_s=0.2))
    assert short["utilization"].met is None and "too short a load" in short["utilization"].why
    assert short["optimization_efficiency"].met is None
    one_agent = judged(camp(load_agents=1))["utilization"]
    assert one_agent.met is None and "1 capable agent(s)" in one_agent.why
    # 2 s of work on 4 slots over an ideal 1 s: at most half the slots can be busy
    assert allowed_utilization([wave(busy_s=2.0, ideal_s=1.0, slots=4)]) == pytest.approx(0.5)
    assert allowed_utilization([wave(busy_s=0.0)]) is None
    t = judged(camp(agent_utilization=0.4), waves=[wave(busy_s=2.0, ideal_s=1.0, slots=4)])["utilization"]
    assert t.met is None and "at most 0.50 of their slots" in t.why


def test_a_load_to_judge_follows_the_monitor_config() -> None:
    strict = MonitorConfig(min_makespan_s=5.0)
    t = judged(config=strict)["optimization_efficiency"]
    assert t.met is None and "5 s" in t.why


def test_confidence_needs_predictions() -> None:
    none = judged(predictions=0)["confidence"]
    assert none.met is None and none.why == "the plan gives no predicted_success"
    few = judged(camp(calibration=Calibration(n=5)))["confidence"]
    assert few.met is None and "5 executed task(s) with a prediction" in few.why
    assert judged(camp(calibration=Calibration(n=5)), config=MonitorConfig(min_calibration_tasks=5))[
        "confidence"
    ].met


def test_schedule_accuracy_needs_a_planned_task() -> None:
    t = judged(camp(planned=0, on_plan=0))["schedule_accuracy"]
    assert t.met is None and t.value is None


def test_predictions_given_counts_lines_that_state_one() -> None:
    lines = [
        PlanTask(task_id="a", tool="t", predicted_success=0.9),
        PlanTask(task_id="b", tool="t"),
        PlanTask.model_validate({"task_id": "c", "tool": "t", "predicted_success": 0.5}),
    ]
    assert predictions_given(lines) == 2


def test_targets_round_trip_as_json() -> None:
    for t in judge_targets(camp(), report(), [wave()]):
        doc = t.model_dump(mode="json")
        assert set(doc) == {"name", "target", "low", "high", "unit", "value", "met", "why"}
        assert Target.model_validate_json(t.model_dump_json()) == t
