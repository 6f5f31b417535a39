"""The meta-optimizer: the goal of the next wave, chosen from the metrics so far, and why.

Pure and deterministic: the same metrics give the same decision. The coordinator's learner
calls :meth:`MetaOptimizer.decide` between waves (``--no-optimize`` skips it); the goal then
steers :class:`~buddy.optimizer.scheduler.AdaptiveScheduler` (docs/architecture.md,
"Learning between waves").

Meta-optimizer rules (first match wins, on the latest wave ``m``; :class:`OptimizerConfig`)
    1. no wave yet → ``balance_load`` (nothing observed: spread by concurrency);
    2. ``m.fleet_success < success_target`` (0.90; skipped, denied and cancelled tasks are not
       the fleet's failures, as in the health score) → ``maximize_success``;
    3. ``m.retry_rate > max_retry_rate`` (0.20) → ``minimize_retries``;
    4. at least ``min_calibration_tasks`` (10) predictions and ``m.confidence < target_confidence``
       − ``confidence_slack`` (0.95 − 0.10) → ``maximize_confidence``;
    5. the wave is a sample worth judging for load (:func:`~buddy.analysis.anomalies.load_judged`)
       and ``m.load_balance < min_load_balance`` (0.70) or ``m.optimization_efficiency <
       min_efficiency`` (0.70) → ``balance_load``;
    6. otherwise → ``maximize_throughput``.

What a goal does in the scheduler: it sets the *success exponent* β of the cost of
:mod:`buddy.optimizer.scheduler` —
``maximize_throughput`` and ``balance_load`` 1, ``maximize_success`` and ``minimize_retries``
3, ``maximize_confidence`` 2 plus ``4 · (1 − task confidence)`` per task, so the tasks the plan
is least sure of go to the agents that fail least; no goal: 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from buddy.analysis.anomalies import load_judged
from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.models import Strategy, utcnow


class OptimizationGoal(StrEnum):
    """What the next wave should improve (module docstring: rules and effects)."""

    MAXIMIZE_SUCCESS = "maximize_success"
    MAXIMIZE_THROUGHPUT = "maximize_throughput"
    BALANCE_LOAD = "balance_load"
    MINIMIZE_RETRIES = "minimize_retries"
    MAXIMIZE_CONFIDENCE = "maximize_confidence"


#: The assignment strategy of :mod:`buddy.plan.assignment` closest to each goal, for a coordinator that
#: re-plans with :meth:`CampaignPlan.reassign_wave` instead of the adaptive scheduler.
GOAL_STRATEGY: dict[OptimizationGoal, Strategy] = {
    OptimizationGoal.MAXIMIZE_SUCCESS: Strategy.CONFIDENCE,
    OptimizationGoal.MAXIMIZE_THROUGHPUT: Strategy.LOAD_BALANCED,
    OptimizationGoal.BALANCE_LOAD: Strategy.LOAD_BALANCED,
    OptimizationGoal.MINIMIZE_RETRIES: Strategy.CONFIDENCE,
    OptimizationGoal.MAXIMIZE_CONFIDENCE: Strategy.CONFIDENCE,
}

#: Success exponent β of the scheduler's cost per goal (module docstring).
GOAL_SUCCESS_EXPONENT: dict[OptimizationGoal | None, float] = {
    None: 2.0,
    OptimizationGoal.MAXIMIZE_THROUGHPUT: 1.0,
    OptimizationGoal.BALANCE_LOAD: 1.0,
    OptimizationGoal.MAXIMIZE_SUCCESS: 3.0,
    OptimizationGoal.MINIMIZE_RETRIES: 3.0,
    OptimizationGoal.MAXIMIZE_CONFIDENCE: 2.0,
}
#: Extra exponent for ``maximize_confidence``: ``CONFIDENCE_EXPONENT · (1 − task confidence)``.
CONFIDENCE_EXPONENT = 4.0


class OptimizerConfig(BaseModel):
    """Thresholds of the meta-optimizer's rules (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    success_target: float = Field(default=0.90, ge=0, le=1)
    max_retry_rate: float = Field(default=0.20, ge=0, le=1)
    target_confidence: float = Field(default=0.95, ge=0, le=1)
    confidence_slack: float = Field(default=0.10, ge=0, le=1)
    min_calibration_tasks: int = Field(default=10, ge=1)
    min_load_balance: float = Field(default=0.70, ge=0, le=1)
    min_efficiency: float = Field(default=0.70, ge=0, le=1)


class OptimizerDecision(BaseModel):
    """A goal chosen before a wave, and why (for the log and the report)."""

    wave: int | None = None
    goal: OptimizationGoal
    reason: str
    decided_at: datetime


class MetaOptimizer:
    """Picks the next wave's :class:`OptimizationGoal` from the metrics so far."""

    def __init__(self, config: OptimizerConfig | None = None, monitor: MonitorConfig | None = None) -> None:
        self.config = config or OptimizerConfig()
        self.monitor = monitor or MonitorConfig()  # when a wave's load is worth judging

    def choose(self, history: Sequence[WaveMetrics]) -> tuple[OptimizationGoal, str]:
        """The goal for the next wave and the reason, by the rules of the module docstring."""
        c = self.config
        if not history:
            return OptimizationGoal.BALANCE_LOAD, "no wave observed yet: spread tasks by concurrency"
        m = history[-1]
        w = f"wave {m.wave}"
        if m.fleet_judged and m.fleet_success < c.success_target:
            return (
                OptimizationGoal.MAXIMIZE_SUCCESS,
                f"{w}: success rate {m.fleet_success:.2f} < target {c.success_target:.2f}; "
                "route work to the agents that succeed",
            )
        if m.retry_rate > c.max_retry_rate:
            return (
                OptimizationGoal.MINIMIZE_RETRIES,
                f"{w}: retry rate {m.retry_rate:.2f} > {c.max_retry_rate:.2f}; "
                "route work away from agents with transient failures",
            )
        floor = c.target_confidence - c.confidence_slack
        if m.calibration.n >= c.min_calibration_tasks and m.confidence < floor:
            return (
                OptimizationGoal.MAXIMIZE_CONFIDENCE,
                f"{w}: confidence (1 − ECE) {m.confidence:.2f} < {floor:.2f}; "
                "send the least certain tasks to the most reliable agents",
            )
        judged = load_judged(m, self.monitor)
        if judged and (m.load_balance < c.min_load_balance or m.optimization_efficiency < c.min_efficiency):
            return (
                OptimizationGoal.BALANCE_LOAD,
                f"{w}: load balance {m.load_balance:.2f} (min {c.min_load_balance:.2f}), "
                f"optimization efficiency {m.optimization_efficiency:.2f} (min {c.min_efficiency:.2f}); "
                "split work by observed capacity",
            )
        return (
            OptimizationGoal.MAXIMIZE_THROUGHPUT,
            f"{w}: success {m.fleet_success:.2f}, retries {m.retry_rate:.2f}, balance "
            + (f"{m.load_balance:.2f} on target" if judged else "not judged (too few or too short tasks)")
            + "; push throughput",
        )

    def decide(self, history: Sequence[WaveMetrics], wave: int | None = None) -> OptimizerDecision:
        """:meth:`choose` as a record for ``wave`` (the wave about to run)."""
        goal, reason = self.choose(history)
        return OptimizerDecision(wave=wave, goal=goal, reason=reason, decided_at=utcnow())
