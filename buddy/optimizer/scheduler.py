"""The adaptive scheduler: assigns a wave by each agent's observed service rate × live capacity.

Pure and deterministic. :meth:`AdaptiveScheduler.observe` folds a wave's per-agent numbers
(:class:`~buddy.analysis.metrics.AgentWaveMetrics`) into exponentially weighted estimates;
:meth:`AdaptiveScheduler.assign` assigns the next wave from them, one
:class:`~buddy.models.ScheduleAdjustment` per moved task (``adjusted_schedule.jsonl``);
:meth:`AdaptiveScheduler.rebalance` does the same for a wave nothing was observed before (the
first), only when that shortens it. The goal of :mod:`buddy.optimizer.meta` sets the *success
exponent* β of the cost: ``maximize_throughput`` and ``balance_load`` 1, ``maximize_success``
and ``minimize_retries`` 3, ``maximize_confidence`` 2 plus ``4 · (1 − task confidence)`` per
task, so the tasks the plan is least sure of go to the agents that fail least; no goal: 2
(docs/architecture.md, "Learning between waves").

Estimates
    Per agent, exponentially weighted with ``alpha`` (0.5: the newest wave counts half, the
    one before a quarter, …; the first observation is taken as is):

    - ``duration_s``: mean execution time of a task (seconds), and ``tools``: the same per tool;
    - ``wait_s``: seconds per task a slot spends outside the task's execution (fetching the
      message, claims, writing the outcome, contention between the pool's threads): the
      gap between two tasks on a slot, from the agent's busy window ``span_s``
      (:class:`~buddy.analysis.metrics.AgentWaveMetrics`): ``(span_s − k · duration) / (k −
      1)`` where ``k = ceil(executed / concurrency)`` tasks ran back to back on a slot, at
      least 0 (not observed when ``k`` is 1);
    - ``speed``: its execution time over what the fleet took for the same tools in the same
      wave (1: as fast as the fleet's mean), for tools it has not run yet;
    - ``success``: attempt success rate (share of attempts that did not fail, so transient
      failures repaired by a retry count).

    Per tool, the fleet's mean execution time (``tool_s``, weighted by tasks, same ``alpha``).
    An agent not yet observed gets the mean of the observed agents (1 s, no wait, speed and
    success 1 when none is).

    The *service time* of a task of tool ``k`` on agent ``a`` is ``x_ak + wait_a`` slot-seconds;
    ``1 / (x_ak + wait_a)`` is the agent's *service rate* (tasks per second per slot). ``x_ak``
    is the agent's own mean for the tool when it ran it, else the fleet's × the agent's
    speed, else the wave's mean ``expected_s`` for the tool × speed, else the agent's mean
    duration; times ``r_t``, the task's ``expected_s`` over the mean of its tool's in the wave
    (1 when the tool does not say).

Assignment
    An agent is *degraded* when its ``success < degraded_success`` (0.75) after at least
    ``min_observations`` (1) waves. Eligible agents for a task: healthy (in ``healthy``), not
    degraded, offering the task's tool; if none, healthy ones offering it; if none, every agent
    offering it.

    Each agent has ``c_a`` slots, its live capacity (the ``concurrency`` of the
    :class:`~buddy.models.AgentSpec` given: the execution slots its live workers report,
    :func:`buddy.coordinator.fleet_view.live_capacity`). Cost of task ``t`` on one of
    them (seconds): ``(x_at · r_t + wait_a) / s_a^β``, the service time times the expected
    attempts per success (``s_a`` the agent's success floored at 0.05; β > 1 weighs a failure
    more than the time it costs). Pinned tasks stay on their agent unless it is unhealthy or
    degraded and a healthy, non-degraded agent offers the tool (otherwise the pin stands);
    moved pins and unpinned tasks go by greedy longest-processing-time first over the fleet's
    slots: in order of their reference size (fleet mean time of the tool × ``r_t``)
    descending (plan line breaking ties), each task goes to the eligible agent whose least
    loaded slot, plus the task's cost, finishes first (agent order breaking ties): list
    scheduling, the classic greedy approximation of the least expected makespan. So each
    agent gets work in proportion to its service rate × capacity, in whole rounds of its
    slots (the dispatcher gives each slot one message of equal tasks). A healthy degraded
    agent still receives ``probe_tasks`` (1) of the shortest unpinned tasks it offers when the
    wave has at least ``probe_min_tasks`` (20) such tasks, so that it can show it recovered.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field

from buddy.analysis.metrics import WaveMetrics
from buddy.models import AgentSpec, ScheduleAdjustment
from buddy.optimizer.meta import CONFIDENCE_EXPONENT, GOAL_SUCCESS_EXPONENT, OptimizationGoal
from buddy.plan.model import PlannedTask


class SchedulerConfig(BaseModel):
    """Settings of :class:`AdaptiveScheduler` (module docstring); ``rebalance_gain``: the share
    of its expected makespan a wave with no observation behind it must save to be re-assigned
    (:meth:`AdaptiveScheduler.rebalance`)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(default=0.5, gt=0, le=1)
    degraded_success: float = Field(default=0.75, ge=0, le=1)
    min_observations: int = Field(default=1, ge=1)
    min_success: float = Field(default=0.05, gt=0, le=1)
    probe_tasks: int = Field(default=1, ge=0)
    probe_min_tasks: int = Field(default=20, ge=1)
    rebalance_gain: float = Field(default=0.2, ge=0, lt=1)


