"""Learning between waves: the meta-optimizer, the agent tuner and the adaptive scheduler.

All three are pure and deterministic: the same metrics give the same decisions. The
coordinator calls them between waves (``--no-optimize`` skips them and keeps the static plan):

1. :meth:`MetaOptimizer.choose` picks an :class:`OptimizationGoal` from the last wave's
   metrics, with the reason to log;
2. :meth:`AgentTuner.tune` proposes per-agent parameters (:class:`TunedParameters`) and one
   :class:`ParameterChange` per changed value (lines of ``tuned_parameters.jsonl``);
   :func:`plan_pool_changes` turns the concurrency changes into ``pool_grow`` /
   ``pool_shrink`` deltas;
3. :meth:`AdaptiveScheduler.observe` folds the wave's per-agent speed and success into
   exponentially weighted estimates and :meth:`AdaptiveScheduler.assign` assigns the next
   wave from them (one :class:`ScheduleAdjustment` per moved task: ``adjusted_schedule.jsonl``).

Meta-optimizer rules (first match wins, on the latest wave ``m``; :class:`OptimizerConfig`)
    1. no wave yet → ``balance_load`` (nothing observed: spread by concurrency);
    2. ``m.success_rate < success_target`` (0.90) → ``maximize_success``;
    3. ``m.retry_rate > max_retry_rate`` (0.20) → ``minimize_retries``;
    4. at least ``min_calibration_tasks`` (10) predictions and ``m.confidence < target_confidence``
       − ``confidence_slack`` (0.95 − 0.10) → ``maximize_confidence``;
    5. ``m.load_balance < min_load_balance`` (0.70) or ``m.optimization_efficiency <
       min_efficiency`` (0.70) → ``balance_load``;
    6. otherwise → ``maximize_throughput``.

What a goal does in the scheduler: it sets the *success exponent* β of the cost below —
``maximize_throughput`` and ``balance_load`` 1, ``maximize_success`` and ``minimize_retries``
3, ``maximize_confidence`` 2 plus ``4 · (1 − task confidence)`` per task, so the tasks the plan
is least sure of go to the agents that fail least; no goal: 2.

Adaptive scheduler
    Per agent, exponentially weighted with ``alpha`` (0.5: the newest wave counts half, the
    one before a quarter, …; the first observation is taken as is): ``duration_s`` = mean
    task duration (seconds) and ``success`` = attempt success rate (share of attempts that did
    not fail, so transient failures repaired by a retry count). An agent not yet observed gets
    the mean of the observed agents (1 s and 1.0 when none is).

    An agent is *degraded* when its ``success < degraded_success`` (0.75) after at least
    ``min_observations`` (1) waves. Eligible agents for a task: healthy (in ``healthy``), not
    degraded, offering the task's tool; if none, healthy ones offering it; if none, every agent
    offering it.

    Cost of task ``t`` on agent ``a`` (relative time): ``u_t · d_a / (c_a · s_a^β)`` where
    ``u_t`` is the task's expected seconds (1 when unknown), ``d_a`` the agent's duration,
    ``c_a`` its concurrency and ``s_a`` its success (floored at 0.05): ``d / c`` is the time
    per task of one slot, ``1 / s`` the expected attempts per success (β > 1 weighs a failure
    more than the time it costs). Pinned tasks stay on their agent unless it is unhealthy or
    degraded and a healthy, non-degraded agent offers the tool (otherwise the pin stands);
    moved pins and unpinned tasks go by greedy longest-processing-time first: in order of
    ``u_t`` descending (plan line breaking ties), each task goes to the eligible agent whose
    load plus the task's cost is least (agent order breaking ties): the classic greedy
    approximation of the least expected makespan. A healthy degraded agent still receives
    ``probe_tasks`` (1) of the shortest unpinned tasks it offers when the wave has at least
    ``probe_min_tasks`` (20) such tasks, so that it can show it recovered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from buddy.analysis.monitor import AgentWaveMetrics, WaveMetrics
from buddy.coordinator.dispatch import MAX_BATCH
from buddy.models import AgentSpec, ScheduleAdjustment, Strategy, utcnow
from buddy.plan.build import PlannedTask

ADJUSTED_SCHEDULE_FILE = "adjusted_schedule.jsonl"
TUNED_PARAMETERS_FILE = "tuned_parameters.jsonl"


class OptimizationGoal(StrEnum):
    """What the next wave should improve (module docstring: rules and effects)."""

    MAXIMIZE_SUCCESS = "maximize_success"
    MAXIMIZE_THROUGHPUT = "maximize_throughput"
    BALANCE_LOAD = "balance_load"
    MINIMIZE_RETRIES = "minimize_retries"
    MAXIMIZE_CONFIDENCE = "maximize_confidence"


#: The assignment strategy of :mod:`buddy.plan` closest to each goal, for a coordinator that
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

    def __init__(self, config: OptimizerConfig | None = None) -> None:
        self.config = config or OptimizerConfig()

    def choose(self, history: Sequence[WaveMetrics]) -> tuple[OptimizationGoal, str]:
        """The goal for the next wave and the reason, by the rules of the module docstring."""
        c = self.config
        if not history:
            return OptimizationGoal.BALANCE_LOAD, "no wave observed yet: spread tasks by concurrency"
        m = history[-1]
        w = f"wave {m.wave}"
        if m.success_rate < c.success_target:
            return (
                OptimizationGoal.MAXIMIZE_SUCCESS,
                f"{w}: success rate {m.success_rate:.2f} < target {c.success_target:.2f}; "
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
        if m.load_balance < c.min_load_balance or m.optimization_efficiency < c.min_efficiency:
            return (
                OptimizationGoal.BALANCE_LOAD,
                f"{w}: load balance {m.load_balance:.2f} (min {c.min_load_balance:.2f}), "
                f"optimization efficiency {m.optimization_efficiency:.2f} (min {c.min_efficiency:.2f}); "
                "split work by observed capacity",
            )
        return (
            OptimizationGoal.MAXIMIZE_THROUGHPUT,
            f"{w}: success {m.success_rate:.2f}, retries {m.retry_rate:.2f}, balance "
            f"{m.load_balance:.2f} on target; push throughput",
        )

    def decide(self, history: Sequence[WaveMetrics], wave: int | None = None) -> OptimizerDecision:
        """:meth:`choose` as a record for ``wave`` (the wave about to run)."""
        goal, reason = self.choose(history)
        return OptimizerDecision(wave=wave, goal=goal, reason=reason, decided_at=utcnow())


# -- agent tuner -------------------------------------------------------------------------------


class TunerConfig(BaseModel):
    """Rules of :class:`AgentTuner` (each applies when the agent ran ``min_samples`` tasks).

    - concurrency: shrink by ``step`` when success < ``shrink_success``; grow by ``step`` when
      utilization ≥ ``grow_utilization`` and success ≥ ``grow_success``; ``step = max(1,
      round(concurrency · step_fraction))``; within ``min_concurrency``…``max_concurrency``.
    - max retries: −1 when at least ``min_retried`` tasks were retried and fewer than
      ``retry_useless`` of them succeeded; +1 when at least ``retry_useful`` of them succeeded
      and some retried task still failed; within 0…``max_retries_cap``.
    - timeout: ``timeout_factor`` × the agent's p99 latency, within ``min_timeout_s``…
      ``max_timeout_s``, changed only when it moves by more than ``timeout_hysteresis``.
    - batch size: ``floor(target_message_s / mean duration)``, within 1…``max_batch``.
    - confidence weight: over every wave so far, (predicted tasks that succeeded) / (Σ their
      predicted_success), within ``min_confidence_weight``…1; 1 until ``min_samples``
      predictions: below 1 the agent's results fall short of the predictions (calibration in
      the large), and task confidences on it should be scaled down by this factor.
    """

    model_config = ConfigDict(extra="forbid")

    min_samples: int = Field(default=3, ge=1)
    shrink_success: float = Field(default=0.60, ge=0, le=1)
    grow_utilization: float = Field(default=0.75, ge=0, le=1)
    grow_success: float = Field(default=0.90, ge=0, le=1)
    step_fraction: float = Field(default=0.25, gt=0, le=1)
    min_concurrency: int = Field(default=1, ge=1)
    max_concurrency: int = Field(default=64, ge=1, le=256)
    default_max_retries: int = Field(default=3, ge=0)
    min_retried: int = Field(default=3, ge=1)
    retry_useless: float = Field(default=0.25, ge=0, le=1)
    retry_useful: float = Field(default=0.60, ge=0, le=1)
    max_retries_cap: int = Field(default=6, ge=0)
    timeout_factor: float = Field(default=3.0, gt=0)
    min_timeout_s: float = Field(default=5.0, gt=0)
    max_timeout_s: float = Field(default=3600.0, gt=0)
    timeout_hysteresis: float = Field(default=0.20, ge=0)
    target_message_s: float = Field(default=0.25, gt=0)
    max_batch: int = Field(default=MAX_BATCH, ge=1)
    min_confidence_weight: float = Field(default=0.10, ge=0, le=1)


class TunedParameters(BaseModel):
    """An agent's parameters for the next wave; ``timeout_s`` None keeps the tools' own."""

    agent_id: str
    wave: int | None = None
    concurrency: int = Field(ge=1)
    max_retries: int = Field(ge=0)
    timeout_s: float | None = None
    batch_size: int = Field(default=1, ge=1)
    confidence_weight: float = Field(default=1.0, ge=0, le=1)
    reason: str = "initial"


class ParameterChange(BaseModel):
    """One changed parameter of one agent; a line of ``tuned_parameters.jsonl``."""

    agent_id: str
    wave: int | None = None
    parameter: str
    old: Any
    new: Any
    reason: str
    changed_at: datetime


class AgentTuner:
    """Proposes each agent's parameters for the next wave from the waves so far."""

    def __init__(self, config: TunerConfig | None = None) -> None:
        self.config = config or TunerConfig()

    def initial(self, agents: Sequence[AgentSpec]) -> dict[str, TunedParameters]:
        """Parameters before any wave: the agents' concurrency, the default retries."""
        return {
            a.id: TunedParameters(
                agent_id=a.id, concurrency=a.concurrency, max_retries=self.config.default_max_retries
            )
            for a in agents
        }

    def tune(
        self,
        agents: Sequence[AgentSpec],
        history: Sequence[WaveMetrics],
        current: Mapping[str, TunedParameters] | None = None,
        *,
        wave: int | None = None,
        now: datetime | None = None,
    ) -> tuple[dict[str, TunedParameters], list[ParameterChange]]:
        """New parameters per agent (for ``wave``) and the changes, from ``history`` (oldest
        first; the latest wave drives concurrency, retries, timeout and batch size, all of
        them the confidence weight). ``current``: the parameters in force (default
        :meth:`initial`)."""
        c = self.config
        at = now or utcnow()
        cur = dict(current) if current is not None else self.initial(agents)
        last = history[-1] if history else None
        out: dict[str, TunedParameters] = {}
        changes: list[ParameterChange] = []
        for spec in agents:
            old = cur.get(spec.id) or self.initial([spec])[spec.id]
            new = old.model_copy(update={"wave": wave})
            reasons: dict[str, str] = {}
            row = last.agents.get(spec.id) if last is not None else None
            if row is not None and row.executed >= c.min_samples:
                self._concurrency(row, old, new, reasons)
                self._retries(row, old, new, reasons)
                self._timeout(row, old, new, reasons)
                self._batch(row, old, new, reasons)
            self._weight(spec.id, history, old, new, reasons)
            new.reason = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "unchanged"
            for name, why in reasons.items():
                changes.append(
                    ParameterChange(
                        agent_id=spec.id,
                        wave=wave,
                        parameter=name,
                        old=getattr(old, name),
                        new=getattr(new, name),
                        reason=why,
                        changed_at=at,
                    )
                )
            out[spec.id] = new
        return out, changes

    def _concurrency(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        step = max(1, round(old.concurrency * c.step_fraction))
        target = old.concurrency
        why = ""
        if row.success_rate < c.shrink_success:
            target = old.concurrency - step
            why = f"success {row.success_rate:.2f} < {c.shrink_success:.2f}: less pressure on a failing agent"
        elif row.utilization >= c.grow_utilization and row.success_rate >= c.grow_success:
            target = old.concurrency + step
            why = (
                f"utilization {row.utilization:.2f} ≥ {c.grow_utilization:.2f} "
                f"with success {row.success_rate:.2f}"
            )
        target = max(c.min_concurrency, min(c.max_concurrency, target))
        if target != old.concurrency:
            new.concurrency = target
            reasons["concurrency"] = why

    def _retries(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        if row.retried < c.min_retried:
            return
        helped = row.retried_succeeded / row.retried
        target = old.max_retries
        if helped < c.retry_useless:
            target = max(0, old.max_retries - 1)
            why = f"retries rarely help: {row.retried_succeeded} of {row.retried} retried tasks succeeded"
        elif helped >= c.retry_useful and row.retried_succeeded < row.retried:
            target = min(c.max_retries_cap, old.max_retries + 1)
            why = (
                f"retries help ({row.retried_succeeded} of {row.retried} retried tasks succeeded) "
                "but some retried tasks still failed"
            )
        if target != old.max_retries:
            new.max_retries = target
            reasons["max_retries"] = why

    def _timeout(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        if row.latency_p99_ms <= 0:
            return
        target = round(
            min(c.max_timeout_s, max(c.min_timeout_s, c.timeout_factor * row.latency_p99_ms / 1000)), 1
        )
        if old.timeout_s is not None and abs(target - old.timeout_s) <= c.timeout_hysteresis * old.timeout_s:
            return
        new.timeout_s = target
        reasons["timeout_s"] = f"{c.timeout_factor:g} × p99 latency {row.latency_p99_ms:.0f} ms"

    def _batch(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        mean_s = row.mean_duration_ms / 1000
        target = c.max_batch if mean_s <= 0 else int(c.target_message_s // mean_s)
        target = max(1, min(c.max_batch, target))
        if target != old.batch_size:
            new.batch_size = target
            reasons["batch_size"] = (
                f"mean duration {row.mean_duration_ms:.1f} ms: "
                f"about {c.target_message_s:g} s of work per message"
            )

    def _weight(
        self,
        agent_id: str,
        history: Sequence[WaveMetrics],
        old: TunedParameters,
        new: TunedParameters,
        reasons: dict[str, str],
    ) -> None:
        c = self.config
        rows = [w.agents[agent_id] for w in history if agent_id in w.agents]
        n = sum(r.predicted_n for r in rows)
        if n < c.min_samples:
            return
        expected = sum(r.predicted_sum for r in rows)
        ok = sum(r.predicted_succeeded for r in rows)
        ratio = 1.0 if expected <= 0 else ok / expected
        target = round(max(c.min_confidence_weight, min(1.0, ratio)), 3)
        if target != old.confidence_weight:
            new.confidence_weight = target
            reasons["confidence_weight"] = (
                f"{ok} of {n} predicted tasks succeeded against {expected:.1f} expected"
            )


def plan_pool_changes(current: Mapping[str, int], tuned: Mapping[str, TunedParameters]) -> dict[str, int]:
    """Per agent, the change of pool size to send: ``tuned concurrency − current`` (positive:
    ``pool_grow`` by that many, negative: ``pool_shrink``). Only agents in both maps with a
    non-zero change, sorted by id. ``current`` is the concurrency in force per worker of the
    agent (the remote control acts per worker)."""
    return {
        aid: tuned[aid].concurrency - n
        for aid, n in sorted(current.items())
        if aid in tuned and tuned[aid].concurrency != n
    }


# -- adaptive scheduler ------------------------------------------------------------------------


class SchedulerConfig(BaseModel):
    """Settings of :class:`AdaptiveScheduler` (module docstring)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.5, gt=0, le=1)
    degraded_success: float = Field(default=0.75, ge=0, le=1)
    min_observations: int = Field(default=1, ge=1)
    min_success: float = Field(default=0.05, gt=0, le=1)
    probe_tasks: int = Field(default=1, ge=0)
    probe_min_tasks: int = Field(default=20, ge=1)


class AgentEstimate(BaseModel):
    """What the scheduler believes of an agent: mean duration (s) and attempt success (0–1)."""

    agent_id: str
    duration_s: float
    success: float
    observations: int = 0


class AdaptiveScheduler:
    """Assigns waves from exponentially weighted per-agent speed and success (module docstring)."""

    def __init__(
        self, config: SchedulerConfig | None = None, estimates: Mapping[str, AgentEstimate] | None = None
    ) -> None:
        self.config = config or SchedulerConfig()
        self.estimates: dict[str, AgentEstimate] = dict(estimates or {})

    @classmethod
    def from_history(
        cls, history: Sequence[WaveMetrics], config: SchedulerConfig | None = None
    ) -> AdaptiveScheduler:
        """A scheduler that observed ``history`` (oldest first), e.g. on resume from ``metrics.jsonl``."""
        s = cls(config)
        for m in history:
            s.observe(m)
        return s

    def observe(self, metrics: WaveMetrics) -> None:
        """Fold a wave's per-agent mean duration and attempt success into the estimates
        (agents that ran nothing keep theirs)."""
        a = self.config.alpha
        for aid, row in sorted(metrics.agents.items()):
            if row.executed == 0:
                continue
            d = row.mean_duration_ms / 1000
            s = row.attempt_success_rate
            e = self.estimates.get(aid)
            if e is None:
                self.estimates[aid] = AgentEstimate(agent_id=aid, duration_s=d, success=s, observations=1)
            else:
                e.duration_s = a * d + (1 - a) * e.duration_s
                e.success = a * s + (1 - a) * e.success
                e.observations += 1

    def estimate(self, agent_id: str) -> AgentEstimate:
        """The agent's estimate, or the mean of the observed agents' (1 s, 1.0 when none)."""
        e = self.estimates.get(agent_id)
        if e is not None:
            return e
        seen = list(self.estimates.values())
        if not seen:
            return AgentEstimate(agent_id=agent_id, duration_s=1.0, success=1.0)
        return AgentEstimate(
            agent_id=agent_id,
            duration_s=sum(x.duration_s for x in seen) / len(seen),
            success=sum(x.success for x in seen) / len(seen),
        )

    def degraded(self) -> set[str]:
        """Agents whose estimated attempt success is below ``degraded_success``."""
        c = self.config
        return {
            aid
            for aid, e in self.estimates.items()
            if e.observations >= c.min_observations and e.success < c.degraded_success
        }

    def assign(
        self,
        tasks: Sequence[PlannedTask],
        agents: Sequence[AgentSpec],
        healthy: set[str] | frozenset[str],
        *,
        goal: OptimizationGoal | None = None,
    ) -> tuple[list[PlannedTask], list[ScheduleAdjustment]]:
        """Assign one wave's ``tasks`` over ``agents`` (their order breaks ties; their
        concurrency is the one in force) given the ``healthy`` agent ids and the ``goal``.

        Returns the tasks in the input order, with ``agent`` set (``dataclasses.replace``),
        and one :class:`ScheduleAdjustment` per task whose agent changed, in input order.
        """
        degraded = self.degraded()
        est = {a.id: self.estimate(a.id) for a in agents}
        index = {a.id: i for i, a in enumerate(agents)}
        load = dict.fromkeys(index, 0.0)
        floor = self.config.min_success

        def exponent(pt: PlannedTask) -> float:
            beta = GOAL_SUCCESS_EXPONENT[goal]
            if goal is OptimizationGoal.MAXIMIZE_CONFIDENCE:
                beta += CONFIDENCE_EXPONENT * (1.0 - pt.task.confidence)
            return beta

        def cost(pt: PlannedTask, a: AgentSpec) -> float:
            e = est[a.id]
            u = pt.expected_s if pt.expected_s is not None and pt.expected_s > 0 else 1.0
            return u * e.duration_s / (a.concurrency * max(floor, e.success) ** exponent(pt))

        def eligible(pt: PlannedTask) -> list[AgentSpec]:
            offering = [a for a in agents if a.offers(pt.task.tool)]
            good = [a for a in offering if a.id in healthy and a.id not in degraded]
            return good or [a for a in offering if a.id in healthy] or offering

        def why_not(aid: str) -> str | None:
            if aid not in index:
                return f"{aid} is not among the agents in service"
            if aid not in healthy:
                return f"{aid} is unhealthy (no live worker)"
            if aid in degraded:
                limit = self.config.degraded_success
                return f"{aid} is degraded (attempt success {est[aid].success:.2f} < {limit:.2f})"
            return None

        chosen: dict[int, str] = {}
        reasons: dict[int, str] = {}
        free: list[int] = []
        for k, pt in enumerate(tasks):
            if pt.pinned:
                problem = why_not(pt.agent)
                if problem is None:
                    chosen[k] = pt.agent
                    load[pt.agent] += cost(pt, agents[index[pt.agent]])
                    continue
                options = [a for a in eligible(pt) if a.id != pt.agent and why_not(a.id) is None]
                if not options:
                    chosen[k] = pt.agent  # nowhere better to go: keep the pin
                    if pt.agent in load:
                        load[pt.agent] += cost(pt, agents[index[pt.agent]])
                    continue
                reasons[k] = f"pinned, but {problem}"
            free.append(k)

        order = sorted(free, key=lambda k: (-_units(tasks[k]), tasks[k].line, k))
        for k in order:
            pt = tasks[k]
            options = eligible(pt)
            if pt.pinned:
                options = [a for a in options if a.id != pt.agent] or options
            if not options:
                chosen[k] = pt.agent
                continue
            best = min(options, key=lambda a: (load[a.id] + cost(pt, a), index[a.id]))
            chosen[k] = best.id
            load[best.id] += cost(pt, best)
            if k not in reasons and best.id != pt.agent:
                reasons[k] = self._why(pt.agent, best.id, est, why_not(pt.agent) if pt.agent else None)
        self._probe(tasks, agents, healthy, degraded, order, chosen, reasons, est)

        out: list[PlannedTask] = []
        adjustments: list[ScheduleAdjustment] = []
        for k, pt in enumerate(tasks):
            new = chosen[k]
            out.append(dataclasses.replace(pt, agent=new))
            if new != pt.agent:
                adjustments.append(
                    ScheduleAdjustment(
                        task_id=pt.task_id,
                        wave=pt.wave,
                        from_agent=pt.agent,
                        to_agent=new,
                        pinned=pt.pinned,
                        reason=reasons.get(k, "adaptive assignment"),
                    )
                )
        return out, adjustments

    def _why(self, old: str, new: str, est: Mapping[str, AgentEstimate], problem: str | None) -> str:
        e = est[new]
        fact = f"{new}: {e.duration_s:.3g} s/task, attempt success {e.success:.2f}"
        if problem:
            return f"{problem}; {fact}"
        if old in est:
            o = est[old]
            return (
                f"{fact} finishes it sooner than {old} ({o.duration_s:.3g} s/task, success {o.success:.2f})"
            )
        return fact

    def _probe(
        self,
        tasks: Sequence[PlannedTask],
        agents: Sequence[AgentSpec],
        healthy: set[str] | frozenset[str],
        degraded: set[str],
        order: list[int],
        chosen: dict[int, str],
        reasons: dict[int, str],
        est: Mapping[str, AgentEstimate],
    ) -> None:
        """Give each healthy degraded agent ``probe_tasks`` of the shortest unpinned tasks it offers."""
        c = self.config
        if c.probe_tasks == 0:
            return
        taken: set[int] = set()
        for a in agents:
            if a.id not in degraded or a.id not in healthy:
                continue
            candidates = [
                k for k in order if not tasks[k].pinned and a.offers(tasks[k].task.tool) and k not in taken
            ]
            if len(candidates) < c.probe_min_tasks:
                continue
            for k in list(reversed(candidates))[: c.probe_tasks]:
                taken.add(k)
                chosen[k] = a.id
                reasons[k] = (
                    f"probe: {a.id} is degraded (attempt success {est[a.id].success:.2f}); "
                    "one task tests whether it recovered"
                )


def _units(pt: PlannedTask) -> float:
    return pt.expected_s if pt.expected_s is not None and pt.expected_s > 0 else 1.0


def optimizer_markdown(
    decisions: Sequence[OptimizerDecision],
    changes: Sequence[ParameterChange],
    adjustments: Sequence[ScheduleAdjustment],
    *,
    max_rows: int = 30,
) -> str:
    """A Markdown section "What the optimizer changed and why" for ``report.md``."""
    lines = ["## What the optimizer changed and why", ""]
    if not decisions and not changes and not adjustments:
        return "\n".join([*lines, "The optimizer made no change (static plan).", ""])
    if decisions:
        lines += ["| wave | goal | why |", "|---|---|---|"]
        lines += [
            f"| {d.wave if d.wave is not None else '–'} | {d.goal.value} | {d.reason} |" for d in decisions
        ]
        lines.append("")
    if changes:
        lines += ["| wave | agent | parameter | old → new | why |", "|---|---|---|---|---|"]
        for ch in changes[:max_rows]:
            w = ch.wave if ch.wave is not None else "–"
            lines.append(f"| {w} | {ch.agent_id} | {ch.parameter} | {ch.old} → {ch.new} | {ch.reason} |")
        if len(changes) > max_rows:
            lines.append(f"\n… and {len(changes) - max_rows} more in `{TUNED_PARAMETERS_FILE}`.")
        lines.append("")
    if adjustments:
        moved: dict[tuple[int, str | None, str], int] = {}
        for adj in adjustments:
            key = (adj.wave, adj.from_agent, adj.to_agent)
            moved[key] = moved.get(key, 0) + 1
        lines += ["| wave | from | to | tasks |", "|---|---|---|---|"]
        lines += [f"| {w} | {a} | {b} | {n} |" for (w, a, b), n in sorted(moved.items())]
        lines += ["", f"Every moved task and its reason: `wave_<n>/agent_<id>/{ADJUSTED_SCHEDULE_FILE}`.", ""]
    return "\n".join(lines)
