"""Issue 14, "Health cries wolf": the score means the fleet's health, anomalies need a sample.

Each test pins one behaviour the issue reported wrong: an all-success campaign scoring FAIR,
a one-task wave raising ``load_imbalance``, a correct ``skipped`` making a wave POOR,
``unsafe_escalation`` firing for ``noop``, a one-task wave at thousands of tasks/s,
``--min-health 90`` aborting an all-success campaign, "efficiency 0.50 < 0.50", and the
campaign's rollbacks disagreeing with ``execution_summary.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import fakeredis
import pytest

from buddy.analysis.anomalies import Anomaly, detect_anomalies, pair
from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.health import HealthReport, below_min_health, health
from buddy.analysis.metrics import WaveMetrics, throughput_window
from buddy.analysis.monitor import MonitorConfig
from buddy.analysis.wave import TaskFacts, WaveInputs, analyze, store_inputs, task_facts
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, Mode, Outcome, PlanTask, ResourceClaim, Risk, TaskStatus
from buddy.plan.model import PlannedTask
from buddy.state.keys import Keys
from buddy.state.store import Store
from buddy.tools.registry import default_registry

T0 = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
S = TaskStatus
TWO = [AgentSpec(id="a1", concurrency=2), AgentSpec(id="a2", concurrency=2)]
THREE = [*TWO, AgentSpec(id="a3", concurrency=2)]


def run(
    task_id: str,
    agent: str = "a1",
    status: TaskStatus = S.SUCCEEDED,
    *,
    start: float = 0.0,
    ms: float = 0.2,
    mode: Mode = Mode.MOCK,
    tool: str = "noop",
    worker: str | None = "w1",
    wave: int = 1,
    error_type: str | None = None,
    rolled_back: bool = False,
) -> Outcome:
    """An outcome that started ``start`` s after T0 and lasted ``ms`` milliseconds."""
    if error_type is None and status in (S.FAILED, S.TIMED_OUT, S.LOST, S.NEEDS_REVIEW):
        error_type = "Boom"
    return Outcome(
        task_id=task_id,
        campaign_id="c1",
        agent_id=agent,
        wave=wave,
        status=status,
        mode=mode,
        attempts=1 if worker else 0,
        start_time=T0 + timedelta(seconds=start),
        end_time=T0 + timedelta(seconds=start, milliseconds=ms),
        duration_ms=ms,
        worker=worker,
        tool=tool,
        error_type=error_type,
        rolled_back=rolled_back,
    )


def analyzed(
    outs: Sequence[Outcome],
    *,
    agents: Sequence[AgentSpec] = TWO,
    predicted: float | dict[str, float] = 0.5,
    wave: int = 1,
    harmless: Sequence[str] = (),
    config: MonitorConfig | None = None,
    previous: Sequence[WaveMetrics] = (),
) -> tuple[WaveMetrics, list[Anomaly], HealthReport]:
    """What the chord body computes for one wave: metrics, anomalies, health."""
    preds = predicted if isinstance(predicted, dict) else {o.task_id: predicted for o in outs}
    planned = {o.task_id: (o.agent_id or "", wave) for o in outs}
    m = compute_wave_metrics(wave, outs, planned, preds, agents, previous=previous, harmless=harmless)
    a = detect_anomalies(m, previous, config)
    return m, a, health(m, a, config)


def kinds(anomalies: Sequence[Anomaly]) -> set[str]:
    return {a.type for a in anomalies}


def spread(n: int, agents: Sequence[AgentSpec] = TWO, ms: float = 0.2) -> list[Outcome]:
    """``n`` succeeded tasks of ``ms`` milliseconds, round robin over ``agents``."""
    return [run(f"t{i}", agents[i % len(agents)].id, ms=ms) for i in range(n)]


# -- all success on a healthy fleet: ≥ 90 whatever the size and the predictions ----------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 57, 400])
@pytest.mark.parametrize("predicted", [0.0, 0.5, 0.9, 1.0])
def test_all_success_scores_excellent_whatever_size_and_predictions(n: int, predicted: float) -> None:
    _, anomalies, h = analyzed(spread(n), predicted=predicted)
    assert h.score >= 90 and h.status == "EXCELLENT"
    # the plan's calibration is reported, not scored
    assert h.components["calibration"] == pytest.approx(1 - abs(1 - predicted))
    assert kinds(anomalies) <= {"prediction_drift"}
    assert h.penalty == 0
    assert not below_min_health(h, 90)  # --min-health 90 does not abort


def test_the_two_task_mock_plan_of_the_issue_scores_excellent() -> None:
    """It scored 64 (FAIR): calibration 0.5, a 5,000 tasks/s throughput, load judged on 2 tasks."""
    m, anomalies, h = analyzed([run("a", "a1"), run("b", "a2", start=0.001)], agents=THREE)
    assert anomalies == []
    assert h.score == pytest.approx(100.0) and h.status == "EXCELLENT"
    assert h.not_judged == ["optimization_efficiency", "load_balance"]
    assert m.throughput_tps <= 2.0


def test_an_all_success_campaign_raises_no_anomaly_and_scores_excellent() -> None:
    """Three waves, well-predicted tasks of 0.5–2 s on two agents, the campaign too."""
    waves: list[WaveMetrics] = []
    everything: list[Outcome] = []
    reports: list[HealthReport] = []
    for n in (1, 2, 3):
        outs = [
            run(f"w{n}t{i}", "a1" if i % 2 else "a2", start=(i // 4) * 2.0, ms=500 + 100 * (i % 4), wave=n)
            for i in range(24)
        ]
        m, anomalies, h = analyzed(outs, predicted=0.97, wave=n, previous=waves)
        assert anomalies == [], [a.message for a in anomalies]
        assert h.not_judged == []  # 24 tasks on 2 agents, seconds of work: load is judged
        assert h.status == "EXCELLENT"
        waves.append(m)
        everything += outs
        reports.append(h)
    cm = campaign_metrics(waves, everything)
    final = health(cm, [])
    assert final.score >= 90 and final.status == "EXCELLENT"


# -- failures lower the score in proportion; skipped, denied, cancelled do not ----------------


def test_each_failure_lowers_the_score_in_proportion() -> None:
    scores = []
    for k in range(6):
        outs = spread(20)
        outs[:k] = [
            o.model_copy(update={"status": S.FAILED, "error_type": f"E{i}"}) for i, o in enumerate(outs[:k])
        ]
        scores.append(analyzed(outs, predicted={})[2])
    base = scores[0].score
    assert base == pytest.approx(100.0)
    # no anomaly up to 2 failures of 20 (success 0.90 meets the target): 5 points per failure
    assert [round(h.score, 6) for h in scores[:3]] == [100.0, 95.0, 90.0]
    assert all(a.score > b.score for a, b in pairwise(scores))


@pytest.mark.parametrize("bad", [S.FAILED, S.TIMED_OUT, S.LOST, S.NEEDS_REVIEW])
def test_thirty_percent_failures_score_fair_or_poor(bad: TaskStatus) -> None:
    outs = spread(20, ms=800)
    for i in range(6):  # 30 %
        worker = None if bad is S.LOST else "w1"
        outs[i] = outs[i].model_copy(update={"status": bad, "error_type": f"E{i}", "worker": worker})
    m, anomalies, h = analyzed(outs, predicted=0.9)
    assert m.fleet_success == pytest.approx(0.7)
    assert "high_failure" in kinds(anomalies)
    assert h.status in ("FAIR", "POOR") and h.score <= 70
    cm = campaign_metrics([m], outs)
    assert health(cm, anomalies).status in ("FAIR", "POOR")


@pytest.mark.parametrize("status", [S.SKIPPED, S.DENIED, S.CANCELLED])
def test_tasks_the_fleet_did_not_run_are_not_its_failures(status: TaskStatus) -> None:
    outs = [*spread(4), run("x", "a2", status, worker=None, error_type="upstream_failed")]
    m, anomalies, h = analyzed(outs)
    assert (m.fleet_judged, m.fleet_failures, m.fleet_success) == (4, 0, 1.0)
    assert m.coordination_issues == 0
    assert kinds(anomalies) == set()
    assert h.status == "EXCELLENT"


def test_a_wave_whose_only_task_was_correctly_skipped_is_not_poor() -> None:
    """It scored 44 (POOR): a success rate of 0, and the skip counted as a coordination issue."""
    m, anomalies, h = analyzed([run("x", "a1", S.SKIPPED, worker=None, error_type="upstream_failed")])
    assert m.upstream_failed == 1 and m.coordination_issues == 0
    assert anomalies == []
    assert h.status == "EXCELLENT"


def test_a_failure_undone_by_its_attempt_is_a_failure_a_compensated_success_is_not() -> None:
    undone = run("u", "a1", S.ROLLED_BACK, error_type="Boom", rolled_back=True)
    compensated = run("c", "a2", S.ROLLED_BACK, rolled_back=True)  # after an abort: no error
    m, _, _ = analyzed([undone, compensated, *spread(2)])
    assert (m.fleet_judged, m.fleet_failures) == (4, 1)
    assert m.rolled_back == 2


# -- minimum samples: load, efficiency, throughput ---------------------------------------------


def test_a_one_task_wave_raises_no_load_anomaly() -> None:
    """It raised load_imbalance at severity 10: one agent busy, the other idle."""
    m, anomalies, h = analyzed([run("t", "a1", ms=5000)], predicted=1.0)
    assert m.load_balance < 0.5  # the number is what it is ...
    assert anomalies == []  # ... but one task is no sample to judge load on
    assert set(h.not_judged) == {"optimization_efficiency", "load_balance"}
    assert h.score == pytest.approx(100.0)


def test_load_is_judged_from_two_tasks_per_agent_in_service() -> None:
    # a1 does everything; a2 (in service, same tools) idles: 2 agents × 2 = 4 tasks needed
    few = [run(f"t{i}", "a1", start=i, ms=1000) for i in range(3)]
    assert kinds(analyzed(few, predicted=1.0)[1]) == set()
    many = [run(f"t{i}", "a1", start=i, ms=1000) for i in range(4)]
    assert {"load_imbalance", "optimization_failure"} <= kinds(analyzed(many, predicted=1.0)[1])


def test_instant_tasks_are_not_judged_on_load() -> None:
    """Mock tasks of 0.2 ms measure dispatch noise: not judged below 1 s of the busiest agent."""
    outs = [run(f"t{i}", "a1") for i in range(50)] + [run("u", "a2")]
    m, anomalies, h = analyzed(outs, predicted=1.0)
    assert m.optimization_efficiency < 0.9 and m.load_balance < 0.9
    assert anomalies == [] and h.status == "EXCELLENT"


def test_agents_that_do_not_offer_the_wave_s_tools_are_not_idle() -> None:
    agents = [*TWO, AgentSpec(id="a3", tools=["http.request"], concurrency=2)]
    outs = [
        run(f"t{i}", "a1" if i % 2 else "a2", start=i // 2, ms=1000, tool="file.sha256") for i in range(12)
    ]
    m, anomalies, _ = analyzed(outs, agents=agents, predicted=1.0)
    assert m.load_agents == 2 and not m.agents["a3"].capable
    assert m.load_balance == pytest.approx(1.0)
    assert anomalies == []


def test_a_one_task_wave_does_not_report_thousands_of_tasks_per_second() -> None:
    """It reported 5,464 tasks/s: one task of 0.183 ms over a window of 0.183 ms."""
    m, _, _ = analyzed([run("t", ms=0.183)])
    assert m.wall_s == pytest.approx(0.000183)  # the execution window, as the wave summary's
    assert m.window_s == pytest.approx(1.0)  # the throughput window is at least 1 s
    assert m.throughput_tps == pytest.approx(1.0)
    assert m.agents["a1"].throughput_tps == pytest.approx(1.0)


def test_throughput_window_runs_from_the_wave_s_dispatch() -> None:
    outs = [run(f"t{i}", start=2.0 + i, ms=1000) for i in range(4)]  # ends at T0 + 6 s
    sent = T0
    m = compute_wave_metrics(1, outs, {}, {}, TWO, sent_at=sent)
    assert m.wall_s == pytest.approx(4.0) and m.window_s == pytest.approx(6.0)
    assert m.throughput_tps == pytest.approx(4 / 6)
    # no dispatch time: from the first start; a dispatch after the first start (clocks): likewise
    assert compute_wave_metrics(1, outs, {}, {}, TWO).window_s == pytest.approx(4.0)
    late = T0 + timedelta(seconds=3)
    assert throughput_window(4, outs[0].start_time, outs[-1].end_time, late) == pytest.approx(4.0)
    assert throughput_window(0, None, None, sent) == 0.0


# -- optimization_failure compares honestly ----------------------------------------------------


def bad_split() -> WaveMetrics:
    agents = [AgentSpec(id="a1", concurrency=8), AgentSpec(id="a2", concurrency=1)]
    outs = [run(f"t{i}", "a1", ms=1000) for i in range(5)]
    outs += [run(f"u{i}", "a2", start=i, ms=1000) for i in range(5)]
    return compute_wave_metrics(1, outs, {}, {}, agents)


def test_an_efficiency_equal_to_its_threshold_is_not_an_anomaly() -> None:
    m = bad_split()
    eff = m.optimization_efficiency  # 10/9 s / 5 s
    equal = MonitorConfig(min_optimization_efficiency=eff, min_load_balance=0.0)
    assert "optimization_failure" not in kinds(detect_anomalies(m, [], equal))
    # a ratio equal to the threshold in decimal, not in binary, is not below it either
    m2 = m.model_copy(update={"optimization_efficiency": 0.3 * 3 / 3})
    assert "optimization_failure" not in kinds(
        detect_anomalies(m2, [], MonitorConfig(min_optimization_efficiency=0.30000000000000004))
    )


def test_an_efficiency_just_below_its_threshold_says_so_with_enough_digits() -> None:
    m = bad_split().model_copy(update={"optimization_efficiency": 0.4996})
    found = [
        a
        for a in detect_anomalies(m, [], MonitorConfig(min_optimization_efficiency=0.5))
        if a.type == "optimization_failure"
    ]
    assert len(found) == 1
    assert "0.500 < 0.500" not in found[0].message and "0.50 < 0.50" not in found[0].message
    assert "0.4996 < 0.5000" in found[0].message
    assert pair(0.5, 0.5) == ("0.50", "0.50") and pair(0.123, 0.5) == ("0.12", "0.50")


def test_optimization_efficiency_defaults_to_the_seeds_target() -> None:
    assert MonitorConfig().min_optimization_efficiency == 0.90
    found = kinds(detect_anomalies(bad_split(), []))
    assert "optimization_failure" in found


# -- unsafe_escalation (Phase 24) --------------------------------------------------------------


def live(n: int, tool: str = "file.write", *, fail: int | None = None) -> list[Outcome]:
    """``n`` live tasks of ``tool``; all fail (``fail`` None) or the first ``fail`` of them."""
    k = n if fail is None else fail
    return [
        run(f"l{i}", "a1" if i % 2 else "a2", S.FAILED if i < k else S.SUCCEEDED, mode=Mode.LIVE, tool=tool)
        for i in range(n)
    ]


def test_five_live_executions_off_their_prediction_lock_the_system() -> None:
    outs = live(5)  # predicted 0.9, all failed: drift 0.9
    m, anomalies, h = analyzed(outs, predicted=0.9)
    found = [a for a in anomalies if a.type == "unsafe_escalation"]
    assert len(found) == 1
    a = found[0]
    assert a.severity == 7 and a.action == "lock"
    assert "lock" in a.recommended_action
    assert a.evidence["drift"] == pytest.approx(0.9)
    assert a.evidence["live_executions"] == 5 and a.evidence["threshold"] == 0.4
    assert sorted(a.evidence["tasks"]) == [f"l{i}" for i in range(5)]
    assert all(x.action == "none" for x in anomalies if x is not a)
    # the plan's predictions are not the fleet's health: no points for it
    assert health(m, [x for x in anomalies if x is not a]).score == pytest.approx(h.score)


def test_four_live_executions_are_not_enough() -> None:
    assert "unsafe_escalation" not in kinds(analyzed(live(4), predicted=0.9)[1])


def test_a_drift_of_exactly_the_threshold_is_not_unsafe() -> None:
    # predicted 0.6, all succeed: |0.6 − 1| = 0.4 each
    outs = [o.model_copy(update={"status": S.SUCCEEDED, "error_type": None}) for o in live(6)]
    m, anomalies, _ = analyzed(outs, predicted=0.6)
    assert m.live_drift == pytest.approx(0.4)
    assert "unsafe_escalation" not in kinds(anomalies)


def test_the_evidence_lists_at_most_twenty_tasks_worst_first() -> None:
    outs = live(30, fail=25)
    preds = {o.task_id: 0.9 for o in outs}
    _, anomalies, _ = analyzed(outs, predicted=preds)
    a = next(x for x in anomalies if x.type == "unsafe_escalation")
    assert len(a.evidence["tasks"]) == 20 and a.evidence["live_executions"] == 30
    assert set(a.evidence["tasks"]) <= {f"l{i}" for i in range(25)}  # |0.9 − 0| before |0.9 − 1|
    assert a.evidence["drift"] == pytest.approx((25 * 0.9 + 5 * 0.1) / 30)


def test_live_noop_and_flaky_with_bad_predictions_are_not_unsafe() -> None:
    """It fired for noop and flaky: LOW-risk tools without effects."""
    outs = live(6, "noop") + [
        o.model_copy(update={"task_id": f"f{i}", "tool": "flaky"}) for i, o in enumerate(live(6))
    ]
    harmless = [o.task_id for o in outs]
    m, anomalies, _ = analyzed(outs, predicted=0.95, harmless=harmless)
    assert m.live == 12 and m.live_judged == 0
    assert "unsafe_escalation" not in kinds(anomalies)


def planned(
    task_id: str, tool: str, args: dict[str, object], claims: Sequence[ResourceClaim] = ()
) -> PlannedTask:
    return PlannedTask(
        task=PlanTask(task_id=task_id, tool=tool, args=args), line=1, wave=1, agent="a1", pinned=False,
        claims=list(claims),
    )  # fmt: skip


def test_task_facts_come_from_the_tool_contracts() -> None:
    tasks = [
        planned("n", "noop", {}),
        planned("f", "flaky", {"fail_first": 1}),
        planned("s", "sleep", {"seconds": 0.1}),
        planned("h", "file.sha256", {"path": "x"}, [ResourceClaim(name="file:x", mode="read")]),
        planned("w", "file.write", {"path": "x", "content": "y"}, [ResourceClaim(name="file:x")]),
        planned("sh", "shell", {"argv": ["true"]}),
        planned("low-but-writes", "noop", {}, [ResourceClaim(name="shared", mode="write")]),
        planned("unknown", "no.such.tool", {}),
    ]
    facts = task_facts(tasks, default_registry())
    assert {t for t, f in facts.items() if f.harmless} == {"n", "f", "s", "h"}
    assert facts["w"].risk is Risk.MEDIUM and facts["w"].effects
    assert facts["sh"].risk is Risk.HIGH
    assert facts["low-but-writes"] == TaskFacts(tool="noop", risk=Risk.LOW, effects=True, predicted=False)
    assert "unknown" not in facts  # judged as if it could do harm
    # a line without predicted_success has the default 0.5: no prediction to judge
    assert not facts["w"].predicted and not facts["w"].judged


def test_only_stated_predictions_are_judged_for_unsafe_escalation() -> None:
    task = PlanTask(task_id="w", tool="file.write", args={"path": "x", "content": "y"}, predicted_success=0.9)
    stated = PlannedTask(task=task, line=1, wave=1, agent="a1", pinned=False, claims=[])
    facts = task_facts([stated], default_registry())
    assert facts["w"].predicted and facts["w"].judged


def test_the_chord_body_reads_the_facts_and_dispatch_time_from_the_wave_inputs() -> None:
    store = Store(fakeredis.FakeRedis())
    outs = live(6, "noop") + [
        o.model_copy(update={"task_id": f"w{i}"}) for i, o in enumerate(live(6, "file.write"))
    ]
    for o in outs:
        store.r.hset(Keys.outcomes("c1"), o.task_id, o.model_dump_json())
    facts = {o.task_id: TaskFacts(tool="noop", risk=Risk.LOW, effects=False) for o in outs[:6]}
    facts |= {o.task_id: TaskFacts(tool="file.write", risk=Risk.MEDIUM, effects=True) for o in outs[6:]}
    inputs = WaveInputs(
        planned={o.task_id: (o.agent_id or "", 1) for o in outs},
        predicted={o.task_id: 0.9 for o in outs},
        agents=TWO,
        facts=facts,
        sent_at=T0 - timedelta(seconds=2),
    )
    store_inputs(store, "c1", 1, WaveInputs.model_validate_json(inputs.model_dump_json()))
    report = analyze(store, "c1", 1)
    assert report.metrics.live_judged == 6  # the file.write ones
    assert report.metrics.window_s == pytest.approx(2.0002)
    a = next(x for x in report.anomalies if x.type == "unsafe_escalation")
    assert a.action == "lock" and sorted(a.evidence["tasks"]) == [f"w{i}" for i in range(6)]


def test_inputs_stored_by_an_older_version_judge_every_live_task() -> None:
    old = WaveInputs.model_validate({"planned": {}, "predicted": {}, "agents": []})
    assert old.facts == {} and old.sent_at is None
    assert (
        Anomaly.model_validate(
            {
                "type": "high_failure",
                "severity": 3,
                "message": "m",
                "recommended_action": "r",
                "detected_at": T0,
            }
        ).action
        == "none"
    )


# -- the campaign ------------------------------------------------------------------------------


def test_campaign_rollbacks_count_compensations_after_an_abort() -> None:
    """system_health.json agrees with execution_summary.json's count of rolled_back."""
    outs = spread(6, ms=500)
    outs[5] = run("t5", "a2", S.ROLLED_BACK, error_type="Boom", rolled_back=True)  # its attempt undid it
    m, _, _ = analyzed(outs)
    assert m.rolled_back == 1
    # after the wave, an abort compensated t0 and t1 (succeeded → rolled_back, no error)
    final = [
        o.model_copy(update={"status": S.ROLLED_BACK, "rolled_back": True})
        if o.task_id in ("t0", "t1")
        else o
        for o in outs
    ]
    cm = campaign_metrics([m], final)
    assert cm.rolled_back == 3 == cm.by_status["rolled_back"]
    assert cm.rollback_frequency == pytest.approx(3 / 6)
    assert (cm.fleet_judged, cm.fleet_failures) == (6, 1)  # a compensation is no failure


def test_campaign_penalty_is_the_mean_of_its_waves() -> None:
    waves, everything, anomalies = [], [], []
    for n in (1, 2):
        outs = [run(f"w{n}t{i}", "a1" if i % 2 else "a2", wave=n) for i in range(10)]
        if n == 2:
            outs[:2] = [o.model_copy(update={"status": S.FAILED, "error_type": "Boom"}) for o in outs[:2]]
            outs[2] = outs[2].model_copy(update={"status": S.FAILED, "error_type": "Boom"})
        m, a, _ = analyzed(outs, wave=n, predicted=1.0)
        waves.append(m)
        everything += outs
        anomalies += a
    scored = sum(a.severity for a in anomalies if a.type not in MonitorConfig().unscored_anomalies)
    assert scored > 0
    cm = campaign_metrics(waves, everything)
    h = health(cm, anomalies)
    assert h.penalty == pytest.approx(scored / 2)
    assert cm.fleet_success == pytest.approx(17 / 20)
