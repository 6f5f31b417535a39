"""Load and validate a plan, lay it out in waves and assign its tasks to agents.

A *plan* is a JSONL file, one :class:`~buddy.models.PlanTask` per line; blank lines and lines
starting with ``#`` are ignored. An optional *schedule* (JSONL of
:class:`~buddy.models.ScheduleEntry`) pins tasks to an agent and/or a wave and overrides the
plan line's ``agent`` / ``wave``. :func:`build_plan` checks everything before anything is
dispatched (docs/architecture.md, "Validate the whole plan before the first dispatch") and raises one
:class:`~buddy.errors.PlanError` holding every problem as ``FILE:LINE: message`` (at most
:data:`MAX_ERRORS`, then ``… and N more errors``).

Lines are read strictly, since what a lenient reader lets through reaches the workers: the
plan and the schedule must be regular files (``FILE: not a regular file (a FIFO)``: a FIFO or
a device would hang the read); each line strict JSON (no ``NaN`` / ``Infinity``, no number
beyond a 64-bit float, no key twice in one object at any depth: ``duplicate key "tool"``),
nested at most :data:`MAX_JSON_DEPTH` levels (``args nested deeper than 32 levels``); fields
within their bounds (:class:`~buddy.models.PlanTask`). A cheap screen passes the usual line
to the fast path (:func:`screen`); only a line it is not sure of gets the exact check.

Waves are laid out by :mod:`buddy.layering`, each wave's tasks assigned to agents by
:mod:`buddy.assignment` (each module's docstring states its rules).
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ValidationError

from buddy.config import TaskDefaults
from buddy.errors import MAX_ERRORS, FileErrors, PlanError, cap_errors
from buddy.models import TASK_ID_RE, AgentSpec, PlanTask, ResourceClaim, ScheduleEntry, Strategy
from buddy.plan.assignment import choose
from buddy.plan.jsonl import (
    BOM,
    MAX_JSON_DEPTH,
    NotRegularFileError,
    decode_line,
    json_problems,
    levels,
    lines_of,
    nested_message,
    plain_json,
    read_file,
    read_regular_file,
    screen,
)
from buddy.plan.layering import layer_waves
from buddy.tools.contract import ToolContract, format_validation_error
from buddy.tools.registry import ToolRegistry

__all__ = [
    "MAX_ERRORS",
    "MAX_JSON_DEPTH",
    "CampaignPlan",
    "NotRegularFileError",
    "PlannedTask",
    "assign_wave",
    "build_plan",
    "cap_errors",
    "load_plan",
    "load_schedule",
    "read_regular_file",
    "summary_table",
]

#: The JSON reader of plan and schedule lines. orjson is stricter than the standard library
#: where it matters here: ``NaN``, ``Infinity`` and numbers beyond a 64-bit float are errors.


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedTask:
    """A validated task with its place in the campaign.

    ``line`` is the task's line in the plan file (1-based). ``wave`` and ``agent`` are the
    effective ones (schedule over plan line over computed); ``agent`` is ``""`` only before
    assignment. ``pinned`` is true when the schedule or the plan line named the agent.
    ``claims`` are the plan line's ``resources`` plus the tool's own claims for the
    arguments, one per resource name (``write`` wins over ``read``). ``expected_s`` is the
    tool's expected duration in seconds, None when the tool does not say.
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
    """A validated plan, laid out in waves and assigned to agents (built by :func:`build_plan`).

    ``digest`` is the sha256 hex of the plan file's bytes followed by the schedule file's
    bytes (when there is one). ``tasks`` maps task id to task in plan order; ``waves`` maps
    wave number (ascending) to the wave's tasks in dispatch order; both hold the same
    :class:`PlannedTask` objects. ``agent_weights`` are the weights of the ``confidence``
    strategy (absent agents weigh 1.0).
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
    #: the :class:`buddy.conflicts.ConflictsReport` of :func:`buddy.conflicts.resolve`, once run
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
        their agent. Returns the wave's new dispatch order; raises :class:`PlanError` as
        :func:`assign_wave` does (an agent missing for a task).
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


# -- errors ----------------------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a plan is read.

    Reading a plan allocates a few objects per line and frees almost none, which makes the
    collector rescan the growing heap again and again (about half the time of a 100k-task
    plan). Plan records hold no reference cycles, so nothing is lost by waiting; the
    previous state is restored on the way out.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # The new objects would sit in the youngest generation and be rescanned by every
        # collection after this (about a second for a 100k-task plan): freeze them instead.
        # Frozen objects are still freed by reference counting when nothing uses them.
        gc.freeze()
        if was_enabled:
            gc.enable()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_errors(e: ValidationError) -> list[str]:
    """Pydantic errors of a plan or schedule line as ``field: message`` sentences."""
    out = []
    for err in e.errors():
        loc = [str(x) for x in err["loc"]]
        kind = err["type"]
        if kind in ("missing", "extra_forbidden") and loc:
            what = "missing required field" if kind == "missing" else "unknown field"
            parent = ".".join(loc[:-1])
            msg = f"{what} {loc[-1]!r}"
            out.append(f"{parent}: {msg}" if parent else msg)
            continue
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, (str, int, float, bool)) or value is None:
            msg = f"{msg} (got {_short(value)})"
        out.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return out


# -- reading files ---------------------------------------------------------------------------


@dataclass
class _Parsed:
    """What :func:`_parse_plan` learnt.

    ``tasks`` holds every line that is a valid PlanTask with a new id, even when its tool or
    args are bad, so the dependency checks still see it, and ``lines`` their line numbers
    (same order); ``broken`` holds the ids of lines that are not (their dependents are not
    blamed a second time). ``claims`` and ``expected`` are aligned with ``tasks``: the
    task's claims and its tool's expected seconds, when a workdir was given and its tool,
    args and claims are valid (``claims`` is None otherwise).
    ``agent_pin`` / ``wave_pin`` hold the lines' own ``agent`` / ``wave`` (task id → value,
    the errors of this file, line).
    """

    tasks: list[PlanTask] = field(default_factory=list)
    lines: dict[str, int] = field(default_factory=dict)  # same order as tasks
    broken: set[str] = field(default_factory=set)
    claims: list[list[ResourceClaim] | None] = field(default_factory=list)
    expected: list[float | None] = field(default_factory=list)
    agent_pin: dict[str, tuple[str, FileErrors, int]] = field(default_factory=dict)
    wave_pin: dict[str, tuple[int, FileErrors, int]] = field(default_factory=dict)
    data: bytes = b""


def _parse_plan(
    path: Path,
    registry: ToolRegistry,
    defaults: TaskDefaults | None,
    errors: FileErrors,
    workdir: Path | None = None,
) -> _Parsed:
    """Check each line of a plan alone (see :func:`load_plan`). With a ``workdir``, also ask
    each task's tool for its resource claims and expected duration."""
    parsed = _Parsed()
    data = read_file(path, "plan", errors)
    if data is None:
        return parsed
    parsed.data = data
    fill: dict[str, Any] = {}
    if defaults is not None:
        fill = {k: v for k, v in defaults.model_dump().items() if v != PlanTask.model_fields[k].default}
    seen = parsed.lines  # task id -> first line, valid or not (broken ones leave at the end)
    known: dict[str, ToolContract | None] = {}  # tool name -> contract (None: unknown)
    tasks, claims_of, expected_of = parsed.tasks, parsed.claims, parsed.expected
    from_json = PlanTask.__pydantic_validator__.validate_json  # model_validate_json minus a wrapper

    def contract_of(tool: str, number: int) -> ToolContract | None:
        if tool in known:
            contract = known[tool]
        else:
            contract = known[tool] = registry.get(tool) if tool in registry else None
        if contract is None:
            names = ", ".join(registry.names()) or "(none registered)"
            errors.add(number, f"unknown tool {tool!r}; known tools: {names}")
        return contract

    def args_of(contract: ToolContract, args: dict[str, Any], number: int) -> BaseModel | None:
        try:
            return contract.parse_args(args)
        except ValidationError as e:
            for msg in format_validation_error(e, prefix="args."):
                errors.add(number, msg)
            return None

    def refused(text: bytes, number: int) -> bool:
        """Whether the exact check finds a line unacceptable as JSON (its errors recorded)."""
        problems, value = json_problems(text)
        for msg in problems:
            errors.add(number, msg)
        if problems:
            _note_broken(value, number, errors, parsed)
        return bool(problems)

    any_line = False
    for number, raw in enumerate(data.removeprefix(BOM).split(b"\n"), 1):
        text = raw.strip()
        if not text or text.startswith(b"#"):
            continue
        any_line = True
        # Only a line of more than MAX_JSON_DEPTH brackets can nest too deep, and in a valid
        # task only args nest freely: such a line's args are measured, not every line.
        many = text.count(b"{") + text.count(b"[") > MAX_JSON_DEPTH
        if not plain_json(text) and refused(text, number):  # NaN, a repeated key, …?
            continue
        task: PlanTask | None
        try:  # the fast path: a good line straight from its bytes
            task = from_json(text, strict=True)
        except ValidationError:  # the slow path finds out what is wrong
            if many and refused(text, number):  # too deep for pydantic's reader, maybe
                continue
            task = _broken_line(text, number, fill, errors, parsed, contract_of, args_of)
            if task is None:
                continue
        else:
            if many and 1 + levels(task.args) > MAX_JSON_DEPTH:  # the line's object is level 1
                errors.add(number, nested_message("args"))
                _note_broken({"task_id": task.task_id}, number, errors, parsed)
                continue
            if fill:
                for key in fill.keys() - task.model_fields_set:
                    setattr(task, key, fill[key])
        tid = task.task_id
        first = seen.get(tid)
        if first is not None:
            errors.add(number, f"duplicate task_id {tid!r} (first defined on line {first})")
            contract = known.get(task.tool) or contract_of(task.tool, number)
            if contract is not None:
                args_of(contract, task.args, number)
            continue
        seen[tid] = number
        tasks.append(task)
        claims_of.append(None)
        expected_of.append(None)
        if task.agent is not None:
            parsed.agent_pin[tid] = (task.agent, errors, number)
        if task.wave is not None:
            parsed.wave_pin[tid] = (task.wave, errors, number)
        contract = known.get(task.tool) or contract_of(task.tool, number)
        if contract is None:
            continue
        try:
            model = contract.parse_args(task.args)
        except ValidationError as e:
            for msg in format_validation_error(e, prefix="args."):
                errors.add(number, msg)
            continue
        if workdir is None:
            continue
        try:  # the tool's own code: a failure is reported, it does not crash validation
            claims = contract.claims(model, workdir)
            expected = contract.expected_duration_s(model)
        except Exception as e:
            from buddy.errors import ToolDeniedError

            if isinstance(e, ToolDeniedError):  # a policy refusal (BUDDY_FILE_ROOT): it names the arg
                errors.add(number, str(e))
            else:
                errors.add(number, f"tool {task.tool!r} failed on these args: {type(e).__name__}: {e}")
            continue
        own = task.resources
        if claims or len(own) > 1:
            claims_of[-1] = _merge_claims(own, claims)
        else:  # the usual case: nothing to merge, the line's own list serves (no copy)
            claims_of[-1] = own
        expected_of[-1] = None if expected is None else float(expected)
    for tid in parsed.broken:
        del seen[tid]
    if not any_line and not errors:
        errors.add(0, "plan has no tasks")
    return parsed


