"""The monitor's settings: anomaly thresholds, health weights and health bands.

The monitor itself is :func:`buddy.analysis.anomalies.detect_anomalies` (13 anomaly types,
most severe first) and :func:`buddy.analysis.health.health` (a 0–100 score: the fleet's
success times the quality of how it ran, minus a penalty per anomaly), both over the wave
metrics of :mod:`buddy.analysis.metrics` (docs/architecture.md, "Learning between waves").
Defaults marked *source* are the targets of the source documents (the seeds: success ≥ 0.90,
schedule adherence ≥ 0.95, confidence ≥ 0.95, health ≥ 90, optimization efficiency ≥ 0.90,
Phase 24's unsafe escalation); *issue 14* marks the minimum samples of "Health cries wolf";
the others are ours, and say so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Anomaly types that are reported but take no health points by default: they are about the
#: plan's predictions (``unsafe_escalation`` locks the system instead) or the scheduler's
#: split of the work (already weighed, boundedly, by the ``optimization_efficiency`` and
#: ``load_balance`` components), not about the fleet's health.
UNSCORED_ANOMALIES = (
    "confidence_drop",
    "prediction_drift",
    "unsafe_escalation",
    "optimization_failure",
    "load_imbalance",
)


class HealthWeights(BaseModel):
    """Weight of each health component (any non-negative numbers).

    Components, each 0–1: ``success`` = fleet_success (1 − failed, timed-out, lost,
    needs-review and failed-then-rolled-back tasks / tasks judged; skipped, denied and
    cancelled tasks are not judged); ``schedule_adherence``; ``calibration`` = confidence
    (1 − ECE, the plan's predictions: weight 0 by default, reported only);
    ``retries`` = 1 − retry_rate; ``optimization_efficiency``; ``load_balance``;
    ``rollback`` = 1 − rollback_frequency; ``conflict`` = 1 − conflict_rate.

    The score multiplies by ``success`` (:func:`buddy.analysis.health.health`); the other
    components make up the *quality* ``(w_success + Σ wᵢ·cᵢ) / (w_success + Σ wᵢ)`` over the
    components judged, so ``success``'s weight is the share of the quality the other
    components cannot take away (defaults: half; an all-success wave whose other components
    average ≥ 0.8 scores ≥ 90).
    """

    model_config = ConfigDict(extra="forbid")

    success: float = Field(default=0.50, ge=0)
    schedule_adherence: float = Field(default=0.10, ge=0)
    calibration: float = Field(default=0.0, ge=0)
    retries: float = Field(default=0.10, ge=0)
    optimization_efficiency: float = Field(default=0.05, ge=0)
    load_balance: float = Field(default=0.05, ge=0)
    rollback: float = Field(default=0.10, ge=0)
    conflict: float = Field(default=0.10, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> HealthWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("health weights must not all be zero")
        return self


class MonitorConfig(BaseModel):
    """Anomaly thresholds, minimum samples and health weights (module docstring for the
    sources of the defaults). Fractions are 0–1, health scores 0–100, times in seconds.

    A value equal to its threshold is within it (a floor is broken below it, a ceiling
    above it). Severity of an anomaly (1–10): ``1 + round(9 · excess / room)``, where
    ``excess`` is how far the value is past its threshold and ``room`` the distance from the
    threshold to the worst possible value (0 for a floor on a 0–1 metric, 1 for a ceiling);
    the exceptions say so in :func:`~buddy.analysis.anomalies.detect_anomalies`.
    """

    model_config = ConfigDict(extra="forbid")

    min_tasks: int = Field(default=1, ge=1, description="a wave's rate anomalies need this many tasks")
    min_success_rate: float = Field(
        default=0.90, ge=0, le=1, description="high_failure below, on fleet_success (source)"
    )
    min_schedule_adherence: float = Field(
        default=0.95, ge=0, le=1, description="schedule_drift below (source)"
    )
    max_retry_rate: float = Field(default=0.20, ge=0, le=1, description="excessive_retries above (ours)")
    min_optimization_efficiency: float = Field(
        default=0.90, ge=0, le=1, description="optimization_failure below, on a judged load (source)"
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
    min_load_balance: float = Field(
        default=0.50, ge=0, le=1, description="load_imbalance below, on a judged load (ours)"
    )
    min_tasks_per_agent: int = Field(
        default=2,
        ge=1,
        description="load, efficiency and throughput are judged only over at least this many executed "
        "tasks per agent in service (issue 14)",
    )
    min_makespan_s: float = Field(
        default=1.0,
        ge=0,
        description="... and when the busiest agent's work took at least this many seconds "
        "(assigned_makespan_s): below it the split cannot have cost a noticeable time (ours)",
    )
    min_live_executions: int = Field(
        default=5, ge=1, description="unsafe_escalation needs this many judged live executions (source)"
    )
    max_live_drift: float = Field(
        default=0.4,
        ge=0,
        le=1,
        description="unsafe_escalation above: mean |predicted − actual| over them (source, Phase 24)",
    )
    repeated_failure_count: int = Field(
        default=3, ge=2, description="repeated_failures: this many tasks failing with one tool and error"
    )
    max_rollback_frequency: float = Field(
        default=0.30, ge=0, le=1, description="high_rollback above (source)"
    )
    max_conflict_rate: float = Field(default=0.50, ge=0, le=1, description="high_conflict above (source)")
    weights: HealthWeights = Field(default_factory=HealthWeights)
    unscored_anomalies: list[str] = Field(
        default_factory=lambda: list(UNSCORED_ANOMALIES),
        description="anomaly types that take no health points: the plan's predictions and the "
        "scheduler's split, not the fleet (ours)",
    )
    penalty_per_severity: float = Field(default=1.0, ge=0, description="health points off per severity point")
    max_penalty: float = Field(
        default=30.0, ge=0, le=100, description="cap of a wave's anomaly penalty, points"
    )
    excellent: float = Field(default=90.0, description="EXCELLENT at or above (source: health ≥ 90)")
    good: float = Field(default=75.0, description="GOOD at or above")
    fair: float = Field(default=50.0, description="FAIR at or above; POOR below")
