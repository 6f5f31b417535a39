"""The monitor: anomalies and a health score over wave metrics (docs/architecture.md, data flow).

Everything here is pure (no Redis, no Celery, files only in :func:`write_monitoring`). The
metrics themselves are :mod:`buddy.wave_metrics` (re-exported here).

- :func:`detect_anomalies`: the 13 anomaly types, thresholds in :class:`MonitorConfig`.
- :func:`health`: a score 0–100 from configurable weights, minus a penalty per anomaly.
- :func:`write_monitoring`: ``metrics.jsonl``, ``anomalies.jsonl``, ``system_health.json`` and
  ``wave_<n>/agent_<id>/agent_metrics.jsonl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from buddy.analysis.metrics import (
    AgentWaveMetrics,
    CampaignMetrics,
    Metrics,
    ToolWaveMetrics,
    WaveMetrics,
    campaign_metrics,
    clip01,
    compute_wave_metrics,
    percentile,
    summarize_wave,
)
from buddy.models import (
    utcnow,
)

__all__ = [
    "AgentWaveMetrics",
    "Anomaly",
    "CampaignMetrics",
    "HealthReport",
    "HealthWeights",
    "Metrics",
    "MonitorConfig",
    "SystemHealth",
    "ToolWaveMetrics",
    "WaveMetrics",
    "below_min_health",
    "campaign_metrics",
    "compute_wave_metrics",
    "detect_anomalies",
    "health",
    "health_components",
    "health_status",
    "percentile",
    "severity",
    "summarize_wave",
    "write_monitoring",
    "write_system_health",
]


# == anomalies and health =====================================================================

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
HealthStatus = Literal["EXCELLENT", "GOOD", "FAIR", "POOR"]


class HealthWeights(BaseModel):
    """Weight of each health component (any non-negative numbers; normalized by their sum).

    Components, each 0–1: ``success`` = success_rate; ``schedule_adherence``;
    ``calibration`` = confidence (1 − ECE); ``retries`` = 1 − retry_rate;
    ``optimization_efficiency``; ``load_balance``; ``rollback`` = 1 − rollback_frequency;
    ``conflict`` = 1 − conflict_rate.
    """

    model_config = ConfigDict(extra="forbid")

    success: float = Field(default=0.30, ge=0)
    schedule_adherence: float = Field(default=0.10, ge=0)
    calibration: float = Field(default=0.10, ge=0)
    retries: float = Field(default=0.10, ge=0)
    optimization_efficiency: float = Field(default=0.10, ge=0)
    load_balance: float = Field(default=0.10, ge=0)
    rollback: float = Field(default=0.10, ge=0)
    conflict: float = Field(default=0.10, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> HealthWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("health weights must not all be zero")
        return self


class MonitorConfig(BaseModel):
    """Anomaly thresholds and health weights. Defaults are the source documents' targets
    where they give one (success ≥ 0.90, schedule adherence ≥ 0.95, rollback ≤ 30 %,
    conflict ≤ 50 %, confidence ≥ 0.95 as 1 − ECE); the others are ours, and say so.

    Severity of an anomaly (1–10): ``1 + round(9 · excess / room)``, where ``excess`` is how
    far the value is past its threshold and ``room`` the distance from the threshold to the
    worst possible value (0 for a floor on a 0–1 metric, 1 for a ceiling); the exceptions
    say so in :func:`detect_anomalies`.
    """

    model_config = ConfigDict(extra="forbid")

    min_tasks: int = Field(default=1, ge=1, description="a wave's rate anomalies need this many tasks")
    min_success_rate: float = Field(
        default=0.90, ge=0, le=1, description="high_failure below (source target)"
    )
    min_schedule_adherence: float = Field(
        default=0.95, ge=0, le=1, description="schedule_drift below (source)"
    )
    max_retry_rate: float = Field(default=0.20, ge=0, le=1, description="excessive_retries above (ours)")
    min_optimization_efficiency: float = Field(
        default=0.50, ge=0, le=1, description="optimization_failure below, ≥ 2 agents (ours)"
    )
    min_agent_success_rate: float = Field(default=0.50, ge=0, le=1, description="agent_failure below (ours)")
    min_agent_tasks: int = Field(default=3, ge=1, description="agent_failure needs this many executed tasks")
    max_coordination_rate: float = Field(
        default=0.10, ge=0, le=1, description="coordination_issue above: such tasks / tasks (ours)"
    )
    target_confidence: float = Field(
        default=0.95, ge=0, le=1, description="1 − ECE the predictions should reach (source target)"
    )
    max_confidence_drop: float = Field(
        default=0.10, ge=0, le=1, description="confidence_drop: fall from the previous calibrated wave (ours)"
    )
    max_prediction_bias: float = Field(
        default=0.15, ge=0, le=1, description="prediction_drift above |predicted − observed| (ours)"
    )
    min_calibration_tasks: int = Field(
        default=10, ge=1, description="confidence and prediction anomalies need this many predicted tasks"
    )
    min_load_balance: float = Field(default=0.50, ge=0, le=1, description="load_imbalance below (ours)")
    min_live_predicted: float = Field(
        default=0.50, ge=0, le=1, description="unsafe_escalation: a live task predicted below this (ours)"
    )
    repeated_failure_count: int = Field(
        default=3, ge=2, description="repeated_failures: this many tasks failing with one tool and error"
    )
    max_rollback_frequency: float = Field(
        default=0.30, ge=0, le=1, description="high_rollback above (source)"
    )
    max_conflict_rate: float = Field(default=0.50, ge=0, le=1, description="high_conflict above (source)")
    weights: HealthWeights = Field(default_factory=HealthWeights)
    penalty_per_severity: float = Field(default=1.0, ge=0, description="health points off per severity point")
    max_penalty: float = Field(default=30.0, ge=0, le=100, description="cap of the anomaly penalty, points")
    excellent: float = Field(default=90.0, description="EXCELLENT at or above")
    good: float = Field(default=75.0, description="GOOD at or above")
    fair: float = Field(default=50.0, description="FAIR at or above; POOR below")


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


class HealthReport(BaseModel):
    """Health of a wave (or of the campaign: ``wave`` None), 0–100, with its parts.

    ``score = 100 · Σ wᵢ·cᵢ / Σ wᵢ − penalty``, ``penalty = min(max_penalty,
    penalty_per_severity · Σ anomaly severities)``, clipped to 0–100; components ``cᵢ`` and
    weights ``wᵢ`` as in :class:`HealthWeights`. Status: EXCELLENT ≥ 90, GOOD ≥ 75, FAIR ≥ 50,
    else POOR (configurable).
    """

    campaign_id: str = ""
    wave: int | None = None
    score: float = Field(ge=0, le=100)
    status: HealthStatus
    components: dict[str, float]
    weights: dict[str, float]
    penalty: float
    anomalies: int
    generated_at: datetime


def health_status(score: float, config: MonitorConfig | None = None) -> HealthStatus:
    """EXCELLENT, GOOD, FAIR or POOR for ``score`` by the config's bands."""
    c = config or MonitorConfig()
    if score >= c.excellent:
        return "EXCELLENT"
    if score >= c.good:
        return "GOOD"
    if score >= c.fair:
        return "FAIR"
    return "POOR"