def _broken_line(
    text: bytes,
    number: int,
    fill: dict[str, Any],
    errors: FileErrors,
    parsed: _Parsed,
    contract_of: Callable[[str, int], ToolContract | None],
    args_of: Callable[[ToolContract, dict[str, Any], int], BaseModel | None],
) -> PlanTask | None:
    """Say what is wrong with a line that is not a valid task, checking every field and,
    when possible, its tool and args. Returns the task in the rare case the line is valid
    after all (JSON-mode and Python-mode validation differ); otherwise records its task id
    as ``broken`` (or reports it a duplicate) and returns None."""
    obj = decode_line(text, number, errors)
    if obj is None:
        return None
    for key, value in fill.items():
        obj.setdefault(key, value)
    try:
        return PlanTask.model_validate(obj, strict=True)
    except ValidationError as e:
        for msg in _field_errors(e):
            errors.add(number, msg)
    _note_broken(obj, number, errors, parsed)
    tool, args = obj.get("tool"), obj.get("args", {})
    if isinstance(tool, str) and tool:  # the tool and its args are checked all the same
        contract = contract_of(tool, number)
        if contract is not None and isinstance(args, dict):
            args_of(contract, args, number)
    return None


def _note_broken(obj: Any, number: int, errors: FileErrors, parsed: _Parsed) -> None:
    """Record the task id of a line that is not a valid task as ``broken`` (its dependents
    are not blamed for it), or report it a duplicate; nothing when the line (``obj``, its
    JSON value, None when unreadable) names no valid id."""
    tid = obj.get("task_id") if isinstance(obj, dict) else None
    if isinstance(tid, str) and TASK_ID_RE.match(tid):
        first = parsed.lines.get(tid)
        if first is not None:
            errors.add(number, f"duplicate task_id {tid!r} (first defined on line {first})")
        else:
            parsed.lines[tid] = number
            parsed.broken.add(tid)


