"""Build a campaign plan: validate it whole, lay it out in waves, assign its tasks to agents.

:func:`build_plan` takes a plan file or the plan's lines in memory (dicts or pydantic models:
:mod:`buddy.plan.load`) and an optional *schedule* (JSONL of
:class:`~buddy.models.ScheduleEntry`) that pins tasks to an agent and/or a wave and overrides
the plan line's ``agent`` / ``wave``. Everything is checked before anything is dispatched
(docs/architecture.md, "Validate the whole plan before the first dispatch"), and every problem
found goes into one :class:`~buddy.errors.PlanError`.

Lines are read by :mod:`buddy.plan.load` (its docstring states the strict JSON rules), waves
laid out by :mod:`buddy.plan.layering` and each wave's tasks assigned to agents by
:mod:`buddy.plan.assignment` (each module's docstring states its rules). The result is a
:class:`~buddy.plan.model.CampaignPlan`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import cast

from buddy.config import TaskDefaults
from buddy.errors import FileErrors, PlanError
from buddy.models import AgentSpec, PlanTask, ResourceClaim, ScheduleEntry, Strategy
from buddy.plan.assignment import choose
from buddy.plan.jsonl import gc_paused
from buddy.plan.layering import layer_waves
from buddy.plan.load import PlanSource, parse_plan, parse_schedule, source_name
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.tools.registry import ToolRegistry


def build_plan(
    plan: PlanSource,
    registry: ToolRegistry,
    agents: list[AgentSpec],
    strategy: Strategy = Strategy.ROUND_ROBIN,
    *,
    schedule_path: Path | None = None,
    defaults: TaskDefaults | None = None,
    workdir: Path | None = None,
    agent_weights: dict[str, float] | None = None,
    unpin_violations: bool = False,
) -> CampaignPlan:
    """Load, validate, lay out in waves and assign a plan (the rules: :mod:`buddy.plan.layering`,
    :mod:`buddy.plan.assignment`).

    ``plan`` is the path of a JSONL plan file (a ``str`` or a path), or the plan's lines in
    memory: an iterable of dicts in the plan format (README, "Plan format") or of pydantic
    models with those fields (e.g. :class:`~buddy.models.PlanTask`), checked and defaulted
    exactly as file lines are (:mod:`buddy.plan.load`). The problems of a plan in memory name
    ``<tasks>`` as their source and the item's 1-based index as their line; its
    ``CampaignPlan.path`` is ``Path("<tasks>")`` and its digest covers its canonical JSON
    lines.

    ``unpin_violations`` (the ``serialize`` resolution of ``dependency_violation``
    conflicts): a task whose explicit wave is not after a dependency's loses the pin and
    is layered after its dependencies; each is listed in ``CampaignPlan.unpinned``.

    ``registry`` holds the tools; ``agents`` the campaign's agents (their order breaks
    ties); ``defaults`` fill fields a line leaves out; ``workdir`` (default: the current
    directory) resolves the paths of the tools' resource claims; ``agent_weights`` feed the
    ``confidence`` strategy.

    Raises :class:`~buddy.errors.PlanError` holding every problem of the plan and the
    schedule as ``(source, line, message)`` (printed ``FILE:LINE: message``, capped at
    :data:`~buddy.errors.MAX_ERRORS`): each line's JSON (strict: see :mod:`buddy.plan.load`),
    fields, tool and args; duplicate ids; unknown or self
    dependencies; cycles; explicit waves not after their dependencies; pins to missing agents
    or agents without the tool; tools no agent offers; schedule lines naming unknown tasks or
    a task twice; an empty or unreadable file, or one that is not a regular file.
    """
    with gc_paused():
        return _build(
            plan,
            registry,
            agents,
            strategy,
            None if schedule_path is None else Path(schedule_path),
            defaults,
            Path.cwd() if workdir is None else Path(workdir),
            dict(agent_weights or {}),
            unpin_violations,
        )


def _build(
    plan: PlanSource,
    registry: ToolRegistry,
    agents: list[AgentSpec],
    strategy: Strategy,
    schedule_path: Path | None,
    defaults: TaskDefaults | None,
    workdir: Path,
    weights: dict[str, float],
    unpin_violations: bool = False,
) -> CampaignPlan:
    source = source_name(plan)
    plan_errors = FileErrors(source)
    parsed = parse_plan(plan, registry, defaults, plan_errors, workdir)
    sched_errors = FileErrors(schedule_path if schedule_path is not None else "schedule")
    entries: list[tuple[int, ScheduleEntry]] = []
    sched_data = b""
    if schedule_path is not None:
        entries, sched_data = parse_schedule(schedule_path, sched_errors)
    lines = parsed.lines

    # pins: task id -> (agent or wave, the file and line that set it); the schedule wins
    agent_pin = parsed.agent_pin
    wave_pin = parsed.wave_pin
    for number, entry in entries:
        if entry.task_id not in lines:
            if entry.task_id not in parsed.broken:
                sched_errors.add(number, f"unknown task_id {entry.task_id!r} (not in {source})")
            continue
        if entry.agent is not None:
            agent_pin[entry.task_id] = (entry.agent, sched_errors, number)
        if entry.wave is not None:
            wave_pin[entry.task_id] = (entry.wave, sched_errors, number)

    _check_agents(parsed.tasks, lines, agents, agent_pin, set(registry.names()), plan_errors)
    found: list[tuple[str, int, int, str]] | None = [] if unpin_violations else None
    waves = layer_waves(parsed.tasks, wave_pin, parsed.broken, plan_errors, lines, found)
    if found:  # ``serialize``: such a task loses its pin and goes after its dependencies
        for tid, *_ in found:
            wave_pin.pop(tid, None)
        waves = layer_waves(parsed.tasks, wave_pin, parsed.broken, FileErrors(source), lines)
    if plan_errors or sched_errors:
        raise PlanError(plan_errors.sorted() + sched_errors.sorted())

    # per wave, parallel lists in plan order: plan index, pinned agent, expected seconds
    by_wave: dict[int, tuple[list[int], list[str | None], list[float | None]]] = {}
    claims_of = cast("list[list[ResourceClaim]]", parsed.claims)  # all set: there were no errors
    expected_of = parsed.expected
    tasks = parsed.tasks
    for i, (t, wave) in enumerate(zip(tasks, waves, strict=True)):
        group = by_wave.get(wave)
        if group is None:
            group = by_wave[wave] = ([], [], [])
        group[0].append(i)
        pin = agent_pin.get(t.task_id) if agent_pin else None
        group[1].append(None if pin is None else pin[0])
        group[2].append(expected_of[i])
    line_list = list(lines.values())
    assigned: dict[int, list[PlannedTask]] = {}
    placed: list[PlannedTask | None] = [None] * len(tasks)
    for number in sorted(by_wave):
        where, pins, expected_s = by_wave[number]
        wave_tasks = [tasks[i] for i in where]
        line_of = [line_list[i] for i in where]
        order, chosen = choose(wave_tasks, pins, expected_s, line_of, agents, strategy, weights, source)
        out = assigned[number] = []
        for k in order:
            t = wave_tasks[k]
            pt = PlannedTask(
                t,
                line_of[k],
                number,
                agents[chosen[k]].id,
                pins[k] is not None,
                claims_of[where[k]],
                expected_s[k],
            )
            out.append(pt)
            placed[where[k]] = pt
    digest = hashlib.sha256(parsed.digest_bytes())  # then the schedule's, without joining the two
    digest.update(sched_data)
    return CampaignPlan(
        path=Path(source),
        digest=digest.hexdigest(),
        tasks=dict(zip(lines, cast("list[PlannedTask]", placed), strict=True)),
        waves=assigned,
        agents=list(agents),
        strategy=strategy,
        schedule_path=schedule_path,
        agent_weights=weights,
        unpinned=found or [],
    )


def _check_agents(
    tasks: list[PlanTask],
    lines: dict[str, int],
    agents: list[AgentSpec],
    agent_pin: dict[str, tuple[str, FileErrors, int]],
    known_tools: set[str],
    plan_errors: FileErrors,
) -> None:
    """Errors for pins to missing agents or agents without the task's tool, and for tools
    of unpinned tasks that no agent offers (one error per tool, at its first task)."""
    ids = [a.id for a in agents]
    by_id = {a.id: a for a in agents}
    if len(by_id) != len(agents):
        twice = sorted({a for a in ids if ids.count(a) > 1})
        plan_errors.add(0, f"agent id(s) listed twice: {', '.join(twice)}")
    if not agents:
        plan_errors.add(0, "no agents to run the plan")
        return
    listed = ", ".join(ids)
    offered: dict[str, bool] = {}  # tool -> does some agent offer it
    no_agent: dict[str, list[str]] = {}  # tool -> unpinned tasks that no agent can run
    for t in tasks:
        tool = t.tool
        pin = agent_pin.get(t.task_id) if agent_pin else None
        if pin is not None:
            name, where, number = pin
            spec = by_id.get(name)
            if spec is None:
                where.add(number, f"task {t.task_id!r}: agent {name!r} does not exist; agents: {listed}")
            elif tool in known_tools and not spec.offers(tool):
                where.add(
                    number,
                    f"task {t.task_id!r}: agent {name!r} does not offer tool {tool!r}; "
                    f"it offers: {', '.join(spec.tools or []) or 'nothing'}",
                )
            continue
        ok = offered.get(tool)
        if ok is None:
            ok = offered[tool] = tool not in known_tools or any(a.offers(tool) for a in agents)
        if not ok:
            no_agent.setdefault(tool, []).append(t.task_id)
    for tool, tids in no_agent.items():
        offers = "; ".join(f"{a.id} offers {', '.join(a.tools or []) or 'nothing'}" for a in agents)
        more = f" (and {len(tids) - 1} more task{'s' if len(tids) > 2 else ''})" if len(tids) > 1 else ""
        plan_errors.add(
            lines[tids[0]], f"no agent offers tool {tool!r}, needed by task {tids[0]!r}{more}; {offers}"
        )