def health_components(m: Metrics) -> dict[str, float]:
    """The health components of ``m``, each 0–1 (:class:`HealthWeights`)."""
    return {
        "success": clip01(m.success_rate),
        "schedule_adherence": clip01(m.schedule_adherence),
        "calibration": clip01(m.confidence),
        "retries": clip01(1 - m.retry_rate),
        "optimization_efficiency": clip01(m.optimization_efficiency),
        "load_balance": clip01(m.load_balance),
        "rollback": clip01(1 - m.rollback_frequency),
        "conflict": clip01(1 - m.conflict_rate),
    }


def health(
    metrics: Metrics,
    anomalies: Sequence[Anomaly] = (),
    config: MonitorConfig | None = None,
    *,
    now: datetime | None = None,
) -> HealthReport:
    """The :class:`HealthReport` of a wave's (or the campaign's) metrics and anomalies."""
    c = config or MonitorConfig()
    comps = health_components(metrics)
    weights = c.weights.model_dump()
    total = sum(weights.values())
    base = 100.0 * sum(weights[k] * comps[k] for k in comps) / total
    penalty = min(c.max_penalty, c.penalty_per_severity * sum(a.severity for a in anomalies))
    score = min(100.0, max(0.0, base - penalty))
    return HealthReport(
        campaign_id=metrics.campaign_id,
        wave=metrics.wave if isinstance(metrics, WaveMetrics) else None,
        score=score,
        status=health_status(score, c),
        components=comps,
        weights=weights,
        penalty=penalty,
        anomalies=len(anomalies),
        generated_at=now or utcnow(),
    )


