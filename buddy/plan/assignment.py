"""Assignment: which agent runs each task of a wave (:func:`choose`, used by
:func:`buddy.plan.build.build_plan` and :func:`buddy.plan.model.assign_wave`).

Pinned tasks keep their agent. An unpinned task goes only to an *eligible* agent, one
that offers its tool (:meth:`AgentSpec.offers`). Agent order (the ``agents`` list)
breaks every tie. A task's *load* on an agent is divided by the agent's ``concurrency``.

``round_robin``
    Unpinned tasks in plan order are dealt to the agents in turn: a cursor starts at the
    first agent in each wave; a task goes to the first eligible agent at or after the
    cursor (wrapping around) and the cursor moves just past that agent. Pinned tasks do
    not move the cursor. Dispatch order: plan order.
``load_balanced``
    Tasks by expected duration, longest first (the tool's ``expected_duration(args)`` in
    seconds; unknown counts as 1, so a plan of unknown durations is balanced by task
    count), stable by plan order. Pinned tasks are put on their agent's load first; each
    unpinned task then goes to the eligible agent with the least
    ``assigned expected seconds / concurrency``. Dispatch order: the same
    longest-first order (pinned tasks included), so long tasks start first.
``priority``
    Tasks by descending ``priority``, stable by plan order. Pinned tasks count in the
    load first; each unpinned task goes to the eligible agent with the least
    ``tasks / concurrency``. Dispatch order: descending priority, so each agent receives
    its tasks highest priority first.
``confidence``
    Each agent has a weight (``weights[agent_id]``, default 1.0: its reliability, set by
    the optimizer). Pinned tasks count in the load first. Unpinned tasks by ascending
    ``confidence`` (least confident first, stable by plan order): let ``m`` be the
    least ``tasks / concurrency`` among the eligible agents; the candidates are the
    eligible agents holding at most one task more than that level
    (``(tasks - 1) / concurrency <= m``); the task goes to the candidate with the
    highest weight. Uncertain tasks land on reliable agents while no agent runs more
    than about two tasks ahead of the least loaded. Dispatch order: plan order.

``load_balanced`` and ``priority`` pick the least loaded agent from a heap per group of
eligible agents, O(log agents) per task; ``round_robin`` and ``confidence`` scan agents
from a start point and usually stop early (worst case O(agents) per task).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from buddy.errors import FileErrors, PlanError
from buddy.models import AgentSpec, PlanTask, Strategy


class _LeastLoaded:
    """The least loaded agent of a group, by ``load[i] / concurrency[i]`` then agent order.

    One min-heap per group of eligible agents, built on first use; a load change pushes a
    fresh entry into each heap holding the agent and stale entries are dropped when seen.
    """

    def __init__(self, agents: Sequence[AgentSpec]) -> None:
        self.conc = [a.concurrency for a in agents]
        self.load = [0.0] * len(agents)
        self.version = [0] * len(agents)
        self.heaps: dict[tuple[int, ...], list[tuple[float, int, int]]] = {}
        self.member_of: list[list[list[tuple[float, int, int]]]] = [[] for _ in agents]

    def key(self, i: int) -> float:
        return self.load[i] / self.conc[i]

    def add(self, i: int, amount: float) -> None:
        self.load[i] += amount
        self.version[i] += 1
        entry = (self.key(i), i, self.version[i])
        for heap in self.member_of[i]:
            heapq.heappush(heap, entry)

    def least(self, group: tuple[int, ...]) -> int:
        heap = self.heaps.get(group)
        if heap is None:
            heap = [(self.key(i), i, self.version[i]) for i in group]
            heapq.heapify(heap)
            self.heaps[group] = heap
            for i in group:
                self.member_of[i].append(heap)
        while True:
            _, i, version = heap[0]
            if version == self.version[i]:
                return i
            heapq.heappop(heap)


def choose(
    tasks: Sequence[PlanTask],
    pins: Sequence[str | None],
    expected: Sequence[float | None],
    lines: Sequence[int],
    agents: Sequence[AgentSpec],
    strategy: Strategy,
    weights: Mapping[str, float] | None,
    source: str,
) -> tuple[list[int], list[int]]:
    """Assign one wave's tasks, given as parallel lists (task, pinned agent or None, expected
    seconds, line), to ``agents`` by ``strategy`` (module docstring): returns the dispatch
    order (indexes into ``tasks``) and the chosen agent's index for each task.

    Raises :class:`PlanError` (``source:LINE: message``) when a pinned agent is not among
    ``agents`` or no agent offers an unpinned task's tool.
    """
    position = {a.id: i for i, a in enumerate(agents)}
    ids = ", ".join(position) or "(none)"
    errors = FileErrors(source)
    groups: dict[str, tuple[int, ...]] = {}  # tool -> eligible agents, in agent order
    chosen: list[int] = [-1] * len(tasks)
    free: list[int] = []  # indexes of unpinned tasks, plan order
    free_tools: list[str] = []  # their tools (read once: a pass over 100k tasks is memory-bound)
    for k, t in enumerate(tasks):
        pin = pins[k]
        if pin is not None:
            i = position.get(pin, -1)
            if i < 0:
                errors.add(
                    lines[k],
                    f"task {t.task_id!r} is pinned to agent {pin!r}, which is not among the agents: {ids}",
                )
            chosen[k] = i
            continue
        group = groups.get(t.tool)
        if group is None:
            group = groups[t.tool] = tuple(i for i, a in enumerate(agents) if a.offers(t.tool))
        if not group:
            errors.add(lines[k], f"task {t.task_id!r}: no agent offers tool {t.tool!r}; agents: {ids}")
        free.append(k)
        free_tools.append(t.tool)
    if errors:
        raise PlanError(errors.sorted())

    order: list[int]  # dispatch order
    if strategy == Strategy.ROUND_ROBIN:
        cursor, m = 0, len(agents)
        # None: every agent offers the tool, so the cursor's agent takes the task
        allowed_by_tool = {tool: None if len(g) == m else set(g) for tool, g in groups.items()}
        for k, tool in zip(free, free_tools, strict=True):
            allowed = allowed_by_tool[tool]
            if allowed is None:
                chosen[k] = cursor
                cursor = cursor + 1 if cursor + 1 < m else 0
                continue
            for step in range(m):
                i = (cursor + step) % m
                if i in allowed:
                    chosen[k], cursor = i, (i + 1) % m
                    break
        order = list(range(len(tasks)))
    elif strategy in (Strategy.LOAD_BALANCED, Strategy.PRIORITY):
        if strategy == Strategy.LOAD_BALANCED:
            units = [1.0 if e is None else max(e, 0.0) for e in expected]
            order = sorted(range(len(tasks)), key=lambda k: -units[k])
        else:
            units = [1.0] * len(tasks)
            order = sorted(range(len(tasks)), key=lambda k: -tasks[k].priority)
        loads = _LeastLoaded(agents)
        for k, pin in enumerate(pins):
            if pin is not None:
                loads.add(chosen[k], units[k])
        for k in order:
            if chosen[k] < 0:
                i = loads.least(groups[tasks[k].tool])
                chosen[k] = i
                loads.add(i, units[k])
    elif strategy == Strategy.CONFIDENCE:
        w = weights or {}
        rank = sorted(range(len(agents)), key=lambda i: -w.get(agents[i].id, 1.0))
        by_weight = {}
        for tool, g in groups.items():
            members = set(g)
            by_weight[tool] = [i for i in rank if i in members]
        loads = _LeastLoaded(agents)
        for k, pin in enumerate(pins):
            if pin is not None:
                loads.add(chosen[k], 1.0)
        for k in sorted(free, key=lambda k: tasks[k].confidence):
            tool = tasks[k].tool
            least = loads.key(loads.least(groups[tool]))
            for i in by_weight[tool]:
                if (loads.load[i] - 1) / loads.conc[i] <= least:
                    chosen[k] = i
                    loads.add(i, 1.0)
                    break
        order = list(range(len(tasks)))
    else:  # pragma: no cover - Strategy is closed
        raise ValueError(f"unknown strategy {strategy!r}")
    return order, chosen