class AgentEstimate(BaseModel):
    """What the scheduler believes of an agent (module docstring, "Estimates"): mean execution
    time (s), per tool too, wait per task (slot-seconds), speed relative to the fleet, and
    attempt success (0–1)."""

    agent_id: str
    duration_s: float
    success: float
    wait_s: float = 0.0
    speed: float = 1.0
    tools: dict[str, float] = Field(default_factory=dict)
    observations: int = 0

    def service_s(self, tool: str | None = None) -> float:
        """Slot-seconds one task takes here: its execution (of ``tool`` when this agent ran
        it, else the agent's mean) plus the wait."""
        d = self.tools.get(tool, self.duration_s) if tool is not None else self.duration_s
        return d + self.wait_s

    def rate_tps(self, tool: str | None = None) -> float:
        """The service rate: tasks per second per slot (1 / :meth:`service_s`; 0 when that is 0)."""
        s = self.service_s(tool)
        return 1.0 / s if s > 0 else 0.0


def _ewma(alpha: float, new: float, old: float | None) -> float:
    return new if old is None else alpha * new + (1 - alpha) * old


class AdaptiveScheduler:
    """Assigns waves by each agent's service rate × live capacity and success (module docstring)."""

    def __init__(
        self, config: SchedulerConfig | None = None, estimates: Mapping[str, AgentEstimate] | None = None
    ) -> None:
        self.config = config or SchedulerConfig()
        self.estimates: dict[str, AgentEstimate] = dict(estimates or {})
        #: tool → the fleet's mean execution time of one of its tasks (seconds, EWMA)
        self.tool_s: dict[str, float] = {}

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
        """Fold a wave's per-agent numbers into the estimates (agents that ran nothing keep theirs)."""
        a = self.config.alpha
        rows = [(aid, r) for aid, r in sorted(metrics.agents.items()) if r.executed > 0]
        totals: dict[str, list[float]] = {}
        for _, r in rows:
            for k, n in r.tool_executed.items():
                t = totals.setdefault(k, [0.0, 0.0])
                t[0] += n
                t[1] += n * r.tool_mean_ms.get(k, r.mean_duration_ms) / 1000
        wave_tool = {k: s / n for k, (n, s) in sorted(totals.items()) if n > 0}
        for k, s in wave_tool.items():
            self.tool_s[k] = _ewma(a, s, self.tool_s.get(k))
        for aid, r in rows:
            d = r.mean_duration_ms / 1000
            rounds = math.ceil(r.executed / max(1, r.concurrency))
            # the span holds ``rounds`` executions and the waits between them
            wait = max(0.0, (r.span_s - rounds * d) / (rounds - 1)) if rounds > 1 and r.span_s > 0 else None
            tools = {k: ms / 1000 for k, ms in sorted(r.tool_mean_ms.items())}
            fleet = sum(n * wave_tool.get(k, 0.0) for k, n in r.tool_executed.items())
            own = sum(n * tools.get(k, 0.0) for k, n in r.tool_executed.items())
            speed = own / fleet if fleet > 0 and own > 0 else 1.0
            e = self.estimates.get(aid)
            if e is None:
                e = self.estimates[aid] = AgentEstimate(agent_id=aid, duration_s=d, success=1.0)
                e.success, e.wait_s, e.speed = r.attempt_success_rate, wait or 0.0, speed
            else:
                e.duration_s = _ewma(a, d, e.duration_s)
                e.success = _ewma(a, r.attempt_success_rate, e.success)
                e.wait_s = e.wait_s if wait is None else _ewma(a, wait, e.wait_s)
                e.speed = _ewma(a, speed, e.speed)
            e.tools = {k: _ewma(a, v, e.tools.get(k)) for k, v in sorted((e.tools | tools).items())}
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
            wait_s=sum(x.wait_s for x in seen) / len(seen),
        )

    def degraded(self) -> set[str]:
        """Agents whose estimated attempt success is below ``degraded_success``."""
        c = self.config
        return {
            aid
            for aid, e in self.estimates.items()
            if e.observations >= c.min_observations and e.success < c.degraded_success
        }

    def makespan(
        self,
        tasks: Sequence[PlannedTask],
        agents: Sequence[AgentSpec],
        *,
        goal: OptimizationGoal | None = None,
    ) -> float:
        """The expected makespan (seconds, the cost model of the module docstring) of ``tasks``
        as they are assigned, over ``agents`` (tasks on other agents are left out)."""
        cost = _Costs(self, tasks, agents, goal)
        slots = _Slots(agents)
        for pt in sorted(tasks, key=lambda pt: (-cost.reference(pt), pt.line)):
            if pt.agent in cost.specs:
                slots.place(pt.agent, cost(pt, cost.specs[pt.agent]))
        return slots.makespan()

    def rebalance(
        self,
        tasks: Sequence[PlannedTask],
        agents: Sequence[AgentSpec],
        healthy: set[str] | frozenset[str],
        *,
        goal: OptimizationGoal | None = None,
    ) -> tuple[list[PlannedTask], list[ScheduleAdjustment]]:
        """:meth:`assign`, kept only when it cuts the wave's expected :meth:`makespan` by at
        least ``rebalance_gain`` (a share); else the tasks unchanged and no adjustment. For a
        wave with nothing observed before it (the first): a plan that already matches the
        fleet's capacity is left as written."""
        new, moves = self.assign(tasks, agents, healthy, goal=goal)
        if not moves:
            return list(tasks), []
        before = self.makespan(tasks, agents, goal=goal)
        after = self.makespan(new, agents, goal=goal)
        if after <= (1.0 - self.config.rebalance_gain) * before:
            return new, moves
        return list(tasks), []

    def assign(
        self,
        tasks: Sequence[PlannedTask],
        agents: Sequence[AgentSpec],
        healthy: set[str] | frozenset[str],
        *,
        goal: OptimizationGoal | None = None,
    ) -> tuple[list[PlannedTask], list[ScheduleAdjustment]]:
        """Assign one wave's ``tasks`` over ``agents`` (their order breaks ties; their
        ``concurrency`` is the capacity in force: live slots) given the ``healthy`` agent ids
        and the ``goal``.

        Returns the tasks in the input order, with ``agent`` set (``dataclasses.replace``),
        and one :class:`ScheduleAdjustment` per task whose agent changed, in input order.
        """
        degraded = self.degraded()
        cost = _Costs(self, tasks, agents, goal)
        est = cost.est
        index = {a.id: i for i, a in enumerate(agents)}
        slots = _Slots(agents)

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
                    slots.place(pt.agent, cost(pt, agents[index[pt.agent]]))
                    continue
                options = [a for a in eligible(pt) if a.id != pt.agent and why_not(a.id) is None]
                if not options:
                    chosen[k] = pt.agent  # nowhere better to go: keep the pin
                    if pt.agent in index:
                        slots.place(pt.agent, cost(pt, agents[index[pt.agent]]))
                    continue
                reasons[k] = f"pinned, but {problem}"
            free.append(k)

        order = sorted(free, key=lambda k: (-cost.reference(tasks[k]), tasks[k].line, k))
        for k in order:
            pt = tasks[k]
            options = eligible(pt)
            if pt.pinned:
                options = [a for a in options if a.id != pt.agent] or options
            if not options:
                chosen[k] = pt.agent
                continue
            best = min(options, key=lambda a: (slots.finish(a.id, cost(pt, a)), index[a.id]))
            chosen[k] = best.id
            slots.place(best.id, cost(pt, best))
            if k not in reasons and best.id != pt.agent:
                problem = why_not(pt.agent) if pt.agent else None
                reasons[k] = self._why(pt, best, cost, problem)
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

    def _why(self, pt: PlannedTask, new: AgentSpec, cost: _Costs, problem: str | None) -> str:
        fact = cost.describe(new, pt.task.tool)
        if problem:
            return f"{problem}; {fact}"
        old = cost.specs.get(pt.agent)
        if old is not None:
            return f"{fact} finishes it sooner than {cost.describe(old, pt.task.tool)}"
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


