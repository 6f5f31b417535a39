"""The fleet as the coordinator sees it: which agents have live workers, how many execution
slots each runs, waiting for them, and moving a wave's tasks off agents that have none
(failover).

Agent state comes from the workers' heartbeats in Redis (``buddy:agent:<id>``,
``buddy:agent:<id>:workers``; docs/architecture.md, "Redis keys"). An agent's capacity is
what its live workers report (:func:`live_capacity`); campaign.yaml's ``concurrency`` is the
fallback for a worker that reports no pool size.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping

from rich.console import Console

from buddy.coordinator.options import Clock
from buddy.errors import CampaignAborted
from buddy.models import ScheduleAdjustment, agent_queue
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.state.agents import AgentInfo
from buddy.state.store import Store


def no_worker_message(agents: list[str], waited_s: float) -> str:
    """The abort reason (and warning) when agents have no live worker."""
    queues = ", ".join(agent_queue(a) for a in agents)
    starts = "; ".join(f"buddy worker --agent {a}" for a in agents)
    return f"no live worker consumes {queues} (waited {waited_s:.0f} s); start one: {starts}"


def live_capacity(declared: Mapping[str, int], infos: Mapping[str, AgentInfo]) -> dict[str, int]:
    """Execution slots per agent of ``declared`` (agent id → campaign.yaml's ``concurrency``),
    each ≥ 1: Σ over its live workers of the pool size each reported in its last heartbeat
    (:attr:`AgentInfo.pools`), a live worker that reports none counting as the declared
    concurrency; an agent with no live worker (or not in ``infos``) counts as declared."""
    out: dict[str, int] = {}
    for aid, conc in declared.items():
        info = infos.get(aid)
        if info is None or not info.live_workers:
            out[aid] = conc
            continue
        silent = sum(1 for w in info.live_workers if w not in info.pools)
        out[aid] = max(1, sum(info.pools.values()) + silent * conc)
    return out


class FleetView:
    """Agents' state read from Redis, at most once per wave unless asked ``fresh``."""

    def __init__(self, plan: CampaignPlan, store: Store, clock: Clock, console: Console) -> None:
        self.plan = plan
        self.store = store
        self.clock = clock
        self.console = console
        self._cache: dict[str, AgentInfo] | None = None
        #: campaign.yaml's concurrency per agent: the fallback of :meth:`capacity` (the plan's
        #: agents take the live capacity before each wave)
        self.declared = {a.id: a.concurrency for a in plan.agents}

    def agents(self, fresh: bool = False) -> dict[str, AgentInfo]:
        """Every agent's state, read in one round trip (``fresh`` reads again)."""
        if fresh or self._cache is None:
            self._cache = self.store.agents_info([a.id for a in self.plan.agents])
        return self._cache

    def capacity(self, fresh: bool = False) -> dict[str, int]:
        """Execution slots per plan agent as its live workers report them (:func:`live_capacity`),
        from the same read as :meth:`agents` (``fresh`` reads again)."""
        caps = live_capacity(self.declared, self.agents(fresh))
        return {a.id: caps.get(a.id, a.concurrency) for a in self.plan.agents}

    def healthy(self, fresh: bool = False) -> set[str]:
        """Agents with a live worker whose workers do not report them degraded."""
        return {
            aid for aid, info in self.agents(fresh).items() if info.live_workers and info.status != "degraded"
        }

    def wait_for_workers(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` seconds for a live worker on every agent with work. Agents
        still without one are reported (their tasks fail over); with no live agent at all,
        raises :class:`CampaignAborted`."""
        agents = sorted({t.agent for t in self.plan.tasks.values()})
        deadline = self.clock.monotonic() + wait_s
        missing = [a for a in agents if not self.store.live_workers(a)]
        while missing and self.clock.monotonic() < deadline:
            self.clock.sleep(0.2)
            missing = [a for a in agents if not self.store.live_workers(a)]
        if not missing:
            return
        if not self.healthy(fresh=True):
            raise CampaignAborted(no_worker_message(missing, wait_s))
        self.console.print(
            f"[yellow]warning:[/] {no_worker_message(missing, wait_s)}; "
            "their tasks go to agents that have workers",
            highlight=False,
        )

    def failover(
        self, n: int, to_send: dict[str, list[PlannedTask]]
    ) -> tuple[dict[str, list[PlannedTask]], list[ScheduleAdjustment]]:
        """Move tasks off agents with no live worker (or degraded) to healthy agents that offer
        the tool, least loaded first (tasks per slot of :meth:`capacity`). Returns the new
        assignment and the moves (each a line of ``adjusted_schedule.jsonl``); updates the
        plan. Raises :class:`CampaignAborted` when no healthy agent offers a task's tool."""
        healthy = self.healthy()
        if all(a in healthy for a in to_send):
            return to_send, []
        specs = {a.id: a for a in self.plan.agents}
        slots = self.capacity()
        load = {a: len(to_send.get(a, [])) / slots[a] for a in healthy}
        out: dict[str, list[PlannedTask]] = defaultdict(list)
        moves: list[ScheduleAdjustment] = []
        for agent, pts in sorted(to_send.items()):
            if agent in healthy:
                out[agent].extend(pts)
                continue
            known = self.agents().get(agent)
            why = "marked degraded" if known is not None and known.live_workers else "no live worker"
            for pt in pts:
                candidates = sorted(
                    (a for a in healthy if specs[a].offers(pt.task.tool)), key=lambda a: (load[a], a)
                )
                if not candidates:
                    raise CampaignAborted(
                        f"wave {n}: agent {agent} has {why} and no healthy agent offers {pt.task.tool} "
                        f"(task {pt.task.task_id})"
                    )
                to = candidates[0]
                load[to] += 1 / slots[to]
                moved = dataclasses.replace(pt, agent=to)
                self.plan.tasks[pt.task.task_id] = moved
                out[to].append(moved)
                moves.append(
                    ScheduleAdjustment(
                        task_id=pt.task.task_id,
                        wave=n,
                        from_agent=agent,
                        to_agent=to,
                        reason=f"agent {agent} has {why}",
                    )
                )
        self.plan.waves[n] = [self.plan.tasks[pt.task.task_id] for pt in self.plan.waves[n]]
        return out, moves
