"""Waves: which wave each task of a plan runs in (:func:`layer_waves`, used by
:func:`buddy.plan.build.build_plan`).

A task with an explicit wave (schedule, else plan line) keeps it; it must be greater than
the wave of each of its dependencies. Any other task goes in ``1 + max(wave of its
dependencies)``, or wave 1 without dependencies. Computed in topological order,
O(tasks + dependencies): plan order while every dependency comes before its dependent,
else Kahn's algorithm. A cycle is reported as ``a -> b -> a``, each arrow reading
"depends on", at the line of its first task in plan order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from buddy.errors import FileErrors
    from buddy.models import PlanTask


def layer_waves(
    tasks: list[PlanTask],
    explicit: dict[str, tuple[int, FileErrors, int]],
    broken: set[str],
    plan_errors: FileErrors,
    lines: dict[str, int],
    violations: list[tuple[str, int, int, str]] | None = None,
) -> list[int]:
    """Wave of each task (see the module docstring); errors for bad dependencies and cycles.

    ``lines`` maps the id of each of ``tasks`` to its line, in the same order.
    ``explicit`` maps task id → (wave, file, line that set it). Returns the waves aligned
    with ``tasks``; a task in or behind a cycle gets 0. An explicit wave not after a
    dependency's is an error, or, when ``violations`` is given, recorded there as
    ``(task id, explicit wave, dependency's wave, dependency id)`` for the caller to resolve.

    Plan order is used as the topological order while every dependency comes before its
    dependent (the usual case: one pass); the first forward reference switches to Kahn's
    algorithm over the whole graph. Both are O(tasks + dependencies).
    """
    if not explicit:
        fast = _layer_in_order(tasks)
        if fast is not None:
            return fast
    n = len(tasks)
    index = dict(zip(lines, range(n), strict=True))  # lines is in the order of tasks
    pins = [explicit.get(tid) for tid in lines] if explicit else [None] * n
    no_deps: list[int] = []  # shared by every task without dependencies; never appended to
    deps: list[list[int]] = [no_deps] * n
    wave = [0] * n
    in_order = True  # so far every dependency came before its dependent
    for i, t in enumerate(tasks):
        named = t.depends_on
        best = 0
        if named:
            mine: list[int] = []
            deps[i] = mine
            for dep in dict.fromkeys(named) if len(named) > 1 else named:
                j = index.get(dep)
                if j is None:
                    if dep not in broken:
                        plan_errors.add(
                            lines[t.task_id], f"task {t.task_id!r} depends on unknown task {dep!r}"
                        )
                elif j == i:
                    plan_errors.add(lines[t.task_id], f"task {t.task_id!r} depends on itself")
                else:
                    mine.append(j)
                    if j > i:
                        in_order = False
                    elif wave[j] > best:
                        best = wave[j]
        if in_order:
            pin = pins[i]
            wave[i] = best + 1 if pin is None else pin[0]
    if not in_order:
        dependents: list[list[int]] = [[] for _ in range(n)]
        for i, mine in enumerate(deps):
            for j in mine:
                dependents[j].append(i)
        indegree = [len(d) for d in deps]
        highest = [0] * n  # the highest wave among a task's settled dependencies
        order = [i for i in range(n) if not indegree[i]]
        for i in order:  # grows while we walk it: Kahn's queue
            pin = pins[i]
            w = wave[i] = highest[i] + 1 if pin is None else pin[0]
            for k in dependents[i]:
                if w > highest[k]:
                    highest[k] = w
                indegree[k] -= 1
                if not indegree[k]:
                    order.append(k)
        if len(order) < n:
            rest = [i for i in range(n) if indegree[i]]
            for i in rest:
                wave[i] = 0
            for cycle in _cycles(rest, deps, set(rest)):
                names = [tasks[i].task_id for i in cycle]
                plan_errors.add(lines[names[0]], "dependency cycle: " + " -> ".join([*names, names[0]]))
    for i, pin in enumerate(pins if explicit else ()):
        if pin is None or not wave[i] or not deps[i]:  # not explicit, in a cycle, no deps
            continue
        best = max([wave[j] for j in deps[i]])
        w, where, line = pin
        if w <= best:
            top = next(j for j in deps[i] if wave[j] == best)
            if violations is not None:
                violations.append((tasks[i].task_id, w, best, tasks[top].task_id))
                continue
            where.add(
                line,
                f"task {tasks[i].task_id!r}: explicit wave {w} is not after wave {best} of its "
                f"dependency {tasks[top].task_id!r}",
            )
    return wave


def _layer_in_order(tasks: list[PlanTask]) -> list[int] | None:
    """The waves of :func:`layer_waves` for the usual plan: no explicit waves, and every dependency
    on an earlier line. None at the first dependency that is not (a forward reference, an
    unknown or broken task, the task itself): :func:`layer_waves` then does the whole work and
    reports what is wrong.

    One dict from task id to wave, nothing else: at 100k tasks the dependency lookups land
    all over memory, and this path makes one per dependency (half the time of the general
    path, which also builds an index and the dependency lists).
    """
    wave_of: dict[str, int] = {}
    for t in tasks:
        best = 0
        for dep in t.depends_on:
            w = wave_of.get(dep)
            if w is None:
                return None
            if w > best:
                best = w
        wave_of[t.task_id] = best + 1
    return list(wave_of.values())


def _cycles(nodes: list[int], deps: list[list[int]], alive: set[int]) -> list[list[int]]:
    """One cycle per strongly connected component (Tarjan, iterative) of the graph that
    ``deps`` makes on ``alive``; each cycle starts at its component's first node (plan
    order) and is a shortest one through it."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    components: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(deps[root]))]
        while work:
            v, it = work[-1]
            for w in it:
                if w not in alive:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(deps[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        components.append(comp)
    cycles = []
    for comp in components:
        members = set(comp)
        start = min(comp)
        parent: dict[int, int] = {start: start}
        frontier = [start]
        end = -1
        while frontier and end < 0:
            nxt = []
            for v in frontier:
                for w in deps[v]:
                    if w == start:
                        end = v
                        break
                    if w in members and w not in parent:
                        parent[w] = v
                        nxt.append(w)
                if end >= 0:
                    break
            frontier = nxt
        path = [end]
        while path[-1] != start:
            path.append(parent[path[-1]])
        cycles.append(path[::-1])
    cycles.sort(key=lambda c: c[0])
    return cycles
