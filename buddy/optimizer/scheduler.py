"""The adaptive scheduler: assigns the next wave from observed per-agent speed and success.

Pure and deterministic. :meth:`AdaptiveScheduler.observe` folds a wave's per-agent mean
duration and attempt success into exponentially weighted estimates;
:meth:`AdaptiveScheduler.assign` assigns the next wave from them, one
:class:`~buddy.models.ScheduleAdjustment` per moved task (``adjusted_schedule.jsonl``).
The goal of :mod:`buddy.optimizer.meta` sets the *success exponent* β of the cost:
``maximize_throughput`` and ``balance_load`` 1, ``maximize_success`` and ``minimize_retries``
3, ``maximize_confidence`` 2 plus ``4 · (1 − task confidence)`` per task, so the tasks the
plan is least sure of go to the agents that fail least; no goal: 2 (docs/architecture.md,
"Learning between waves").

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

from pydantic import BaseModel, ConfigDict, Field

from buddy.analysis.metrics import WaveMetrics
from buddy.models import AgentSpec, ScheduleAdjustment
from buddy.optimizer.meta import CONFIDENCE_EXPONENT, GOAL_SUCCESS_EXPONENT, OptimizationGoal
from buddy.plan.model import PlannedTask


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