def below_min_health(report: HealthReport, min_health: float | None) -> bool:
    """True when ``--min-health`` is set and the report's score is below it (abort: exit 3)."""
    return min_health is not None and report.score < min_health


# == files ====================================================================================

METRICS_FILE = "metrics.jsonl"
ANOMALIES_FILE = "anomalies.jsonl"
HEALTH_FILE = "system_health.json"
AGENT_METRICS_FILE = "agent_metrics.jsonl"


class SystemHealth(BaseModel):
    """``system_health.json``: the latest health, its metrics and anomalies, and every wave's health."""

    campaign_id: str
    updated_at: datetime
    health: HealthReport
    metrics: WaveMetrics | CampaignMetrics
    anomalies: list[Anomaly]
    history: list[HealthReport] = Field(default_factory=list)


def write_monitoring(
    out_dir: Path,
    metrics: WaveMetrics,
    anomalies: Sequence[Anomaly],
    report: HealthReport,
    history: Sequence[HealthReport] = (),
) -> list[Path]:
    """Write one wave's monitoring files under the campaign folder ``out_dir``.

    Appends ``metrics.jsonl`` (one line) and ``anomalies.jsonl``, writes
    ``wave_<n>/agent_<id>/agent_metrics.jsonl`` per agent (one line each), and replaces
    ``system_health.json`` (``history``: earlier waves' reports; this one is added).
    Returns the paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / METRICS_FILE, out_dir / ANOMALIES_FILE]
    with written[0].open("a", encoding="utf-8") as f:
        f.write(metrics.model_dump_json() + "\n")
    with written[1].open("a", encoding="utf-8") as f:
        for a in anomalies:
            f.write(a.model_dump_json() + "\n")
    for aid, row in metrics.agents.items():
        d = out_dir / f"wave_{metrics.wave}" / f"agent_{aid}"
        d.mkdir(parents=True, exist_ok=True)
        (d / AGENT_METRICS_FILE).write_text(row.model_dump_json() + "\n", encoding="utf-8")
        written.append(d / AGENT_METRICS_FILE)
    written.append(write_system_health(out_dir, metrics, anomalies, report, history))
    return written


def write_system_health(
    out_dir: Path,
    metrics: WaveMetrics | CampaignMetrics,
    anomalies: Sequence[Anomaly],
    report: HealthReport,
    history: Sequence[HealthReport] = (),
) -> Path:
    """Replace ``system_health.json`` atomically (for the final, campaign-wide one too)."""
    doc = SystemHealth(
        campaign_id=metrics.campaign_id,
        updated_at=report.generated_at,
        health=report,
        metrics=metrics,
        anomalies=list(anomalies),
        history=[*history, report] if isinstance(metrics, WaveMetrics) else list(history),
    )
    path = out_dir / HEALTH_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(doc.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
