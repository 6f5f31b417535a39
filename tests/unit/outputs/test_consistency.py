"""Every output file agrees on each per-agent and per-wave number.

A campaign of two waves over three agents is built by hand with succeeded, failed, denied
(by the coordinator and by a worker), skipped, lost and rolled-back tasks. It goes through
the computations and writers the coordinator uses (wave summaries, feedback, wave metrics,
anomalies, health, the campaign metrics and agents, ``report.md``, ``report.html``), and the
files written are read back: ``execution_summary.json``, ``system_health.json``,
``metrics.jsonl``, ``report.md`` and ``report.html`` must show the numbers computed by hand
below (counts, mean duration, throughput).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from buddy.analysis.agents import campaign_agents, status_counts, summarize_wave
from buddy.analysis.anomalies import detect_anomalies
from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.feedback import analyze_wave
from buddy.analysis.health import HealthReport, health
from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.targets import judge_targets, predictions_given
from buddy.analysis.wave import WaveReport
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import (
    AgentSpec,
    ExecutionSummary,
    Mode,
    Outcome,
    PlanTask,
    Strategy,
    TaskStatus,
    WaveSummary,
)
from buddy.outputs.analysis_files import write_monitoring, write_system_health
from buddy.outputs.campaign import CampaignFiles
from buddy.outputs.report_html import render_html
from buddy.outputs.report_md import ReportContext, render_report
from buddy.outputs.writer import OutputWriter
from buddy.plan.model import CampaignPlan, PlannedTask

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CID = "cons"
AGENTS = [
    AgentSpec(id="a1", concurrency=2),
    AgentSpec(id="a2", concurrency=1),
    AgentSpec(id="a3", concurrency=1),
]
S = TaskStatus


def o(
    task_id: str,
    wave: int,
    agent: str,
    status: TaskStatus,
    start: float,
    end: float,
    ms: float,
    worker: str | None,
    error_type: str | None = None,
) -> Outcome:
    return Outcome(
        task_id=task_id,
        campaign_id=CID,
        agent_id=agent,
        wave=wave,
        status=status,
        mode=Mode.DRY_RUN,
        attempts=1 if worker else 0,
        start_time=T0 + timedelta(seconds=start),
        end_time=T0 + timedelta(seconds=end),
        duration_ms=ms,
        worker=worker,
        tool="noop",
        error_type=error_type,
        rolled_back=status is S.ROLLED_BACK,
    )


# Outcomes that did not run carry times and durations that would change every number if
# they were counted: wave 1's wall time is 4 s only when t4, t5 and t6 are left out.
WAVES: dict[int, list[Outcome]] = {
    1: [
        o("t1", 1, "a1", S.SUCCEEDED, 0, 1, 1000, "w1"),
        o("t2", 1, "a1", S.FAILED, 0, 2, 2000, "w1", "Boom"),
        o("t3", 1, "a2", S.SUCCEEDED, 1, 4, 3000, "w2"),
        o("t4", 1, "a2", S.DENIED, 0, 30, 0, None, "approval_denied"),  # closed by the coordinator
        o("t5", 1, "a3", S.SKIPPED, 0, 30, 0, None, "upstream_failed"),
        o("t6", 1, "a3", S.DENIED, 0, 6, 50, "w3", "approval_missing"),  # a worker refused it
    ],
    2: [
        o("t7", 2, "a1", S.SUCCEEDED, 10, 10.5, 500, "w1"),
        o("t8", 2, "a1", S.ROLLED_BACK, 10, 11, 1000, "w1", "Boom"),
        o("t9", 2, "a2", S.LOST, 20, 20, 0, None, "lost"),
        o("t10", 2, "a3", S.SUCCEEDED, 11, 13, 2000, "w3"),
        o("t11", 2, "a3", S.SUCCEEDED, 10, 12, 1000, "w3"),
    ],
}

# -- by hand -----------------------------------------------------------------------------------
# wave: tasks, executed, by_status, wall_s, throughput = executed / wall_s
WAVE_EXPECTED: dict[int, dict[str, Any]] = {
    1: {
        "tasks": 6,
        "executed": 3,
        "succeeded": 2,
        "by_status": {"denied": 2, "failed": 1, "skipped": 1, "succeeded": 2},
        "wall_s": 4.0,
        "throughput_tps": 3 / 4,
    },
    2: {
        "tasks": 5,
        "executed": 4,
        "succeeded": 3,
        "by_status": {"lost": 1, "rolled_back": 1, "succeeded": 3},
        "wall_s": 3.0,
        "throughput_tps": 4 / 3,
    },
}
# (wave, agent): tasks, executed, busy_ms, mean_duration_ms = busy / executed, throughput
AGENT_WAVE_EXPECTED: dict[tuple[int, str], tuple[int, int, float, float, float]] = {
    (1, "a1"): (2, 2, 3000.0, 1500.0, 2 / 4),
    (1, "a2"): (2, 1, 3000.0, 3000.0, 1 / 4),  # the denied task does not halve the mean
    (1, "a3"): (2, 0, 0.0, 0.0, 0.0),  # the worker's 50 ms denial ran no tool
    (2, "a1"): (2, 2, 1500.0, 750.0, 2 / 3),
    (2, "a2"): (1, 0, 0.0, 0.0, 0.0),
    (2, "a3"): (2, 2, 3000.0, 1500.0, 2 / 3),
}
# campaign: tasks, executed, succeeded, busy_ms, mean_duration_ms, throughput over Σ wall 7 s
AGENT_EXPECTED: dict[str, tuple[int, int, int, float, float, float]] = {
    "a1": (4, 4, 2, 4500.0, 1125.0, 4 / 7),
    "a2": (3, 1, 1, 3000.0, 3000.0, 1 / 7),
    "a3": (4, 2, 2, 3000.0, 1500.0, 2 / 7),
}
CAMPAIGN_BY_STATUS = {"denied": 2, "failed": 1, "lost": 1, "rolled_back": 1, "skipped": 1, "succeeded": 5}


def plan() -> CampaignPlan:
    tasks = {
        x.task_id: PlannedTask(
            task=PlanTask(task_id=x.task_id, tool="noop", predicted_success=0.8),
            line=i,
            wave=x.wave,
            agent=x.agent_id or "",
            pinned=False,
            claims=[],
        )
        for i, x in enumerate((x for outs in WAVES.values() for x in outs), start=1)
    }
    waves = {n: [tasks[x.task_id] for x in outs] for n, outs in WAVES.items()}
    return CampaignPlan(
        path=Path("plan.jsonl"), digest="0" * 64, tasks=tasks, waves=waves, agents=AGENTS,
        strategy=Strategy.ROUND_ROBIN,
    )  # fmt: skip


def run_campaign(root: Path) -> ExecutionSummary:
    """What the chord body, the learner and the coordinator's finish do, in order."""
    out = OutputWriter(root)
    files = CampaignFiles(out, [a.id for a in AGENTS])
    p = plan()
    summaries: list[WaveSummary] = []
    reports: list[WaveReport] = []
    for n, outs in WAVES.items():
        planned = {x.task_id: (x.agent_id or "", n) for x in outs}
        predicted = {x.task_id: 0.8 for x in outs}
        history = [r.metrics for r in reports]
        metrics = compute_wave_metrics(n, outs, planned, predicted, AGENTS, previous=history, campaign_id=CID)
        anomalies = detect_anomalies(metrics, history)
        report = WaveReport(
            summary=summarize_wave(CID, n, outs),
            feedback=analyze_wave(CID, n, outs, predicted, planned),
            metrics=metrics,
            anomalies=anomalies,
            health=health(metrics, anomalies),
        )
        write_monitoring(out, metrics, anomalies, report.health, [r.health for r in reports])
        reports.append(report)
        summaries.append(report.summary)
    everything = [x for outs in WAVES.values() for x in outs]
    cm = campaign_metrics([r.metrics for r in reports], everything)
    all_anomalies = [a for r in reports for a in r.anomalies]
    final = health(cm, all_anomalies)
    write_system_health(out, cm, all_anomalies, final, [r.health for r in reports])
    summary = ExecutionSummary(
        campaign_id=CID,
        status="finished_with_failures",
        exit_code=1,
        mode=Mode.DRY_RUN,
        counts=status_counts(everything),
        agents=campaign_agents(everything),
        waves=summaries,
        start_time=T0,
        end_time=T0 + timedelta(seconds=20),
        wall_s=20.0,
        health=final.score,
        health_status=final.status,
        targets=judge_targets(
            cm,
            final,
            [r.metrics for r in reports],
            predictions=predictions_given(pt.task for pt in p.tasks.values()),
        ),
    )
    failed = [x for x in everything if x.status is not S.SUCCEEDED]
    md = render_report(summary, p, failed, ReportContext(reports=reports))
    healths: list[HealthReport] = [r.health for r in reports] + [final]
    html = render_html(summary.model_dump(mode="json"), [r.metrics for r in reports], everything, healths)
    files.finish(summary, None, md, html)
    return summary