def _merge_claims(first: Iterable[ResourceClaim], second: Iterable[ResourceClaim]) -> list[ResourceClaim]:
    """The claims of both, one per resource name in first-seen order; ``write`` wins."""
    out: dict[str, ResourceClaim] = {}
    for claim in (*first, *second):
        old = out.get(claim.name)
        if old is None or (old.mode == "read" and claim.mode == "write"):
            out[claim.name] = claim
    return list(out.values())


def load_plan(
    path: Path, registry: ToolRegistry, *, defaults: TaskDefaults | None = None
) -> tuple[list[PlanTask], dict[str, int], list[str]]:
    """Read and check a plan file line by line, without raising.

    Returns ``(tasks, lines, errors)``: the lines that are valid :class:`PlanTask` records
    with a new task id, in plan order (their tool or args may still be in ``errors``); task
    id → line number; and every problem found as ``FILE:LINE: message``, sorted by line and
    not capped. Checks the file (a regular file) and each line alone: strict JSON (no
    ``NaN`` / ``Infinity`` or number beyond a 64-bit float, no repeated key, nesting up to
    :data:`MAX_JSON_DEPTH`), fields and their bounds (``defaults`` fill the priority,
    predicted_success and confidence a line leaves out), duplicate ids, the tool (in
    ``registry``) and its arguments. Dependencies, waves and agents are checked by
    :func:`build_plan`.
    """
    errors = FileErrors(path)
    with gc_paused():
        parsed = _parse_plan(Path(path), registry, defaults, errors)
    return parsed.tasks, parsed.lines, errors.sorted()


