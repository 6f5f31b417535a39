"""The records of a validated plan: :class:`PlannedTask` and :class:`CampaignPlan`.

:func:`buddy.plan.build.build_plan` makes them; the coordinator, the optimizer and the
outputs read them. :func:`assign_wave` assigns one wave again (the optimizer's failover) by
the rules of :mod:`buddy.plan.assignment`; :func:`summary_table` is ``buddy validate``'s
table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buddy.models import AgentSpec, PlanTask, ResourceClaim, Strategy
from buddy.plan.assignment import choose

#: The ``path`` (and the error source) of a plan given in memory rather than as a file.
MEMORY_SOURCE = "<tasks>"


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A validated task with its place in the campaign.

    ``line`` is the task's line in the plan file (1-based), or its index in the iterable of
    a plan given in memory (1-based). ``wave`` and ``agent`` are the effective ones
    (schedule over plan line over computed); ``agent`` is ``""`` only before assignment.
    ``pinned`` is true when the schedule or the plan line named the agent. ``claims`` are
    the plan line's ``resources`` plus the tool's own claims for the arguments, one per
    resource name (``write`` wins over ``read``). ``expected_s`` is the tool's expected
    duration in seconds, None when the tool does not say.
    """

    task: PlanTask
    line: int
    wave: int
    agent: str
    pinned: bool
    claims: list[ResourceClaim]
    expected_s: float | None = None

    @property
    def task_id(self) -> str:
        return self.task.task_id


@dataclass
class CampaignPlan:
    """A validated plan, laid out in waves and assigned to agents (built by
    :func:`buddy.plan.build.build_plan`).

    ``path`` is the plan file, or ``Path("<tasks>")`` (:data:`MEMORY_SOURCE`) for a plan
    given in memory. ``digest`` is the sha256 hex of the plan file's bytes (for a plan in
    memory: of its canonical JSON lines, :func:`buddy.plan.load.canonical_lines`) followed
    by the schedule file's bytes (when there is one). ``tasks`` maps task id to task in plan
    order; ``waves`` maps wave number (ascending) to the wave's tasks in dispatch order; both
    hold the same :class:`PlannedTask` objects. ``agent_weights`` are the weights of the
    ``confidence`` strategy (absent agents weigh 1.0).
    """

    path: Path
    digest: str
    tasks: dict[str, PlannedTask]
    waves: dict[int, list[PlannedTask]]
    agents: list[AgentSpec]
    strategy: Strategy
    schedule_path: Path | None = None
    agent_weights: dict[str, float] = field(default_factory=dict)
    #: dependency violations resolved by ``serialize``: (task, explicit wave, dependency's wave, dependency)
    unpinned: list[tuple[str, int, int, str]] = field(default_factory=list)
    #: tasks a conflict resolution skips (``priority``): task id → reason
    skip: dict[str, str] = field(default_factory=dict)
    #: duplicates that take another task's outcome (``deduplicate``): task id → the task that runs
    reuse: dict[str, str] = field(default_factory=dict)
    #: the :class:`buddy.plan.conflicts.ConflictsReport` of :func:`buddy.plan.conflicts.resolve`, once run
    conflicts: Any = None

    def wave_numbers(self) -> list[int]:
        """The wave numbers, ascending (there may be gaps when waves are explicit)."""
        return list(self.waves)

    def dependents(self) -> dict[str, list[str]]:
        """Every task id → the ids of the tasks that depend on it directly, in plan order."""
        out: dict[str, list[str]] = {tid: [] for tid in self.tasks}
        for tid, pt in self.tasks.items():
            for dep in dict.fromkeys(pt.task.depends_on):
                out[dep].append(tid)
        return out

    def reassign_wave(
        self,
        wave: int,
        *,
        agents: Sequence[AgentSpec] | None = None,
        strategy: Strategy | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[PlannedTask]:
        """Assign wave ``wave`` again (for the optimizer) and store the result in the plan.

        ``agents`` / ``strategy`` / ``weights`` default to the plan's. Pinned tasks keep
        their agent. Returns the wave's new dispatch order; raises
        :class:`~buddy.errors.PlanError` as :func:`assign_wave` does (an agent missing for a
        task).
        """
        new = assign_wave(
            self.waves[wave],
            self.agents if agents is None else agents,
            self.strategy if strategy is None else strategy,
            weights=self.agent_weights if weights is None else weights,
            source=str(self.path),
        )
        self.waves[wave] = new
        for pt in new:
            self.tasks[pt.task_id] = pt
        return new


def assign_wave(
    tasks: Sequence[PlannedTask],
    agents: Sequence[AgentSpec],
    strategy: Strategy,
    *,
    weights: Mapping[str, float] | None = None,
    source: str = "plan",
) -> list[PlannedTask]:
    """Assign the tasks of one wave to ``agents`` by ``strategy`` (the rules:
    :mod:`buddy.plan.assignment`).

    ``tasks`` are the wave's tasks, in any order (plan order is taken from their ``line``);
    a pinned one keeps its ``agent``, the ``agent`` of the others is ignored. ``weights``
    are the ``confidence`` strategy's agent weights (absent: 1.0). Loads start at zero:
    each wave is balanced on its own.
    Returns new :class:`PlannedTask` objects with ``agent`` set, in dispatch order.

    Raises :class:`~buddy.errors.PlanError` (``source:LINE: message``, ``source`` naming the
    plan) when a pinned task's agent is not in ``agents`` or no agent offers an unpinned
    task's tool; :func:`buddy.plan.build.build_plan` checks both first, so it is an
    optimizer's failover that can meet them.
    """
    tasks = sorted(tasks, key=lambda pt: pt.line)
    order, chosen = choose(
        [pt.task for pt in tasks],
        [pt.agent if pt.pinned else None for pt in tasks],
        [pt.expected_s for pt in tasks],
        [pt.line for pt in tasks],
        agents,
        strategy,
        weights,
        source,
    )
    out = []
    for k in order:
        pt = tasks[k]
        agent = agents[chosen[k]].id
        out.append(PlannedTask(pt.task, pt.line, pt.wave, agent, pt.pinned, pt.claims, pt.expected_s))
    return out


def summary_table(plan: CampaignPlan) -> list[list[str]]:
    """Tasks per wave and agent, for ``buddy validate``.

    The first row is the header ``["wave", <agent ids…>, "total"]``; then one row per wave
    (``[wave, tasks on each agent…, tasks in the wave]``); the last row is ``["total", …]``.
    """
    ids = [a.id for a in plan.agents]
    ids += sorted({pt.agent for pt in plan.tasks.values()} - set(ids))  # after a reassignment
    column = {aid: i for i, aid in enumerate(ids)}
    rows = [["wave", *ids, "total"]]
    totals = [0] * len(ids)
    for number, tasks in plan.waves.items():
        counts = [0] * len(ids)
        for pt in tasks:
            counts[column[pt.agent]] += 1
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        rows.append([str(number), *map(str, counts), str(len(tasks))])
    rows.append(["total", *map(str, totals), str(len(plan.tasks))])
    return rows
