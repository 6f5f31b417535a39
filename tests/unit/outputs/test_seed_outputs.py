"""The seeds' formats in the output files (issue 15): ``system_health.json``'s top-level fields,
``feedback/phase16|18|20/phase22_feedback.jsonl``, the seed ids on learning signals, and the
"Targets" of ``report.md`` and ``execution_summary.json``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from buddy.analysis.anomalies import detect_anomalies
from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.feedback import analyze_wave
from buddy.analysis.health import HealthReport, health
from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.signals import LearningSignal, per_task, shared_seed_ids
from buddy.analysis.targets import judge_targets
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import (
    AgentSpec,
    ExecutionSummary,
    Mode,
    Outcome,
    PlanTask,
    StatusCounts,
    Strategy,
    TaskStatus,
)
from buddy.outputs.analysis_files import (
    SEED_FEEDBACK,
    signal_paths,
    write_feedback,
    write_monitoring,
    write_system_health,
)
from buddy.outputs.report_md import render_report
from buddy.outputs.writer import OutputWriter
from buddy.plan.model import CampaignPlan, PlannedTask

T0 = datetime(2024, 1, 1, tzinfo=UTC)
AGENTS = [AgentSpec(id="a1", concurrency=1), AgentSpec(id="a2", concurrency=1)]
S = TaskStatus


def o(
    tid: str,
    agent: str = "a1",
    status: TaskStatus = S.SUCCEEDED,
    wave: int = 1,
    plan_id: str | None = None,
    check_id: str | None = None,
) -> Outcome:
    return Outcome(
        task_id=tid,
        campaign_id="c",
        agent_id=agent,
        wave=wave,
        status=status,
        mode=Mode.MOCK,
        attempts=1,
        start_time=T0,
        end_time=T0 + timedelta(milliseconds=100),
        duration_ms=100.0,
        worker="w1",
        tool="t",
        error_type=None if status is S.SUCCEEDED else "Boom",
        phase21_plan_id=plan_id,
        phase22_validation_id=check_id,
    )


def wave_outcomes(n: int) -> list[Outcome]:
    return [
        o(f"w{n}-a", wave=n, plan_id="p21-7", check_id="v-1"),
        o(f"w{n}-b", "a2", S.FAILED, wave=n, plan_id="p21-7", check_id="v-2"),
        o(f"w{n}-c", "a2", wave=n),
    ]


def system_health(root: Path) -> dict[str, object]:
    doc = json.loads((root / OutputWriter.HEALTH).read_text())
    assert isinstance(doc, dict)
    return doc


def test_system_health_leads_with_the_seeds_fields(tmp_path: Path) -> None:
    out = OutputWriter(tmp_path)
    reports: list[HealthReport] = []
    waves: list[WaveMetrics] = []
    for n in (1, 2):
        outs = wave_outcomes(n)
        m = compute_wave_metrics(n, outs, {}, {}, AGENTS, previous=waves, campaign_id="c")
        anomalies = detect_anomalies(m, waves)
        h = health(m, anomalies)
        write_monitoring(out, m, anomalies, h, reports)
        doc = system_health(tmp_path)
        assert list(doc)[:5] == ["wave", "health_score", "health_status", "metrics", "anomalies"]
        assert doc["wave"] == n
        assert doc["health_score"] == h.score and doc["health_status"] == h.status
        assert doc["health"] == json.loads(h.model_dump_json())  # today's fields stay
        assert {"campaign_id", "updated_at", "history"} <= set(doc)
        reports.append(h)
        waves.append(m)
    cm = campaign_metrics(waves, [x for n in (1, 2) for x in wave_outcomes(n)])
    final = health(cm, [])
    write_system_health(out, cm, [], final, reports)
    doc = system_health(tmp_path)
    assert doc["wave"] == 2  # the campaign's file: its last wave
    assert doc["health_score"] == final.score and doc["health_status"] == final.status
    metrics = doc["metrics"]
    assert isinstance(metrics, dict) and metrics["waves"] == 2
    for name in ("availability", "accuracy", "learning_impact", "tool_success_rate", "execution_latency_ms"):
        assert name in metrics


def signals_of(lines: str) -> list[LearningSignal]:
    return [LearningSignal.model_validate_json(x) for x in lines.splitlines()]


def test_each_seed_phase_gets_its_phase22_feedback_without_per_task_lines(tmp_path: Path) -> None:
    outs = wave_outcomes(1)
    predicted = {x.task_id: 0.9 for x in outs}
    fb = analyze_wave("c", 1, outs, predicted, {x.task_id: ("a1", 1) for x in outs})
    written = write_feedback(OutputWriter(tmp_path), fb)
    feedback = tmp_path / OutputWriter.FEEDBACK
    for phase in ("phase16", "phase18", "phase19", "phase20"):
        assert feedback / phase / SEED_FEEDBACK in written
    p16 = signals_of((feedback / "phase16" / SEED_FEEDBACK).read_text())
    assert {s.signal_type for s in p16} == {"heuristic_feedback"}
    assert p16 == signals_of((feedback / "phase16" / "heuristic_feedback.jsonl").read_text())
    p18 = signals_of((feedback / "phase18" / SEED_FEEDBACK).read_text())
    assert {s.signal_type for s in p18} == {"agent_performance", "multi_agent_coordination"}
    # phase 20: the wave's calibration summary, not one line per task
    p20 = signals_of((feedback / "phase20" / SEED_FEEDBACK).read_text())
    assert [(s.signal_type, s.content["kind"]) for s in p20] == [("prediction_validation", "calibration")]
    summary = p20[0].content["wave"]
    assert summary["n"] == 3 and summary["accuracy"] == 2 / 3
    assert summary["verdicts"] == {"false_positive": 1, "true_positive": 2}
    full = signals_of((feedback / "phase20" / "prediction_validation_feedback.jsonl").read_text())
    assert sum(per_task(s) for s in full) == 3 and len(full) == 4  # the type's file keeps them
    # phase 19's file is its types' own file: nothing is written to it twice
    p19 = signals_of((feedback / "phase19" / SEED_FEEDBACK).read_text())
    assert len(p19) == len({(s.signal_type, json.dumps(s.content, sort_keys=True)) for s in p19})
    assert {s.signal_type for s in p19} <= {
        "tool_reliability",
        "execution_mode_analysis",
        "approval_mismatch",
        "conflict_pattern",
    }
    for s in fb.signals:
        paths = signal_paths(tmp_path, s)
        assert len(paths) == len(set(paths))


def test_signals_carry_the_seed_ids() -> None:
    outs = wave_outcomes(1)
    fb = analyze_wave("c", 1, outs, {x.task_id: 0.9 for x in outs})
    by_task = {s.content["task_id"]: s for s in fb.signals if per_task(s)}
    assert (by_task["w1-a"].phase21_plan_id, by_task["w1-a"].phase22_validation_id) == ("p21-7", "v-1")
    assert (by_task["w1-b"].phase21_plan_id, by_task["w1-b"].phase22_validation_id) == ("p21-7", "v-2")
    assert (by_task["w1-c"].phase21_plan_id, by_task["w1-c"].phase22_validation_id) == (None, None)
    assert "phase21_plan_id" not in json.loads(by_task["w1-c"].model_dump_json())  # absent, not null
    # the wave's other signals: the plan id all share, no validation id (they differ)
    for s in fb.signals:
        if not per_task(s):
            assert (s.phase21_plan_id, s.phase22_validation_id) == ("p21-7", None)
            doc = json.loads(s.model_dump_json())
            assert doc["phase21_plan_id"] == "p21-7" and "phase22_validation_id" not in doc
    assert shared_seed_ids([o("x"), o("y")]) == (None, None)


def test_outcome_json_leaves_absent_seed_ids_out() -> None:
    plain = json.loads(o("x").model_dump_json())
    assert "phase21_plan_id" not in plain and "phase22_validation_id" not in plain
    carried = o("x", plan_id="p", check_id="v")
    assert Outcome.model_validate_json(carried.model_dump_json()) == carried


def plan_of(outs: list[Outcome]) -> CampaignPlan:
    tasks = {
        x.task_id: PlannedTask(
            task=PlanTask(task_id=x.task_id, tool="t"),
            line=i,
            wave=x.wave,
            agent="a1",
            pinned=False,
            claims=[],
        )
        for i, x in enumerate(outs, 1)
    }
    return CampaignPlan(
        path=Path("plan.jsonl"),
        digest="0" * 64,
        tasks=tasks,
        waves={1: list(tasks.values())},
        agents=AGENTS,
        strategy=Strategy.ROUND_ROBIN,
    )


def test_report_and_summary_show_the_targets() -> None:
    outs = wave_outcomes(1)
    planned = {x.task_id: (x.agent_id or "", 1) for x in outs}
    m = compute_wave_metrics(1, outs, planned, {}, AGENTS, campaign_id="c")
    cm = campaign_metrics([m], outs)
    final = health(cm, [])
    targets = judge_targets(cm, final, [m], predictions=0)
    summary = ExecutionSummary(
        campaign_id="c",
        status="finished_with_failures",
        exit_code=1,
        mode=Mode.MOCK,
        counts=StatusCounts(),
        agents={},
        waves=[],
        start_time=T0,
        end_time=T0,
        wall_s=1.0,
        targets=targets,
    )
    doc = json.loads(summary.model_dump_json())
    assert [t["name"] for t in doc["targets"]] == [t.name for t in targets]
    assert doc["targets"][0] == {
        "name": "success_rate",
        "target": "≥ 0.90",
        "low": 0.9,
        "high": None,
        "unit": "",
        "value": cm.fleet_success,
        "met": False,  # 1 of 3 failed
        "why": targets[0].why,
    }
    md = render_report(summary, plan_of(outs), [])
    section = md.split("## Targets\n", 1)[1].split("\n## ", 1)[0]
    assert "1 met, 2 missed, 4 not judged" in section  # success and health missed
    rows = [r.strip("|").split("|") for r in section.splitlines() if r.startswith("| ") and "---" not in r][
        1:
    ]
    verdicts = {cells[0].strip(): cells[3].strip() for cells in rows}
    assert verdicts["success_rate"] == "**missed**"
    assert verdicts["schedule_accuracy"] == "met"
    assert verdicts["confidence"] == verdicts["throughput"] == "not judged"
    assert verdicts["health"] == "**missed**"
    assert "the plan gives no predicted_success" in section


def test_a_report_without_targets_has_no_section() -> None:
    summary = ExecutionSummary(
        campaign_id="c",
        status="succeeded",
        exit_code=0,
        mode=Mode.MOCK,
        counts=StatusCounts(),
        agents={},
        waves=[],
        start_time=T0,
        end_time=T0,
        wall_s=1.0,
    )
    assert "## Targets" not in render_report(summary, plan_of([o("x")]), [])
