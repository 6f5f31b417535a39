"""Anomalies of a wave: 13 rules over its metrics, each with a severity 1–10 and an action.

Thresholds and minimum samples are :class:`~buddy.analysis.monitor.MonitorConfig`'s; the
rules are listed in :func:`detect_anomalies` (docs/architecture.md, "Learning between
waves"). A value equal to its threshold is within it (:func:`below`, :func:`above`), and
messages print the two numbers with as many digits as it takes to tell them apart. Pure:
the lines of ``anomalies.jsonl`` are written by :mod:`buddy.outputs.analysis_files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from buddy.analysis.metrics import Metrics, WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.models import utcnow

AnomalyType = Literal[
    "high_failure",
    "schedule_drift",
    "confidence_drop",
    "excessive_retries",
    "optimization_failure",
    "agent_failure",
    "coordination_issue",
    "prediction_drift",
    "load_imbalance",
    "unsafe_escalation",
    "repeated_failures",
    "high_rollback",
    "high_conflict",
]
#: What the coordinator should do about an anomaly beyond reporting it: ``lock`` the system
#: (no task runs live until ``buddy unlock``) unless the campaign says ``auto_lock: false``.
AnomalyAction = Literal["none", "lock"]
#: Slack of the threshold comparisons: a value within it of its threshold is equal to it
#: (a ratio such as 9 / 10 computed in floating point is not "below" 0.90).
EPS = 1e-9
#: ``unsafe_escalation``'s severity (source: Phase 24).
UNSAFE_ESCALATION_SEVERITY = 7


class Anomaly(BaseModel):
    """One anomaly of a wave; a line of ``anomalies.jsonl``.

    ``action``: ``lock`` asks the coordinator to lock the system (``unsafe_escalation``);
    ``none`` (every other anomaly) asks for nothing beyond the report.
    """

    type: AnomalyType
    severity: int = Field(ge=1, le=10)
    campaign_id: str = ""
    wave: int | None = None
    agent_id: str | None = None
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    recommended_action: str
    action: AnomalyAction = "none"
    detected_at: datetime


def severity(excess: float, room: float) -> int:
    """``1 + round(9 · excess / room)``, within 1–10 (:class:`MonitorConfig`)."""
    if room <= 0:
        return 10
    return max(1, min(10, 1 + round(9 * min(1.0, max(0.0, excess) / room))))


def below(value: float, threshold: float) -> bool:
    """True when ``value`` is below ``threshold`` by more than :data:`EPS` (equal is not below)."""
    return value < threshold - EPS


def above(value: float, threshold: float) -> bool:
    """True when ``value`` is above ``threshold`` by more than :data:`EPS` (equal is not above)."""
    return value > threshold + EPS


def pair(value: float, threshold: float, least: int = 2) -> tuple[str, str]:
    """``value`` and ``threshold`` formatted with the fewest decimals (at least ``least``,
    at most 12) that tell them apart, so a message never reads "0.50 < 0.50" (equal values
    with ``least``)."""
    digits = least
    while value != threshold and digits < 12 and f"{value:.{digits}f}" == f"{threshold:.{digits}f}":
        digits += 1
    return f"{value:.{digits}f}", f"{threshold:.{digits}f}"


def load_judged(m: Metrics, c: MonitorConfig) -> bool:
    """True when the wave (or campaign) is a large enough sample to judge its load, its
    optimization efficiency and its throughput (issue 14): at least two capable agents
    (``m.load_agents``), at least ``c.min_tasks_per_agent`` executed tasks per agent in
    service (and ``c.min_tasks``), and a busiest agent busy at least ``c.min_makespan_s``
    seconds (``m.assigned_makespan_s``): a wave of a few tasks, or of instant ones (mock),
    measures dispatch noise, not load."""
    in_service = sum(a.in_service for a in m.agents.values())
    return (
        m.load_agents >= 2
        and m.executed >= max(c.min_tasks, c.min_tasks_per_agent * in_service)
        and m.assigned_makespan_s >= c.min_makespan_s
    )


def detect_anomalies(
    metrics: WaveMetrics,
    history: Sequence[WaveMetrics] = (),
    config: MonitorConfig | None = None,
    *,
    now: datetime | None = None,
) -> list[Anomaly]:
    """The anomalies of one wave, most severe first (then by type, agent).

    ``history``: the earlier waves' metrics, oldest first (``confidence_drop`` compares with
    the latest of them that has ``min_calibration_tasks`` predictions). Rules (``c`` the
    config; "below" and "above" are strict, :func:`below`):

    - high_failure: fleet_success below c.min_success_rate, over ≥ c.min_tasks judged tasks
      (skipped, denied and cancelled tasks are not the fleet's failures).
    - schedule_drift: schedule_adherence below c.min_schedule_adherence (≥ min_tasks planned).
    - confidence_drop: confidence (1 − ECE) fell more than c.max_confidence_drop below that of
      the previous calibrated wave.
    - excessive_retries: retry_rate above c.max_retry_rate (≥ min_tasks tasks).
    - optimization_failure: optimization_efficiency below c.min_optimization_efficiency, on a
      load worth judging (:func:`load_judged`).
    - agent_failure: an agent's success_rate below c.min_agent_success_rate over at least
      c.min_agent_tasks executed tasks (one anomaly per agent).
    - coordination_issue: coordination_issues / tasks above c.max_coordination_rate.
    - prediction_drift: |prediction_bias| above c.max_prediction_bias (≥ c.min_calibration_tasks).
    - load_imbalance: load_balance below c.min_load_balance, on a load worth judging.
    - unsafe_escalation (Phase 24): mean |predicted − actual| over the wave's judged live
      executions (``live_drift``; LOW-risk tools without effects are not judged) above
      c.max_live_drift, over at least c.min_live_executions of them; severity 7, action
      ``lock``; evidence: the drift, the count, the threshold and the tasks (≤ 20).
    - repeated_failures: ≥ c.repeated_failure_count tasks failed with the same tool and error type
      (one per pattern; severity 1 + round(9 · those tasks / executed)).
    - high_rollback: rollback_frequency above c.max_rollback_frequency (≥ min_tasks executed).
    - high_conflict: conflict_rate above c.max_conflict_rate.
    """
    c = config or MonitorConfig()
    m = metrics
    at = now or utcnow()
    out: list[Anomaly] = []

    def add(
        kind: AnomalyType,
        sev: int,
        message: str,
        action: str,
        agent: str | None = None,
        do: AnomalyAction = "none",
        **ev: Any,
    ) -> None:
        out.append(
            Anomaly(
                type=kind,
                severity=sev,
                campaign_id=m.campaign_id,
                wave=m.wave,
                agent_id=agent,
                message=message,
                evidence=ev,
                recommended_action=action,
                action=do,
                detected_at=at,
            )
        )

    enough = m.tasks >= c.min_tasks
    if m.fleet_judged >= c.min_tasks and below(m.fleet_success, c.min_success_rate):
        v, t = pair(m.fleet_success, c.min_success_rate)
        add(
            "high_failure",
            severity(c.min_success_rate - m.fleet_success, c.min_success_rate),
            f"fleet success {v} < {t}: {m.fleet_failures} of {m.fleet_judged} tasks failed, timed out, "
            "were lost or need review",
            "read failure_patterns and the failed tasks' errors; the optimizer moves to maximize_success; "
            "set --max-fail-percentage to stop a campaign that keeps failing",
            fleet_success=m.fleet_success,
            failures=m.fleet_failures,
            judged=m.fleet_judged,
            success_rate=m.success_rate,
            threshold=c.min_success_rate,
            by_status=m.by_status,
        )
    if m.planned >= c.min_tasks and below(m.schedule_adherence, c.min_schedule_adherence):
        v, t = pair(m.schedule_adherence, c.min_schedule_adherence)
        add(
            "schedule_drift",
            severity(c.min_schedule_adherence - m.schedule_adherence, c.min_schedule_adherence),
            f"schedule adherence {v} < {t}",
            "tasks ran on another agent or wave than planned: check which workers consume which queues "
            "(buddy fleet) and whether tasks were resumed or failed over",
            schedule_adherence=m.schedule_adherence,
            off_plan=m.planned - m.on_plan,
            planned=m.planned,
            threshold=c.min_schedule_adherence,
        )
    if m.calibration.n >= c.min_calibration_tasks:
        prev = next((h for h in reversed(history) if h.calibration.n >= c.min_calibration_tasks), None)
        if prev is not None and above(prev.confidence - m.confidence, c.max_confidence_drop):
            drop = prev.confidence - m.confidence
            add(
                "confidence_drop",
                severity(drop - c.max_confidence_drop, 1 - c.max_confidence_drop),
                f"confidence (1 − ECE) fell from {prev.confidence:.2f} (wave {prev.wave}) "
                f"to {m.confidence:.2f}, more than {c.max_confidence_drop:g}: the plan's predictions",
                "predictions stopped matching results: re-estimate predicted_success (phase 20 feedback); "
                "the optimizer moves to maximize_confidence",
                confidence=m.confidence,
                previous=prev.confidence,
                previous_wave=prev.wave,
                ece=m.ece,
                threshold=c.max_confidence_drop,
            )
        if above(abs(m.prediction_bias), c.max_prediction_bias):
            over = "overconfident" if m.prediction_bias > 0 else "underconfident"
            add(
                "prediction_drift",
                severity(abs(m.prediction_bias) - c.max_prediction_bias, 1 - c.max_prediction_bias),
                f"the plan's predictions are {over}: mean predicted {m.calibration.mean_predicted:.2f}, "
                f"observed {m.calibration.observed:.2f}",
                "feed prediction_validation_feedback.jsonl back to the predictor; until then, lower the "
                "confidence weights of the agents concerned",
                bias=m.prediction_bias,
                mean_predicted=m.calibration.mean_predicted,
                observed=m.calibration.observed,
                n=m.calibration.n,
                threshold=c.max_prediction_bias,
            )
    if enough and above(m.retry_rate, c.max_retry_rate):
        v, t = pair(m.retry_rate, c.max_retry_rate)
        add(
            "excessive_retries",
            severity(m.retry_rate - c.max_retry_rate, 1 - c.max_retry_rate),
            f"{m.retries} retries: {v} of attempts > {t}",
            "find the transient error (failure_patterns, tool_execution_log.jsonl); the optimizer moves to "
            "minimize_retries and the tuner lowers max retries where they do not help",
            retry_rate=m.retry_rate,
            retries=m.retries,
            attempts=m.attempts,
            threshold=c.max_retry_rate,
        )
    judge_load = load_judged(m, c)
    if judge_load and below(m.optimization_efficiency, c.min_optimization_efficiency):
        v, t = pair(m.optimization_efficiency, c.min_optimization_efficiency)
        add(
            "optimization_failure",
            severity(
                c.min_optimization_efficiency - m.optimization_efficiency, c.min_optimization_efficiency
            ),
            f"optimization efficiency {v} < {t}: the busiest agent needed {m.assigned_makespan_s:.3g} s, "
            f"a split by capacity {m.ideal_makespan_s:.3g} s",
            "let the adaptive scheduler assign (drop --no-optimize) or pin fewer tasks to slow agents",
            efficiency=m.optimization_efficiency,
            ideal_makespan_s=m.ideal_makespan_s,
            assigned_makespan_s=m.assigned_makespan_s,
            executed=m.executed,
            threshold=c.min_optimization_efficiency,
        )
    for a in m.agents.values():
        if a.executed >= c.min_agent_tasks and below(a.success_rate, c.min_agent_success_rate):
            add(
                "agent_failure",
                severity(c.min_agent_success_rate - a.success_rate, c.min_agent_success_rate),
                f"agent {a.agent_id}: {a.succeeded} of {a.executed} tasks succeeded",
                f"check agent {a.agent_id}'s workers and tools (buddy fleet); the scheduler moves work off "
                "degraded agents",
                agent=a.agent_id,
                success_rate=a.success_rate,
                executed=a.executed,
                threshold=c.min_agent_success_rate,
            )
    if enough and above(m.coordination_issues / m.tasks, c.max_coordination_rate):
        rate = m.coordination_issues / m.tasks
        add(
            "coordination_issue",
            severity(rate - c.max_coordination_rate, 1 - c.max_coordination_rate),
            f"{m.coordination_issues} of {m.tasks} tasks met a conflict, a lost lease or a lost worker",
            "see phase18/coordination_feedback.jsonl: serialize tasks sharing resources, raise lease "
            "timeouts, check worker stability",
            rate=rate,
            tasks=m.coordination_issues,
            threshold=c.max_coordination_rate,
        )
    if judge_load and below(m.load_balance, c.min_load_balance):
        util = {a.agent_id: round(a.utilization, 4) for a in m.agents.values() if a.capable}
        v, t = pair(m.load_balance, c.min_load_balance)
        add(
            "load_imbalance",
            severity(c.min_load_balance - m.load_balance, c.min_load_balance),
            f"load balance {v} < {t} over {m.load_agents} agents offering the wave's tools",
            "let the optimizer balance load, or change the agents' concurrency to match their share",
            load_balance=m.load_balance,
            utilization=util,
            executed=m.executed,
            threshold=c.min_load_balance,
        )
    if m.live_judged >= c.min_live_executions and above(m.live_drift, c.max_live_drift):
        v, t = pair(m.live_drift, c.max_live_drift)
        add(
            "unsafe_escalation",
            UNSAFE_ESCALATION_SEVERITY,
            f"live tasks ran on predictions that did not hold: mean |predicted − actual| {v} > {t} over "
            f"{m.live_judged} live executions",
            "the coordinator locks the system (with auto_lock: false, lock it yourself: buddy lock); "
            "review the live tasks in the evidence, re-estimate their predicted_success "
            "(prediction_validation_feedback.jsonl) or raise the escalation thresholds, then buddy unlock",
            do="lock",
            drift=m.live_drift,
            live_executions=m.live_judged,
            threshold=c.max_live_drift,
            min_live_executions=c.min_live_executions,
            tasks=m.live_drift_tasks,
        )
    for pattern, n in m.failure_patterns.items():
        if n >= c.repeated_failure_count:
            tool, _, error = pattern.partition(":")
            add(
                "repeated_failures",
                severity(n / max(1, m.executed), 1.0),
                f"{n} tasks of {tool} failed with {error}",
                f"fix the cause of {error} in {tool} before the next wave; pause the tool if it persists",
                tool=tool,
                error_type=error,
                count=n,
                threshold=c.repeated_failure_count,
            )
    if m.executed >= c.min_tasks and above(m.rollback_frequency, c.max_rollback_frequency):
        add(
            "high_rollback",
            severity(m.rollback_frequency - c.max_rollback_frequency, 1 - c.max_rollback_frequency),
            f"{m.rolled_back} of {m.executed} tasks rolled back "
            f"({' > '.join(pair(m.rollback_frequency, c.max_rollback_frequency))})",
            "see rollback_events.jsonl; tasks that keep rolling back should run dry_run until fixed",
            rollback_frequency=m.rollback_frequency,
            rolled_back=m.rolled_back,
            threshold=c.max_rollback_frequency,
        )
    if enough and above(m.conflict_rate, c.max_conflict_rate):
        add(
            "high_conflict",
            severity(m.conflict_rate - c.max_conflict_rate, 1 - c.max_conflict_rate),
            f"{m.conflicts} of {m.tasks} tasks were in a resource conflict "
            f"({' > '.join(pair(m.conflict_rate, c.max_conflict_rate))})",
            "spread tasks that claim the same resources over more waves (conflicts.json)",
            conflict_rate=m.conflict_rate,
            conflicts=m.conflicts,
            threshold=c.max_conflict_rate,
        )
    out.sort(key=lambda a: (-a.severity, a.type, a.agent_id or ""))
    return out