def _parse_schedule(path: Path, errors: FileErrors) -> tuple[list[tuple[int, ScheduleEntry]], bytes]:
    data = read_file(path, "schedule", errors)
    if data is None:
        return [], b""
    entries: list[tuple[int, ScheduleEntry]] = []
    seen: dict[str, int] = {}
    for number, text in lines_of(data):
        if not screen(text):  # the same strict JSON as a plan line
            problems, _ = json_problems(text)
            if problems:
                for msg in problems:
                    errors.add(number, msg)
                continue
        obj = decode_line(text, number, errors)
        if obj is None:
            continue
        try:
            entry = ScheduleEntry.model_validate(obj, strict=True)
        except ValidationError as e:
            for msg in _field_errors(e):
                errors.add(number, msg)
            continue
        first = seen.get(entry.task_id)
        if first is not None:
            errors.add(number, f"task {entry.task_id!r} is already scheduled on line {first}")
            continue
        seen[entry.task_id] = number
        entries.append((number, entry))
    return entries, data


def load_schedule(path: Path) -> tuple[list[tuple[int, ScheduleEntry]], list[str]]:
    """Read a schedule file: ``([(line, entry), ...], errors)``, without raising.

    Errors (``FILE:LINE: message``, sorted by line): unreadable file or not a regular
    file, JSON that is not strict (as for a plan line: ``NaN``, a repeated key, nesting past
    :data:`MAX_JSON_DEPTH`), a bad field (``wave`` out of 1..``MAX_WAVE``), a task scheduled
    twice. Whether each task exists is checked by :func:`build_plan`.
    """
    errors = FileErrors(path)
    entries, _ = _parse_schedule(Path(path), errors)
    return entries, errors.sorted()


