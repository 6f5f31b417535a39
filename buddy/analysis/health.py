"""Health of a wave or a campaign: a score 0–100, the fleet's success times the quality of how
it ran, minus a penalty per anomaly.

Weights, penalty, bands and minimum samples are :class:`~buddy.analysis.monitor.MonitorConfig`'s
(docs/architecture.md, "Learning between waves"); ``--min-health`` aborts a campaign whose
wave scores below it (:func:`below_min_health`). The score judges the fleet, not the plan: a
poorly calibrated ``predicted_success`` is reported (the ``calibration`` component, the
``prediction_drift``, ``confidence_drop`` and ``unsafe_escalation`` anomalies) but takes no
points by default, and the scheduler's split weighs only through its two components
(``optimization_failure`` and ``load_imbalance`` take no points), so a campaign whose every
task succeeded on a healthy fleet (on plan, without retries, rollbacks or conflicts) scores
≥ 90 whatever its size, its split and its predictions (issue 14).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from buddy.analysis.anomalies import Anomaly, load_judged
from buddy.analysis.metrics import CampaignMetrics, Metrics, WaveMetrics, clip01
from buddy.analysis.monitor import MonitorConfig
from buddy.models import utcnow

HealthStatus = Literal["EXCELLENT", "GOOD", "FAIR", "POOR"]

#: Components judged only on a load worth judging (:func:`~buddy.analysis.anomalies.load_judged`).
LOAD_COMPONENTS = ("optimization_efficiency", "load_balance")


class HealthReport(BaseModel):
    """Health of a wave (or of the campaign: ``wave`` None), 0–100, with its parts.

    ``score = 100 · success · quality − penalty``, clipped to 0–100, where ``success`` is the
    fleet's (0–1: 1 − failed, timed-out, lost, needs-review and failed-then-rolled-back tasks
    / tasks judged; skipped, denied and cancelled tasks are not judged) and ``quality`` (0–1)
    is ``(w_success + Σ wᵢ·cᵢ) / (w_success + Σ wᵢ)`` over the other components ``cᵢ`` judged
    (:class:`~buddy.analysis.monitor.HealthWeights`). ``not_judged``: components left out of
    the quality, with their value still in ``components`` (load and efficiency on a wave too
    small or too short to judge). ``penalty``: ``min(max_penalty, penalty_per_severity · Σ
    severities)`` over the anomalies not in ``unscored_anomalies``; for a campaign, the mean
    of its waves' penalties. Each failed task thus lowers the score by ``100 · quality /
    judged`` points, and a third of the tasks failing caps it at 67 (FAIR). Status:
    EXCELLENT ≥ 90, GOOD ≥ 75, FAIR ≥ 50, else POOR (configurable).
    """

    campaign_id: str = ""
    wave: int | None = None
    score: float = Field(ge=0, le=100)
    status: HealthStatus
    components: dict[str, float]
    weights: dict[str, float]
    quality: float = 1.0
    not_judged: list[str] = Field(default_factory=list)
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
    """The health components of ``m``, each 0–1 (:class:`~buddy.analysis.monitor.HealthWeights`)."""
    return {
        "success": clip01(m.fleet_success),
        "schedule_adherence": clip01(m.schedule_adherence),
        "calibration": clip01(m.confidence),
        "retries": clip01(1 - m.retry_rate),
        "optimization_efficiency": clip01(m.optimization_efficiency),
        "load_balance": clip01(m.load_balance),
        "rollback": clip01(1 - m.rollback_frequency),
        "conflict": clip01(1 - m.conflict_rate),
    }


def penalty_of(anomalies: Sequence[Anomaly], config: MonitorConfig, waves: int | None = None) -> float:
    """Health points the anomalies take: per wave ``min(max_penalty, penalty_per_severity ·
    Σ severities)`` of its scored anomalies (types not in ``unscored_anomalies``). ``waves``
    None: one wave's anomalies; else a campaign of that many waves, whose penalty is the mean
    of its waves' (a wave without an anomaly counts 0)."""
    unscored = set(config.unscored_anomalies)
    by_wave: dict[int | None, float] = {}
    for a in anomalies:
        if a.type not in unscored:
            by_wave[a.wave] = by_wave.get(a.wave, 0.0) + a.severity
    per_wave = [min(config.max_penalty, config.penalty_per_severity * s) for s in by_wave.values()]
    if waves is None:
        return min(config.max_penalty, sum(per_wave))
    return sum(per_wave) / max(waves, len(per_wave), 1)


def health(
    metrics: Metrics,
    anomalies: Sequence[Anomaly] = (),
    config: MonitorConfig | None = None,
    *,
    now: datetime | None = None,
) -> HealthReport:
    """The :class:`HealthReport` of a wave's (or the campaign's) metrics and anomalies (for a
    campaign: every wave's anomalies, :func:`penalty_of`)."""
    c = config or MonitorConfig()
    comps = health_components(metrics)
    weights = c.weights.model_dump()
    not_judged = [] if load_judged(metrics, c) else [k for k in LOAD_COMPONENTS if weights[k] > 0]
    others = [k for k in comps if k != "success" and k not in not_judged]
    total = weights["success"] + sum(weights[k] for k in others)
    quality = (weights["success"] + sum(weights[k] * comps[k] for k in others)) / total if total > 0 else 1.0
    base = 100.0 * comps["success"] * quality
    waves = metrics.waves if isinstance(metrics, CampaignMetrics) else None
    penalty = penalty_of(anomalies, c, waves)
    score = min(100.0, max(0.0, base - penalty))
    return HealthReport(
        campaign_id=metrics.campaign_id,
        wave=metrics.wave if isinstance(metrics, WaveMetrics) else None,
        score=score,
        status=health_status(score, c),
        components=comps,
        weights=weights,
        quality=quality,
        not_judged=not_judged,
        penalty=penalty,
        anomalies=len(anomalies),
        generated_at=now or utcnow(),
    )


def below_min_health(report: HealthReport, min_health: float | None) -> bool:
    """True when ``--min-health`` is set and the report's score is below it (abort: exit 3)."""
    return min_health is not None and report.score < min_health
