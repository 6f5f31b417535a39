"""Plan-time conflicts between tasks, and how each is resolved (``conflicts.json``).

Six types:

================================  ===========================================================
``write_write``                   two tasks of one wave write the same resource
``read_write``                    a task reads a resource another task of its wave writes
``exclusive_tool``                two tasks of one wave call a tool whose contract is ``exclusive``
``duplicate_irreversible``        the same irreversible call twice: same tool, same args, and the
                                  tool neither reversible nor idempotent for those args (``shell``,
                                  ``file.append``, an HTTP POST); a repeated idempotent call is harmless
``dependency_violation``          a schedule or explicit wave puts a task with or before its dependency
``capability_mismatch``           a task pinned to an agent that does not offer its tool
================================  ===========================================================

Four resolutions, and where each applies (:data:`buddy.plan.policy.APPLICABLE`; defaults in
:data:`buddy.plan.policy.DEFAULTS`; the choice per type is a :class:`~buddy.plan.policy.ConflictPolicy`):

- ``serialize``: split the wave into sub-waves so conflicting tasks never share one; higher
  priority first (greedy: each task, by descending priority then plan order, goes to the
  first sub-wave holding no task it conflicts with). Waves are then renumbered 1..N. For
  ``dependency_violation`` the task loses its pin and goes after its dependencies.
  Default for ``write_write``, ``read_write``, ``exclusive_tool``.
- ``priority``: keep the highest-priority task of each conflict (ties: plan order) and skip
  the others (outcome ``skipped``, ``error_type`` ``conflict``).
- ``deduplicate``: run the first occurrence once; the duplicates take its outcome.
  Default for ``duplicate_irreversible``.
- ``reject``: the plan is invalid (exit 2). Default for ``dependency_violation`` and
  ``capability_mismatch`` (the only resolution that applies to the latter; plan validation
  reports both with file and line).

Runtime lease contention (a task that waited for another's lease) is counted per wave in
Redis and added to ``conflicts.json`` when the campaign ends.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from buddy.errors import PlanError
from buddy.plan.jsonl import gc_paused
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.plan.policy import ConflictPolicy, ConflictType, Resolution

if TYPE_CHECKING:
    from buddy.tools.contract import ToolContract
    from buddy.tools.registry import ToolRegistry


T, R = ConflictType, Resolution


class Conflict(BaseModel):
    """One conflict found in the plan and what was done about it."""

    type: ConflictType
    resolution: Resolution
    tasks: list[str]
    subject: str
    wave: int | None = None
    detail: str = ""
    kept: str | None = None
    skipped: list[str] = Field(default_factory=list)
    reused_from: str | None = None
    moved: dict[str, int] = Field(default_factory=dict)


class ConflictsReport(BaseModel):
    """``conflicts.json``: the plan's conflicts, the resolution applied, and runtime contention."""

    policy: dict[str, str]
    conflicts: list[Conflict]
    wave_renumbering: dict[int, list[int]] = Field(default_factory=dict)
    lease_contention_by_wave: dict[int, int] = Field(default_factory=dict)
    lease_contention_total: int = 0


def _order(pt: PlannedTask) -> tuple[int, int]:
    return (-pt.task.priority, pt.line)


_Use = tuple[int, "PlannedTask", str]  # (claim's place in the wave, task, mode)


def _pairs_in_wave(
    pts: list[PlannedTask], exclusive_tools: set[str]
) -> list[tuple[ConflictType, str, list[PlannedTask]]]:
    """The conflict groups of one wave: (type, subject, tasks), writers first in each group.

    One pass over the wave's claims; a resource gets a list only once a second task claims
    it (at 100k tasks most claims are a task's own output file, and the pass is bound by
    memory reads, not by Python operations)."""
    first: dict[str, _Use] = {}
    users: dict[str, list[_Use]] = {}
    exclusive: dict[str, list[PlannedTask]] = defaultdict(list)
    seq = 0
    for pt in pts:
        for c in pt.claims:
            seq += 1
            name = c.name
            one = first.get(name)
            if one is None:
                first[name] = (seq, pt, c.mode)
            elif name in users:
                users[name].append((seq, pt, c.mode))
            else:
                users[name] = [one, (seq, pt, c.mode)]
        if exclusive_tools and pt.task.tool in exclusive_tools:  # most plans have none: no read
            exclusive[pt.task.tool].append(pt)
    first_write: dict[str, int] = {}  # groups go in the order of each resource's first write claim
    for name, us in users.items():
        at = next((seq for seq, _, mode in us if mode == "write"), None)
        if at is not None:
            first_write[name] = at
    writers: dict[str, list[PlannedTask]] = {}
    readers: dict[str, list[PlannedTask]] = {}
    for name in sorted(first_write, key=first_write.__getitem__):
        writers[name] = [pt for _, pt, mode in users[name] if mode == "write"]
        readers[name] = [pt for _, pt, mode in users[name] if mode != "write"]
    groups: list[tuple[ConflictType, str, list[PlannedTask]]] = []
    for name, ws in writers.items():
        if len(ws) > 1:
            groups.append((T.WRITE_WRITE, name, ws))
        if readers.get(name):
            wids = {id(w) for w in ws}
            groups.append((T.READ_WRITE, name, ws + [r for r in readers[name] if id(r) not in wids]))
    for tool, es in exclusive.items():
        if len(es) > 1:
            groups.append((T.EXCLUSIVE_TOOL, tool, es))
    return groups