class _Slots:
    """The fleet's execution slots while a wave is laid out: per agent a min-heap of its
    ``concurrency`` slots' busy seconds."""

    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        self.heaps = {a.id: [0.0] * max(1, a.concurrency) for a in agents}

    def finish(self, agent: str, cost: float) -> float:
        """When a task of ``cost`` seconds would end on the agent's least loaded slot."""
        return self.heaps[agent][0] + cost

    def place(self, agent: str, cost: float) -> None:
        """Put a task of ``cost`` seconds on the agent's least loaded slot."""
        heap = self.heaps[agent]
        heapq.heapreplace(heap, heap[0] + cost)

    def makespan(self) -> float:
        """The busiest slot's seconds."""
        return max((max(h) for h in self.heaps.values()), default=0.0)


class _Costs:
    """The cost model of one wave (module docstring): per task and agent, seconds on one slot."""

    def __init__(
        self,
        s: AdaptiveScheduler,
        tasks: Sequence[PlannedTask],
        agents: Sequence[AgentSpec],
        goal: OptimizationGoal | None,
    ) -> None:
        self.scheduler = s
        self.goal = goal
        self.specs = {a.id: a for a in agents}
        self.est = {a.id: s.estimate(a.id) for a in agents}
        self.floor = s.config.min_success
        sums: dict[str, list[float]] = {}
        for pt in tasks:
            if pt.expected_s is not None and pt.expected_s > 0:
                t = sums.setdefault(pt.task.tool, [0.0, 0.0])
                t[0] += 1
                t[1] += pt.expected_s
        #: tool → mean ``expected_s`` of its tasks in this wave
        self.expected = {k: total / n for k, (n, total) in sorted(sums.items())}

    def relative(self, pt: PlannedTask) -> float:
        """``r_t``: the task's expected_s over its tool's mean in the wave (1 when unknown)."""
        mean = self.expected.get(pt.task.tool)
        return pt.expected_s / mean if mean and pt.expected_s is not None and pt.expected_s > 0 else 1.0

    def execution_s(self, tool: str, e: AgentEstimate) -> float:
        """``x_ak``: one task of ``tool`` on the agent of ``e``, seconds of execution."""
        if tool in e.tools:
            return e.tools[tool]
        fleet = self.scheduler.tool_s.get(tool)
        if fleet is not None:
            return fleet * e.speed
        if tool in self.expected:
            return self.expected[tool] * e.speed
        return e.duration_s

    def reference(self, pt: PlannedTask) -> float:
        """The task's size for the processing order: the fleet's time for its tool × ``r_t``."""
        tool = pt.task.tool
        base = self.scheduler.tool_s.get(tool) or self.expected.get(tool) or 1.0
        return base * self.relative(pt)

    def __call__(self, pt: PlannedTask, a: AgentSpec) -> float:
        e = self.est[a.id]
        beta = GOAL_SUCCESS_EXPONENT[self.goal]
        if self.goal is OptimizationGoal.MAXIMIZE_CONFIDENCE:
            beta += CONFIDENCE_EXPONENT * (1.0 - pt.task.confidence)
        service = self.execution_s(pt.task.tool, e) * self.relative(pt) + e.wait_s
        return service / max(self.floor, e.success) ** beta

    def describe(self, a: AgentSpec, tool: str) -> str:
        """``a1: 8 slots × 47.2 tasks/s per slot (sleep), attempt success 1.00``."""
        e = self.est[a.id]
        service = self.execution_s(tool, e) + e.wait_s
        rate = f"{1.0 / service:.3g}" if service > 0 else "∞"
        slots = f"{a.concurrency} slot{'' if a.concurrency == 1 else 's'}"
        return f"{a.id}: {slots} × {rate} tasks/s per slot ({tool}), attempt success {e.success:.2f}"
