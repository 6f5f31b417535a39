"""The monitor's settings: anomaly thresholds, health weights and health bands.

The monitor itself is :func:`buddy.analysis.anomalies.detect_anomalies` (13 anomaly types,
most severe first) and :func:`buddy.analysis.health.health` (a 0–100 score from weighted
components minus a penalty per anomaly), both over the wave metrics of
:mod:`buddy.analysis.metrics` (docs/architecture.md, "Learning between waves").
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
