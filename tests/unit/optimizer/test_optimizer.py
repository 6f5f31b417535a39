"""The meta-optimizer's rules, the agent tuner, pool changes, and the adaptive scheduler on a
heterogeneous fleet (a1 fast with 8 slots, a2 one slot 8× slower, a3 failing 40 %)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from buddy.analysis.calibration import Calibration
from buddy.analysis.metrics import AgentWaveMetrics, WaveMetrics
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, AttemptError, Mode, Outcome, PlanTask, TaskStatus
from buddy.optimizer.meta import MetaOptimizer, OptimizationGoal
from buddy.optimizer.scheduler import AdaptiveScheduler, SchedulerConfig
from buddy.optimizer.tuner import AgentTuner, TunedParameters, plan_pool_changes
from buddy.outputs.optimizer_md import optimizer_markdown
from buddy.plan.model import PlannedTask

T0 = datetime(2024, 1, 1, tzinfo=UTC)
G = OptimizationGoal


def wm(wave: int = 1, **kw: object) -> WaveMetrics:
    """Metrics of a wave that meets every target, with ``kw`` overriding."""
    base: dict[str, object] = {
        "wave": wave,
        "tasks": 20,
        "executed": 20,
        "succeeded": 20,
        "success_rate": 1.0,
        "fleet_judged": 20,
        "fleet_success": 1.0,
        "load_agents": 2,  # a sample worth judging for load (analysis.anomalies.load_judged)
        "assigned_makespan_s": 2.0,
        "retry_rate": 0.0,
        "load_balance": 0.9,
        "optimization_efficiency": 0.9,
        "confidence": 1.0,
    }
    return WaveMetrics.model_validate(base | kw)


# -- meta-optimizer ---------------------------------------------------------------------------


def test_no_history_balances_load() -> None:
    goal, reason = MetaOptimizer().choose([])
    assert goal is G.BALANCE_LOAD and "no wave" in reason


@pytest.mark.parametrize(
    ("overrides", "goal"),
    [
        ({"fleet_success": 0.85}, G.MAXIMIZE_SUCCESS),
        ({"retry_rate": 0.25}, G.MINIMIZE_RETRIES),
        ({"confidence": 0.80, "calibration": Calibration.of([(0.5, True)] * 10)}, G.MAXIMIZE_CONFIDENCE),
        ({"load_balance": 0.5}, G.BALANCE_LOAD),
        ({"optimization_efficiency": 0.4}, G.BALANCE_LOAD),
        ({}, G.MAXIMIZE_THROUGHPUT),
        # rule order: success before retries before balance
        ({"fleet_success": 0.5, "retry_rate": 0.9, "load_balance": 0.1}, G.MAXIMIZE_SUCCESS),
        # skipped, denied and cancelled tasks are not the fleet's failures
        ({"success_rate": 0.1, "fleet_success": 1.0}, G.MAXIMIZE_THROUGHPUT),
        # too small a sample (instant tasks) to judge the load on
        ({"load_balance": 0.1, "assigned_makespan_s": 0.01}, G.MAXIMIZE_THROUGHPUT),
        ({"retry_rate": 0.9, "load_balance": 0.1}, G.MINIMIZE_RETRIES),
        # too few predictions to judge the calibration
        ({"confidence": 0.5, "calibration": Calibration.of([(0.5, True)] * 9)}, G.MAXIMIZE_THROUGHPUT),
    ],
)
def test_rules(overrides: dict[str, object], goal: OptimizationGoal) -> None:
    got, reason = MetaOptimizer().choose([wm(1), wm(2, **overrides)])
    assert got is goal
    assert reason.startswith("wave 2:")


def test_decisions_are_deterministic_for_given_metrics() -> None:
    history = [wm(1, success_rate=0.7), wm(2, retry_rate=0.3)]
    again = [WaveMetrics.model_validate_json(m.model_dump_json()) for m in history]
    assert MetaOptimizer().choose(history) == MetaOptimizer().choose(again)
    d = MetaOptimizer().decide(history, wave=3)
    assert (d.wave, d.goal) == (3, G.MINIMIZE_RETRIES)


# -- tuner ------------------------------------------------------------------------------------


def row(agent: str = "a1", **kw: object) -> AgentWaveMetrics:
    base: dict[str, object] = {
        "agent_id": agent,
        "wave": 1,
        "concurrency": 4,
        "executed": 10,
        "succeeded": 10,
        "success_rate": 1.0,
        "utilization": 0.5,
        "mean_duration_ms": 1000.0,
    }
    return AgentWaveMetrics.model_validate(base | kw)


def tune(
    r: AgentWaveMetrics, current: TunedParameters | None = None, history: list[WaveMetrics] | None = None
):
    spec = AgentSpec(id=r.agent_id, concurrency=4)
    cur = {r.agent_id: current} if current else None
    return AgentTuner().tune([spec], history or [wm(agents={r.agent_id: r})], cur, wave=2, now=T0)


def test_concurrency_grows_when_busy_and_shrinks_when_failing() -> None:
    tuned, changes = tune(row(utilization=0.8))
    assert tuned["a1"].concurrency == 5  # +max(1, round(4 × 0.25))
    assert [c.parameter for c in changes] == ["concurrency"]
    assert (changes[0].old, changes[0].new, changes[0].wave) == (4, 5, 2)
    # the evidence: the numbers of the agent's latest wave the rule read
    ev = changes[0].evidence
    assert (ev["wave"], ev["executed"], ev["utilization"], ev["success_rate"]) == (1, 10, 0.8, 1.0)
    tuned, _ = tune(row(success_rate=0.5, succeeded=5))
    assert tuned["a1"].concurrency == 3
    tuned, changes = tune(row())
    assert tuned["a1"].concurrency == 4 and changes == [] and tuned["a1"].reason == "unchanged"
    tuned, changes = tune(row(executed=2, utilization=1.0))  # too few tasks to judge
    assert changes == []


def test_retries_follow_whether_they_help() -> None:
    tuned, _ = tune(row(retried=4, retried_succeeded=0))
    assert tuned["a1"].max_retries == 2  # 3 − 1: retries did not help
    tuned, _ = tune(row(retried=5, retried_succeeded=4))
    assert tuned["a1"].max_retries == 4  # they help, and one retried task still failed
    tuned, _ = tune(row(retried=5, retried_succeeded=5))
    assert tuned["a1"].max_retries == 3


def test_timeout_and_batch_size() -> None:
    tuned, changes = tune(row(latency_p99_ms=4000.0, mean_duration_ms=20.0))
    assert tuned["a1"].timeout_s == 12.0  # 3 × 4 s
    assert tuned["a1"].batch_size == 12  # floor(0.25 s / 0.02 s)
    assert {c.parameter for c in changes} == {"timeout_s", "batch_size"}
    cur = tuned["a1"]
    tuned, changes = tune(row(latency_p99_ms=4400.0, mean_duration_ms=20.0), current=cur)
    assert changes == []  # 13.2 s is within 20 % of 12 s
    tuned, _ = tune(row(latency_p99_ms=100.0))
    assert tuned["a1"].timeout_s == 5.0  # floor


def test_confidence_weight_from_calibration_in_the_large() -> None:
    r = row(predicted_n=10, predicted_sum=9.0, predicted_succeeded=6)
    tuned, changes = tune(r)
    assert tuned["a1"].confidence_weight == pytest.approx(6 / 9, abs=1e-3)
    assert "6 of 10 predicted tasks" in changes[-1].reason
    tuned, _ = tune(row(predicted_n=10, predicted_sum=5.0, predicted_succeeded=10))
    assert tuned["a1"].confidence_weight == 1.0  # never above 1


def test_plan_pool_changes() -> None:
    tuned = {
        "a1": TunedParameters(agent_id="a1", concurrency=6, max_retries=3),
        "a2": TunedParameters(agent_id="a2", concurrency=1, max_retries=3),
        "a3": TunedParameters(agent_id="a3", concurrency=2, max_retries=3),
    }
    assert plan_pool_changes({"a1": 4, "a2": 2, "a3": 2, "a4": 9}, tuned) == {"a1": 2, "a2": -1}


# -- adaptive scheduler -----------------------------------------------------------------------

FLEET = [
    AgentSpec(id="a1", concurrency=8),
    AgentSpec(id="a2", concurrency=1),
    AgentSpec(id="a3", concurrency=8),
]
ALL = {"a1", "a2", "a3"}


def observed_wave(a3_fail_share: float = 0.4, wave: int = 1, *, transient: bool = False) -> WaveMetrics:
    """30 tasks per agent: a1 100 ms, a2 800 ms on one slot (8× slower per slot), a3 100 ms
    with ``a3_fail_share`` of its tasks failing one attempt (``transient``: the retry succeeds)."""
    outs = []
    for i in range(30):
        for aid, ms in (("a1", 100.0), ("a2", 800.0), ("a3", 100.0)):
            fail = aid == "a3" and i < round(30 * a3_fail_share)
            outs.append(
                Outcome(
                    task_id=f"{aid}-{wave}-{i}",
                    campaign_id="c",
                    agent_id=aid,
                    wave=wave,
                    status=TaskStatus.FAILED if fail and not transient else TaskStatus.SUCCEEDED,
                    mode=Mode.MOCK,
                    attempts=2 if fail and transient else 1,
                    start_time=T0,
                    end_time=T0 + timedelta(seconds=24),
                    duration_ms=ms,
                    worker="w",
                    tool="t",
                    errors=[AttemptError(attempt=1, error_type="Flaky", error_msg="", at=T0)] if fail else [],
                )
            )
    return compute_wave_metrics(wave, outs, {}, {}, FLEET)


def planned(
    n: int, *, wave: int = 2, pinned: dict[int, str] | None = None, tool: str = "t"
) -> list[PlannedTask]:
    pinned = pinned or {}
    return [
        PlannedTask(
            PlanTask(task_id=f"n{i}", tool=tool, confidence=0.5),
            i + 1,
            wave,
            pinned.get(i, FLEET[i % 3].id),  # the static plan: round robin
            i in pinned,
            [],
            None,
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("transient", [False, True])
def test_heterogeneous_fleet_routes_most_work_to_the_fast_agent(transient: bool) -> None:
    s = AdaptiveScheduler.from_history([observed_wave(transient=transient)])
    # attempt success: 18 of 30 attempts, or (transient) 30 of 42
    assert s.estimates["a3"].success == pytest.approx(30 / 42 if transient else 0.6)
    assert s.estimates["a2"].duration_s == pytest.approx(0.8)
    assert s.degraded() == {"a3"}
    tasks = planned(100)
    new, adjustments = s.assign(tasks, FLEET, ALL)
    share = Counter(t.agent for t in new)
    assert share["a1"] > 60
    assert share["a3"] < 15
    assert share["a2"] < share["a1"] / 8
    assert [t.task_id for t in new] == [t.task_id for t in tasks]  # input order kept
    moved = {a.task_id for a in adjustments}
    assert moved == {t.task_id for t, n in zip(tasks, new, strict=True) if t.agent != n.agent}
    assert all(a.reason for a in adjustments)


@pytest.mark.parametrize("goal", [None, *OptimizationGoal])
def test_every_goal_keeps_the_fleet_property(goal: OptimizationGoal | None) -> None:
    s = AdaptiveScheduler.from_history([observed_wave()])
    share = Counter(t.agent for t in s.assign(planned(100), FLEET, ALL, goal=goal)[0])
    assert share["a1"] > 60 and share["a3"] < 15


def test_a_degraded_agent_gets_one_probe_and_recovers() -> None:
    s = AdaptiveScheduler.from_history([observed_wave()])
    new, adj = s.assign(planned(100), FLEET, ALL)
    probes = [a for a in adj if a.to_agent == "a3"]
    assert len(probes) <= 1 and sum(t.agent == "a3" for t in new) == 1
    assert all("probe" in a.reason for a in probes)
    few, _ = s.assign(planned(10), FLEET, ALL)  # fewer than 20 tasks: no probe
    assert not any(t.agent == "a3" for t in few)
    s.observe(observed_wave(a3_fail_share=0.0, wave=2))
    # success 0.5 × 1.0 + 0.5 × 0.6 = 0.8 ≥ 0.75
    assert s.estimates["a3"].success == pytest.approx(0.8)
    assert s.degraded() == set()
    share = Counter(t.agent for t in s.assign(planned(100), FLEET, ALL)[0])
    assert share["a3"] > 10  # back in service, still weighted down by 0.8²


def test_success_matters_more_under_maximize_success() -> None:
    s = AdaptiveScheduler.from_history([observed_wave(a3_fail_share=0.2)])  # a3 at 0.8: not degraded
    assert s.degraded() == set()
    fast = Counter(t.agent for t in s.assign(planned(200), FLEET, ALL, goal=G.MAXIMIZE_THROUGHPUT)[0])
    safe = Counter(t.agent for t in s.assign(planned(200), FLEET, ALL, goal=G.MAXIMIZE_SUCCESS)[0])
    assert safe["a3"] < fast["a3"]


def test_pinned_tasks_stay_unless_their_agent_is_unhealthy_or_degraded() -> None:
    s = AdaptiveScheduler.from_history([observed_wave()])
    tasks = planned(6, pinned={0: "a2", 1: "a3", 2: "a1"})
    new, adj = s.assign(tasks, FLEET, {"a1", "a3"})  # a2 has no live worker
    assert new[2].agent == "a1" and new[2].pinned
    by_task = {a.task_id: a for a in adj}
    assert new[0].agent == "a1" and "pinned, but a2 is unhealthy" in by_task["n0"].reason
    assert new[1].agent == "a1" and "pinned, but a3 is degraded" in by_task["n1"].reason
    assert by_task["n0"].pinned and by_task["n0"].from_agent == "a2"


def test_a_pin_stays_when_no_other_agent_offers_the_tool() -> None:
    fleet = [AgentSpec(id="a1", concurrency=8, tools=["t"]), AgentSpec(id="a2", concurrency=1)]
    s = AdaptiveScheduler()
    tasks = planned(1, pinned={0: "a2"}, tool="special")
    new, adj = s.assign(tasks, fleet, {"a1"})
    assert new[0].agent == "a2" and adj == []


def test_unpinned_tasks_go_only_to_agents_offering_their_tool() -> None:
    fleet = [AgentSpec(id="a1", concurrency=8, tools=["t"]), AgentSpec(id="a2", concurrency=1)]
    new, _ = AdaptiveScheduler().assign(planned(10, tool="other"), fleet, {"a1", "a2"})
    assert {t.agent for t in new} == {"a2"}


def test_without_observations_work_is_split_by_concurrency() -> None:
    fleet = [AgentSpec(id="a1", concurrency=3), AgentSpec(id="a2", concurrency=1)]
    new, _ = AdaptiveScheduler().assign(planned(40), fleet, {"a1", "a2"})
    assert Counter(t.agent for t in new) == {"a1": 30, "a2": 10}


def test_assignment_is_deterministic() -> None:
    a = AdaptiveScheduler.from_history([observed_wave()]).assign(planned(50), FLEET, ALL)
    b = AdaptiveScheduler.from_history([observed_wave()]).assign(planned(50), FLEET, ALL)
    assert [t.agent for t in a[0]] == [t.agent for t in b[0]]
    assert [x.model_dump(exclude={"at"}) for x in a[1]] == [x.model_dump(exclude={"at"}) for x in b[1]]


def test_ewma_alpha() -> None:
    s = AdaptiveScheduler(SchedulerConfig(alpha=0.25))
    s.observe(observed_wave())
    s.observe(observed_wave(a3_fail_share=0.0, wave=2))
    assert s.estimates["a3"].success == pytest.approx(0.25 * 1.0 + 0.75 * 0.6)
    assert s.estimates["a3"].observations == 2


def test_optimizer_markdown() -> None:
    s = AdaptiveScheduler.from_history([observed_wave()])
    _, adj = s.assign(planned(30), FLEET, ALL)
    _, changes = AgentTuner().tune(FLEET, [observed_wave()], wave=2, now=T0)
    md = optimizer_markdown([MetaOptimizer().decide([observed_wave()], wave=2)], changes, adj)
    assert "maximize_success" in md and "| 2 | a2 | a1 |" in md
    assert "no change" in optimizer_markdown([], [], [])