def _edges(t: ConflictType, subject: str, group: list[PlannedTask]) -> dict[str, set[str]]:
    """Which tasks of a group may not share a wave with which, both ways: every pair, except
    that readers of ``subject`` may share one (a read_write group: only pairs with a writer)."""
    ids = [pt.task.task_id for pt in group]
    if t is not T.READ_WRITE:
        return {tid: set(ids) - {tid} for tid in ids}
    # O(writers x group), not O(group^2): a resource can have thousands of readers
    writes = {
        pt.task.task_id for pt in group if any(c.name == subject and c.mode == "write" for c in pt.claims)
    }
    return {tid: (set(ids) if tid in writes else set(writes)) - {tid} for tid in ids}


def resolve(plan: CampaignPlan, registry: ToolRegistry, policy: ConflictPolicy) -> ConflictsReport:
    """Find every conflict of ``plan``, apply ``policy`` (changing ``plan`` in place: waves
    split and renumbered, ``plan.skip`` and ``plan.reuse`` filled) and report them.

    Raises :class:`PlanError` for a conflict whose resolution is ``reject``.
    """
    with gc_paused():  # like reading the plan: many small objects, no cycles
        return _resolve(plan, registry, policy)


def _resolve(plan: CampaignPlan, registry: ToolRegistry, policy: ConflictPolicy) -> ConflictsReport:
    conflicts: list[Conflict] = []
    rejected: list[str] = []
    for tid, w, best, dep in plan.unpinned:
        conflicts.append(
            Conflict(
                type=T.DEPENDENCY_VIOLATION, resolution=R.SERIALIZE, tasks=[tid, dep], subject=dep,
                wave=plan.tasks[tid].wave,
                detail=f"explicit wave {w} was not after wave {best} of {dep}; the task now runs after it",
            )
        )  # fmt: skip

    # duplicates of irreversible calls, across the whole plan, in one pass; a tool whose
    # idempotency does not depend on its args is classified once (no per-task validation)
    contracts: dict[str, ToolContract] = {}
    safe_tools: set[str] = set()
    seen: dict[tuple[str, str], list[PlannedTask]] = defaultdict(list)
    for pt in plan.tasks.values():
        tool = pt.task.tool
        if tool in safe_tools:
            continue
        contract = contracts.get(tool)
        if contract is None:
            contract = contracts[tool] = registry.get(tool)
            if contract.reversible or (contract.idempotent_of is None and contract.idempotent):
                safe_tools.add(tool)
                continue
        if contract.idempotent_of is None or not contract.is_idempotent(contract.parse_args(pt.task.args)):
            seen[(tool, json.dumps(pt.task.args, sort_keys=True))].append(pt)
    exclusive_tools = {t for t, c in contracts.items() if c.exclusive}
    for (tool, args), group in seen.items():
        if len(group) < 2:
            continue
        how = policy.of(T.DUPLICATE_IRREVERSIBLE)
        ids = [pt.task.task_id for pt in group]
        c = Conflict(type=T.DUPLICATE_IRREVERSIBLE, resolution=how, tasks=ids, subject=f"{tool} {args}")
        if how is R.REJECT:
            rejected.append(f"duplicate_irreversible: {', '.join(ids)} call {tool} with the same args {args}")
        elif how is R.DEDUPLICATE:
            first = min(group, key=lambda pt: (pt.wave, pt.line))
            c.reused_from = first.task.task_id
            for pt in group:
                if pt is not first:
                    plan.reuse[pt.task.task_id] = first.task.task_id
            c.detail = f"runs once as {first.task.task_id}; the others reuse its outcome"
        else:
            keep = min(group, key=_order)
            c.kept = keep.task.task_id
            c.skipped = [i for i in ids if i != keep.task.task_id]
            for i in c.skipped:
                plan.skip[i] = f"duplicate_irreversible: kept {keep.task.task_id} (higher priority)"
        conflicts.append(c)

    # same-wave conflicts
    new_waves: dict[int, list[PlannedTask]] = {}
    moved: dict[str, PlannedTask] = {}  # task id -> its record in its new wave
    renumbering: dict[int, list[int]] = {}
    subs: dict[int, dict[str, int]] = {}
    for number in plan.wave_numbers():
        pts = (
            [pt for pt in plan.waves[number] if pt.task.task_id not in plan.skip]
            if plan.skip
            else plan.waves[number]
        )
        apart: dict[str, set[str]] = defaultdict(set)  # serialize: who may not share a sub-wave
        members: dict[str, PlannedTask] = {}  # the tasks of apart
        for t, subject, group in _pairs_in_wave(pts, exclusive_tools):
            how = policy.of(t)
            ids = [pt.task.task_id for pt in group]
            c = Conflict(type=t, resolution=how, tasks=ids, subject=subject, wave=number)
            if how is R.REJECT:
                rejected.append(f"{t.value} in wave {number} on {subject}: {', '.join(ids)}")
            elif how is R.PRIORITY:
                kept: list[str] = []
                edges = _edges(t, subject, group)
                for pt in sorted(group, key=_order):
                    tid = pt.task.task_id
                    if tid in plan.skip:
                        continue
                    if not edges[tid].isdisjoint(kept):
                        plan.skip[tid] = f"{t.value} on {subject}: a higher-priority task kept it"
                        c.skipped.append(tid)
                    else:
                        kept.append(tid)
                c.kept = kept[0] if kept else None
            else:
                for tid, others in _edges(t, subject, group).items():
                    apart[tid] |= others
                members.update((pt.task.task_id, pt) for pt in group)
            conflicts.append(c)
        sub: dict[str, int] = {}
        if apart:  # only tasks in a serialized conflict can leave the first sub-wave
            for pt in sorted(members.values(), key=_order):
                taken = {sub[o] for o in apart[pt.task.task_id] if o in sub}
                k = 0
                while k in taken:
                    k += 1
                sub[pt.task.task_id] = k
        subs[number] = sub
    split = any(max(sub.values(), default=0) > 0 for sub in subs.values())
    if not split:  # nothing moves: keep the plan's waves and tasks as they are
        if rejected:
            raise PlanError((str(plan.path), 0, f"conflict ({r}); resolution is reject") for r in rejected)
        return ConflictsReport(
            policy={t.value: policy.of(t).value for t in ConflictType}, conflicts=conflicts
        )
    counter = 0
    for number, sub in subs.items():
        depth = max(sub.values(), default=0) + 1
        # waves keep their numbers unless one was split; then all are renumbered 1..N
        numbers = list(range(counter + 1, counter + depth + 1)) if split else [number]
        counter += depth
        if numbers != [number]:
            renumbering[number] = numbers
        buckets: list[list[PlannedTask]] = [[] for _ in numbers]
        for pt in plan.waves[number]:  # one pass per wave, not one per sub-wave
            k = sub.get(pt.task.task_id, 0) if sub else 0
            new = numbers[k]
            if pt.wave != new:  # positional: dataclasses.replace costs 3x as much at 100k tasks
                pt = PlannedTask(pt.task, pt.line, new, pt.agent, pt.pinned, pt.claims, pt.expected_s)
                moved[pt.task.task_id] = pt
            buckets[k].append(pt)
        new_waves.update(zip(numbers, buckets, strict=True))
    if rejected:
        raise PlanError((str(plan.path), 0, f"conflict ({r}); resolution is reject") for r in rejected)
    # the moved tasks replace their old records in place (plan order kept, no new 100k dict)
    plan.tasks.update(moved)
    for c in conflicts:
        if c.resolution is R.SERIALIZE and c.type is not T.DEPENDENCY_VIOLATION:
            c.moved = {tid: plan.tasks[tid].wave for tid in c.tasks}
            c.detail = c.detail or "split into sub-waves, higher priority first"
    plan.waves = {n: pts for n, pts in new_waves.items() if pts}
    return ConflictsReport(
        policy={t.value: policy.of(t).value for t in ConflictType},
        conflicts=conflicts,
        wave_renumbering=renumbering,
    )
