"""Anomalies of a wave: 13 rules over its metrics, each with a severity 1–10 and an action.

Thresholds are :class:`~buddy.analysis.monitor.MonitorConfig`'s; the rules are listed in
:func:`detect_anomalies` (docs/architecture.md, "Learning between waves"). Pure: the lines of
``anomalies.jsonl`` are written by :mod:`buddy.outputs.analysis_files`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from buddy.analysis.metrics import WaveMetrics
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


class Anomaly(BaseModel):
    """One anomaly of a wave; a line of ``anomalies.jsonl``."""

    type: AnomalyType
    severity: int = Field(ge=1, le=10)
    campaign_id: str = ""
    wave: int | None = None
    agent_id: str | None = None
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    recommended_action: str
    detected_at: datetime


def severity(excess: float, room: float) -> int:
    """``1 + round(9 · excess / room)``, within 1–10 (:class:`MonitorConfig`)."""
    if room <= 0:
        return 10
    return max(1, min(10, 1 + round(9 * min(1.0, max(0.0, excess) / room))))


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
    config; rate anomalies need ``c.min_tasks`` tasks):

    - high_failure: success_rate < c.min_success_rate.
    - schedule_drift: schedule_adherence < c.min_schedule_adherence (over ≥ min_tasks planned tasks).
    - confidence_drop: confidence (1 − ECE) fell more than c.max_confidence_drop below that of
      the previous calibrated wave.
    - excessive_retries: retry_rate > c.max_retry_rate.
    - optimization_failure: optimization_efficiency < c.min_optimization_efficiency, ≥ 2 agents.
    - agent_failure: an agent's success_rate < c.min_agent_success_rate over at least
      c.min_agent_tasks executed tasks (one anomaly per agent).
    - coordination_issue: coordination_issues / tasks > c.max_coordination_rate.
    - prediction_drift: |prediction_bias| > c.max_prediction_bias (≥ c.min_calibration_tasks).
    - load_imbalance: load_balance < c.min_load_balance with ≥ 2 agents in service.
    - unsafe_escalation: a live task failed and was not rolled back (severity 7, +1 per further one, ≤ 10),
      or a live task's predicted_success < c.min_live_predicted (severity by the usual rule).
    - repeated_failures: ≥ c.repeated_failure_count tasks failed with the same tool and error type
      (one per pattern; severity 1 + round(9 · those tasks / executed)).
    - high_rollback: rollback_frequency > c.max_rollback_frequency.
    - high_conflict: conflict_rate > c.max_conflict_rate.
    """
    c = config or MonitorConfig()
    m = metrics
    at = now or utcnow()
    out: list[Anomaly] = []

    def add(
        kind: AnomalyType, sev: int, message: str, action: str, agent: str | None = None, **ev: Any
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
                detected_at=at,
            )
        )

    enough = m.tasks >= c.min_tasks
    in_service = [a for a in m.agents.values() if a.in_service]
    if enough and m.success_rate < c.min_success_rate:
        add(
            "high_failure",
            severity(c.min_success_rate - m.success_rate, c.min_success_rate),
            f"success rate {m.success_rate:.2f} < {c.min_success_rate:.2f}",
            "read failure_patterns and the failed tasks' errors; the optimizer moves to maximize_success; "
            "set --max-fail-percentage to stop a campaign that keeps failing",
            success_rate=m.success_rate,
            threshold=c.min_success_rate,
            by_status=m.by_status,
        )
    if m.planned >= c.min_tasks and m.schedule_adherence < c.min_schedule_adherence:
        add(
            "schedule_drift",
            severity(c.min_schedule_adherence - m.schedule_adherence, c.min_schedule_adherence),
            f"schedule adherence {m.schedule_adherence:.2f} < {c.min_schedule_adherence:.2f}",
            "tasks ran on another agent or wave than planned: check which workers consume which queues "
            "(buddy fleet) and whether tasks were resumed or failed over",
            schedule_adherence=m.schedule_adherence,
            off_plan=m.planned - m.on_plan,
            planned=m.planned,
            threshold=c.min_schedule_adherence,
        )
    if m.calibration.n >= c.min_calibration_tasks:
        prev = next((h for h in reversed(history) if h.calibration.n >= c.min_calibration_tasks), None)
        if prev is not None and prev.confidence - m.confidence > c.max_confidence_drop:
            drop = prev.confidence - m.confidence
            add(
                "confidence_drop",
                severity(drop - c.max_confidence_drop, 1 - c.max_confidence_drop),
                f"confidence (1 − ECE) fell from {prev.confidence:.2f} (wave {prev.wave}) "
                f"to {m.confidence:.2f}",
                "predictions stopped matching results: re-estimate predicted_success (phase 20 feedback); "
                "the optimizer moves to maximize_confidence",
                confidence=m.confidence,
                previous=prev.confidence,
                previous_wave=prev.wave,
                ece=m.ece,
                threshold=c.max_confidence_drop,
            )
        if abs(m.prediction_bias) > c.max_prediction_bias:
            over = "overconfident" if m.prediction_bias > 0 else "underconfident"
            add(
                "prediction_drift",
                severity(abs(m.prediction_bias) - c.max_prediction_bias, 1 - c.max_prediction_bias),
                f"predictions are {over}: mean predicted {m.calibration.mean_predicted:.2f}, "
                f"observed {m.calibration.observed:.2f}",
                "feed prediction_validation_feedback.jsonl back to the predictor; until then, lower the "
                "confidence weights of the agents concerned",
                bias=m.prediction_bias,
                mean_predicted=m.calibration.mean_predicted,
                observed=m.calibration.observed,
                n=m.calibration.n,
                threshold=c.max_prediction_bias,
            )
    if enough and m.retry_rate > c.max_retry_rate:
        add(
            "excessive_retries",
            severity(m.retry_rate - c.max_retry_rate, 1 - c.max_retry_rate),
            f"{m.retries} retries: {m.retry_rate:.2f} of attempts > {c.max_retry_rate:.2f}",
            "find the transient error (failure_patterns, tool_execution_log.jsonl); the optimizer moves to "
            "minimize_retries and the tuner lowers max retries where they do not help",
            retry_rate=m.retry_rate,
            retries=m.retries,
            attempts=m.attempts,
            threshold=c.max_retry_rate,
        )
    if (
        m.executed >= c.min_tasks
        and len(in_service) >= 2
        and m.optimization_efficiency < c.min_optimization_efficiency
    ):
        add(
            "optimization_failure",
            severity(
                c.min_optimization_efficiency - m.optimization_efficiency, c.min_optimization_efficiency
            ),
            f"optimization efficiency {m.optimization_efficiency:.2f} < {c.min_optimization_efficiency:.2f}: "
            f"the busiest agent needed {m.assigned_makespan_s:.3g} s per slot, a split by capacity "
            f"{m.ideal_makespan_s:.3g} s",
            "let the adaptive scheduler assign (drop --no-optimize) or pin fewer tasks to slow agents",
            efficiency=m.optimization_efficiency,
            ideal_makespan_s=m.ideal_makespan_s,
            assigned_makespan_s=m.assigned_makespan_s,
            threshold=c.min_optimization_efficiency,
        )
    for a in m.agents.values():
        if a.executed >= c.min_agent_tasks and a.success_rate < c.min_agent_success_rate:
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
    if enough and m.coordination_issues / m.tasks > c.max_coordination_rate:
        rate = m.coordination_issues / m.tasks
        add(
            "coordination_issue",
            severity(rate - c.max_coordination_rate, 1 - c.max_coordination_rate),
            f"{m.coordination_issues} of {m.tasks} tasks met a conflict, a lost lease, a lost worker "
            "or a failed upstream task",
            "see phase18/coordination_feedback.jsonl: serialize tasks sharing resources, raise lease "
            "timeouts, check worker stability",
            rate=rate,
            tasks=m.coordination_issues,
            threshold=c.max_coordination_rate,
        )
    if m.executed >= c.min_tasks and len(in_service) >= 2 and m.load_balance < c.min_load_balance:
        util = {a.agent_id: round(a.utilization, 4) for a in in_service}
        add(
            "load_imbalance",
            severity(c.min_load_balance - m.load_balance, c.min_load_balance),
            f"load balance {m.load_balance:.2f} < {c.min_load_balance:.2f}",
            "let the optimizer balance load, or change the agents' concurrency to match their share",
            load_balance=m.load_balance,
            utilization=util,
            threshold=c.min_load_balance,
        )
    if m.live_failed_unrolled or (
        m.live_min_predicted is not None and m.live_min_predicted < c.min_live_predicted
    ):
        sev = 7 + min(3, m.live_failed_unrolled - 1) if m.live_failed_unrolled else 0
        if m.live_min_predicted is not None and m.live_min_predicted < c.min_live_predicted:
            sev = max(sev, severity(c.min_live_predicted - m.live_min_predicted, c.min_live_predicted))
        add(
            "unsafe_escalation",
            sev,
            f"{m.live_failed_unrolled} live task(s) failed without rollback; lowest live prediction "
            f"{m.live_min_predicted if m.live_min_predicted is not None else '-'}",
            "inspect the live effects of the failed tasks (buddy review); raise the escalation thresholds "
            "or run the next waves dry_run",
            live_failed_unrolled=m.live_failed_unrolled,
            live_min_predicted=m.live_min_predicted,
            threshold=c.min_live_predicted,
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
    if m.executed >= c.min_tasks and m.rollback_frequency > c.max_rollback_frequency:
        add(
            "high_rollback",
            severity(m.rollback_frequency - c.max_rollback_frequency, 1 - c.max_rollback_frequency),
            f"{m.rolled_back} of {m.executed} tasks rolled back ({m.rollback_frequency:.2f})",
            "see rollback_events.jsonl; tasks that keep rolling back should run dry_run until fixed",
            rollback_frequency=m.rollback_frequency,
            rolled_back=m.rolled_back,
            threshold=c.max_rollback_frequency,
        )
    if enough and m.conflict_rate > c.max_conflict_rate:
        add(
            "high_conflict",
            severity(m.conflict_rate - c.max_conflict_rate, 1 - c.max_conflict_rate),
            f"{m.conflicts} of {m.tasks} tasks were in a resource conflict ({m.conflict_rate:.2f})",
            "spread tasks that claim the same resources over more waves (conflicts.json)",
            conflict_rate=m.conflict_rate,
            conflicts=m.conflicts,
            threshold=c.max_conflict_rate,
        )
    out.sort(key=lambda a: (-a.severity, a.type, a.agent_id or ""))
    return out