# -- assignment ------------------------------------------------------------------------------


def assign_wave(
    tasks: Sequence[PlannedTask],
    agents: Sequence[AgentSpec],
    strategy: Strategy,
    *,
    weights: Mapping[str, float] | None = None,
    source: str = "plan",
) -> list[PlannedTask]:
    """Assign the tasks of one wave to ``agents`` by ``strategy`` (the rules: :mod:`buddy.assignment`).

    ``tasks`` are the wave's tasks, in any order (plan order is taken from their ``line``);
    a pinned one keeps its ``agent``, the ``agent`` of the others is ignored. ``weights``
    are the ``confidence`` strategy's agent weights (absent: 1.0). Loads start at zero:
    each wave is balanced on its own.
    Returns new :class:`PlannedTask` objects with ``agent`` set, in dispatch order.

    Raises :class:`PlanError` (``source:LINE: message``, ``source`` naming the plan file)
    when a pinned task's agent is not in ``agents`` or no agent offers an unpinned task's
    tool; :func:`build_plan` checks both first, so it is an optimizer's failover that can
    meet them.
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


# -- the whole plan --------------------------------------------------------------------------


def build_plan(
    plan_path: Path,
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
    """Load, validate, lay out in waves and assign a plan (the rules: :mod:`buddy.layering`,
    :mod:`buddy.assignment`).

    ``unpin_violations`` (the ``serialize`` resolution of ``dependency_violation``
    conflicts): a task whose explicit wave is not after a dependency's loses the pin and
    is layered after its dependencies; each is listed in ``CampaignPlan.unpinned``.

    ``registry`` holds the tools; ``agents`` the campaign's agents (their order breaks
    ties); ``defaults`` fill fields a line leaves out; ``workdir`` (default: the current
    directory) resolves the paths of the tools' resource claims; ``agent_weights`` feed the
    ``confidence`` strategy.

    Raises :class:`PlanError` listing every problem of the plan and the schedule
    (``FILE:LINE: message``, capped at :data:`MAX_ERRORS`): each line's JSON (strict: see
    the module docstring), fields, tool and args; duplicate ids; unknown or self
    dependencies; cycles; explicit waves not after their dependencies; pins to missing agents
    or agents without the tool; tools no agent offers; schedule lines naming unknown tasks or
    a task twice; an empty or unreadable file, or one that is not a regular file.
    """
    with gc_paused():
        return _build(
            Path(plan_path),
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
    plan_path: Path,
    registry: ToolRegistry,
    agents: list[AgentSpec],
    strategy: Strategy,
    schedule_path: Path | None,
    defaults: TaskDefaults | None,
    workdir: Path,
    weights: dict[str, float],
    unpin_violations: bool = False,
) -> CampaignPlan:
    plan_errors = FileErrors(plan_path)
    parsed = _parse_plan(plan_path, registry, defaults, plan_errors, workdir)
    sched_errors = FileErrors(schedule_path if schedule_path is not None else "schedule")
    entries: list[tuple[int, ScheduleEntry]] = []
    sched_data = b""
    if schedule_path is not None:
        entries, sched_data = _parse_schedule(schedule_path, sched_errors)
    lines = parsed.lines

    # pins: task id -> (agent or wave, the file and line that set it); the schedule wins
    agent_pin = parsed.agent_pin
    wave_pin = parsed.wave_pin
    for number, entry in entries:
        if entry.task_id not in lines:
            if entry.task_id not in parsed.broken:
                sched_errors.add(number, f"unknown task_id {entry.task_id!r} (not in {plan_path})")
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
        waves = layer_waves(parsed.tasks, wave_pin, parsed.broken, FileErrors(plan_path), lines)
    if plan_errors or sched_errors:
        raise PlanError(cap_errors(plan_errors.sorted() + sched_errors.sorted()))

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
    source = str(plan_path)
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
    digest = hashlib.sha256(parsed.data)  # then the schedule's bytes, without joining the two
    digest.update(sched_data)
    return CampaignPlan(
        path=plan_path,
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
