"""Health of a wave or a campaign: a score 0–100 from weighted components, minus a penalty per anomaly.

Weights, penalty and bands are :class:`~buddy.analysis.monitor.MonitorConfig`'s
(docs/architecture.md, "Learning between waves"); ``--min-health`` aborts a campaign whose
wave scores below it (:func:`below_min_health`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from buddy.analysis.anomalies import Anomaly
from buddy.analysis.metrics import Metrics, WaveMetrics, clip01
from buddy.analysis.monitor import MonitorConfig
from buddy.models import utcnow

HealthStatus = Literal["EXCELLENT", "GOOD", "FAIR", "POOR"]


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