def md_table(md: str, section: str) -> list[list[str]]:
    """The body rows of the first table under ``## <section>``, cells stripped."""
    lines = md.split(f"## {section}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in r.strip("|").split("|")] for r in lines[start + 2 : end]]


def html_table(html: str, section: str) -> list[list[str]]:
    """The body rows of the first table after ``<h2><section></h2>``."""
    body = html.split(f"<h2>{section}</h2>", 1)[1]
    tbody = body.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", tbody)]


def test_every_file_shows_the_same_numbers(tmp_path: Path) -> None:
    run_campaign(tmp_path)
    summary = json.loads((tmp_path / OutputWriter.SUMMARY).read_text())
    metrics = [json.loads(line) for line in (tmp_path / OutputWriter.METRICS).read_text().splitlines()]
    system = json.loads((tmp_path / OutputWriter.HEALTH).read_text())
    md = (tmp_path / OutputWriter.REPORT).read_text()
    html = (tmp_path / OutputWriter.HTML).read_text()

    # -- per wave ------------------------------------------------------------------------------
    assert [w["wave"] for w in summary["waves"]] == [m["wave"] for m in metrics] == [1, 2]
    md_waves = {int(r[0]): r for r in md_table(md, "Waves")}
    md_health = {int(r[0]): r for r in md_table(md, "Health, anomalies and recommendations")}
    html_waves = {int(r[0]): r for r in html_table(html, "Waves")}
    for ws, wm in zip(summary["waves"], metrics, strict=True):
        n, want = ws["wave"], WAVE_EXPECTED[ws["wave"]]
        assert ws["counts"]["total"] == wm["tasks"] == want["tasks"]
        assert ws["counts"]["by_status"] == wm["by_status"] == want["by_status"]
        assert wm["executed"] == want["executed"] and wm["succeeded"] == want["succeeded"]
        assert ws["wall_s"] == pytest.approx(want["wall_s"]) and wm["wall_s"] == pytest.approx(want["wall_s"])
        tps = want["throughput_tps"]
        assert ws["throughput_tps"] == pytest.approx(tps) and wm["throughput_tps"] == pytest.approx(tps)
        rate = want["succeeded"] / want["tasks"]
        assert ws["success_rate"] == pytest.approx(rate) and wm["success_rate"] == pytest.approx(rate)
        row = md_waves[n]
        assert row[1:4] == [
            str(want["tasks"]),
            str(want["succeeded"]),
            str(want["by_status"].get("failed", 0)),
        ]
        assert row[5:8] == [f"{rate:.2f}", f"{want['wall_s']:.2f}", f"{tps:.1f}"]
        assert md_health[n][3] == f"{wm['fleet_success']:.2f}"
        assert html_waves[n][1:4] == [str(want["tasks"]), f"{rate:.3g}", f"{tps:.3g}"]

        # -- per agent in the wave ---------------------------------------------------------------
        assert sorted(ws["agents"]) == sorted(wm["agents"]) == ["a1", "a2", "a3"]
        for aid in ("a1", "a2", "a3"):
            tasks, ran, busy, mean, atps = AGENT_WAVE_EXPECTED[(n, aid)]
            sa, ma = ws["agents"][aid], wm["agents"][aid]
            assert sa["counts"]["total"] == ma["tasks"] == tasks
            assert ma["executed"] == ran
            assert sa["busy_ms"] == pytest.approx(busy) and ma["busy_s"] * 1000 == pytest.approx(busy)
            assert sa["mean_duration_ms"] == pytest.approx(mean) and ma["mean_duration_ms"] == pytest.approx(
                mean
            )
            assert ma["throughput_tps"] == pytest.approx(atps)
            line = (tmp_path / f"wave_{n}" / f"agent_{aid}" / OutputWriter.AGENT_METRICS).read_text()
            assert json.loads(line) == ma

    # -- per agent over the campaign -------------------------------------------------------------
    assert summary["counts"]["by_status"] == system["metrics"]["by_status"] == CAMPAIGN_BY_STATUS
    assert summary["counts"]["total"] == system["metrics"]["tasks"] == 11
    assert system["metrics"]["executed"] == 7
    assert system["metrics"]["throughput_tps"] == pytest.approx(7 / 7)
    md_agents = {r[0]: r for r in md_table(md, "Agents")}
    for aid, (tasks, ran, ok, busy, mean, atps) in AGENT_EXPECTED.items():
        sa, ca = summary["agents"][aid], system["metrics"]["agents"][aid]
        assert sa["counts"]["total"] == ca["tasks"] == tasks
        assert sum(w["agents"][aid]["counts"]["total"] for w in summary["waves"]) == tasks
        assert ca["executed"] == ran and ca["succeeded"] == ok
        assert sa["busy_ms"] == pytest.approx(busy) and ca["busy_s"] * 1000 == pytest.approx(busy)
        assert sa["mean_duration_ms"] == pytest.approx(mean) and ca["mean_duration_ms"] == pytest.approx(mean)
        assert ca["throughput_tps"] == pytest.approx(atps)
        assert md_agents[aid][1:6] == [
            str(tasks),
            str(sa["counts"]["by_status"].get("succeeded", 0)),
            str(tasks - sa["counts"]["by_status"].get("succeeded", 0)),
            f"{busy / 1000:.2f}",
            f"{mean:.1f}",
        ]

    # -- health ----------------------------------------------------------------------------------
    assert summary["health"] == pytest.approx(system["health"]["score"])
    assert [h["wave"] for h in system["history"]] == [1, 2]
    assert WaveMetrics.model_validate(metrics[-1]).running_calibration.n == 7
    # the seeds' fields of system_health.json say the same as its own
    assert system["wave"] == 2
    assert system["health_score"] == summary["health"] == system["health"]["score"]
    assert system["health_status"] == summary["health_status"] == system["health"]["status"]

    # -- targets: execution_summary.json, report.md and the campaign's numbers -----------------------
    targets = {t["name"]: t for t in summary["targets"]}
    assert targets["success_rate"]["value"] == pytest.approx(system["metrics"]["fleet_success"])
    assert targets["health"]["value"] == pytest.approx(system["health_score"])
    assert targets["schedule_accuracy"]["value"] == pytest.approx(system["metrics"]["schedule_adherence"])
    assert targets["throughput"]["value"] == pytest.approx(system["metrics"]["throughput_tps"])
    verdict = {True: "met", False: "**missed**", None: "not judged"}
    md_targets = {r[0]: r for r in md_table(md, "Targets")}
    assert list(md_targets) == list(targets)
    for name, t in targets.items():
        assert md_targets[name][1] == t["target"] and md_targets[name][3] == verdict[t["met"]]
    # 3 of the 8 tasks the fleet was judged on failed (t2, t8 and the lost t9): missed
    assert targets["success_rate"]["met"] is False
    assert targets["throughput"]["met"] is None  # 7 tasks in 2 waves cannot make 35 tasks/s


def test_summary_and_metrics_agree_wave_by_wave() -> None:
    """The wave summary and the wave metrics read one computation: same window, same rates."""
    for n, outs in WAVES.items():
        s = summarize_wave(CID, n, outs)
        m = compute_wave_metrics(n, outs, {}, {}, AGENTS, campaign_id=CID)
        assert (s.wall_s, s.throughput_tps) == (m.wall_s, m.throughput_tps)
        for aid, a in s.agents.items():
            assert a.mean_duration_ms == m.agents[aid].mean_duration_ms
            assert a.busy_ms == pytest.approx(m.agents[aid].busy_s * 1000)
