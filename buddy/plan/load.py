"""Reading a plan, from a JSONL file or from memory, and its schedule, one line at a time.

A *plan* is a JSONL file, one :class:`~buddy.models.PlanTask` per line (README, "Plan
format"); blank lines and lines starting with ``#`` are ignored. Besides Buddy's own fields a
line may carry the seeds' ``phase21_plan_id`` and ``phase22_validation_id`` (strings of 1–128
characters), which ride along into the task's message, outcome and learning signals
(:data:`~buddy.models.SEED_IDS`); any other unknown field is an error. A plan may also be given
in memory, as an iterable of dicts in the same format or of pydantic models with those
fields (e.g. :class:`~buddy.models.PlanTask`): each item is written as one canonical JSON
line (:func:`canonical_lines`) and then checked exactly as a file line is, its 1-based
index in the iterable standing for the line number and ``<tasks>`` for the file name.

Lines are read strictly, since what a lenient reader lets through reaches the workers: the
plan and the schedule must be regular files (``FILE: not a regular file (a FIFO)``: a FIFO or
a device would hang the read); each line strict JSON (no ``NaN`` / ``Infinity``, no number
beyond a 64-bit float, no key twice in one object at any depth: ``duplicate key "tool"``),
nested at most :data:`~buddy.plan.jsonl.MAX_JSON_DEPTH` levels (``args nested deeper than 32
levels``); fields within their bounds (:class:`~buddy.models.PlanTask`). A cheap screen
passes the usual line to the fast path (:func:`~buddy.plan.jsonl.screen`); only a line it is
not sure of gets the exact check. What spans lines (dependencies, waves, agents) is checked
by :func:`buddy.plan.build.build_plan`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from buddy.config import TaskDefaults
from buddy.errors import FileErrors, Problem, ToolDeniedError
from buddy.models import TASK_ID_RE, PlanTask, ResourceClaim, ScheduleEntry
from buddy.plan.jsonl import (
    MAX_JSON_DEPTH,
    decode_line,
    gc_paused,
    json_problems,
    levels,
    lines_of,
    nested_message,
    plain_json,
    read_file,
    screen,
)
from buddy.plan.model import MEMORY_SOURCE
from buddy.tools.contract import ToolContract, format_validation_error
from buddy.tools.registry import ToolRegistry

#: One line of a plan given in memory: a dict in the plan format, or a pydantic model with
#: its fields.
TaskLine = Mapping[str, Any] | BaseModel

#: A plan: the path of a JSONL file, or the plan's lines in memory.
PlanSource = str | os.PathLike[str] | Iterable[TaskLine]


def source_name(plan: PlanSource) -> str:
    """The name of ``plan`` in its errors: the file's path (a ``str`` or a path names a file),
    or ``<tasks>`` for lines in memory."""
    return str(Path(plan)) if isinstance(plan, (str, os.PathLike)) else MEMORY_SOURCE


def canonical_lines(tasks: Iterable[TaskLine], errors: FileErrors) -> Iterator[tuple[int, bytes]]:
    """``(index, JSON line)`` of each item of a plan in memory, the index 1-based.

    A dict (any mapping) is written as it is; a :class:`~buddy.models.PlanTask` as the fields
    it was given (``model_dump(exclude_unset=True)``), so that the defaults fill the others
    exactly as for a file line that leaves them out; any other pydantic model as all its
    fields (its own defaults count as given). The line is canonical JSON: keys sorted, no spaces,
    UTF-8. An item that cannot be written as JSON (a value of another type, ``NaN``, a
    non-string key that cannot be sorted) or that is neither a mapping nor a model is
    reported in ``errors`` at its index and skipped.
    """
    for number, item in enumerate(tasks, 1):
        try:
            if isinstance(item, BaseModel):
                obj: Any = item.model_dump(exclude_unset=isinstance(item, PlanTask))
            elif isinstance(item, Mapping):
                obj = dict(item)
            else:
                errors.add(number, f"expected a dict or a pydantic model, got {type(item).__name__}")
                continue
            text = json.dumps(obj, ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":"))
        except RecursionError:
            errors.add(number, nested_message(""))
            continue
        except ValueError as e:
            hint = "; NaN and Infinity are not JSON numbers" if "Out of range float" in str(e) else ""
            errors.add(number, f"cannot be written as JSON: {e}{hint}")
            continue
        except Exception as e:  # TypeError of json.dumps, a model's serialization error
            errors.add(number, f"cannot be written as JSON: {e}")
            continue
        yield number, text.encode("utf-8")


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


@dataclass
class Parsed:
    """What :func:`parse_plan` learnt.

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
    #: the plan file's bytes (empty for a plan in memory)
    data: bytes = b""
    #: the canonical lines of a plan in memory (:func:`canonical_lines`)
    written: list[bytes] = field(default_factory=list)

    def digest_bytes(self) -> bytes:
        """What the plan's digest covers: the file's bytes, or the canonical lines joined by
        newlines, each line ending with one."""
        return self.data if not self.written else b"".join(line + b"\n" for line in self.written)


def parse_plan(
    plan: PlanSource,
    registry: ToolRegistry,
    defaults: TaskDefaults | None,
    errors: FileErrors,
    workdir: Path | None = None,
) -> Parsed:
    """Check each line of a plan alone (see :func:`load_plan`). With a ``workdir``, also ask
    each task's tool for its resource claims and expected duration."""
    parsed = Parsed()
    numbered: Iterable[tuple[int, bytes]]
    if isinstance(plan, (str, os.PathLike)):
        data = read_file(Path(plan), "plan", errors)
        if data is None:
            return parsed
        parsed.data = data
        numbered = lines_of(data)
    else:
        written: list[bytes] = []
        numbered = _kept(canonical_lines(plan, errors), written)
        parsed.written = written
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
    for number, text in numbered:
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


def _kept(numbered: Iterator[tuple[int, bytes]], into: list[bytes]) -> Iterator[tuple[int, bytes]]:
    """``numbered`` as it is, each line also appended to ``into`` (for the digest)."""
    for number, text in numbered:
        into.append(text)
        yield number, text


def _broken_line(
    text: bytes,
    number: int,
    fill: dict[str, Any],
    errors: FileErrors,
    parsed: Parsed,
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


def _note_broken(obj: Any, number: int, errors: FileErrors, parsed: Parsed) -> None:
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
    plan: PlanSource, registry: ToolRegistry, *, defaults: TaskDefaults | None = None
) -> tuple[list[PlanTask], dict[str, int], list[Problem]]:
    """Read and check a plan line by line, without raising: a JSONL file (a path) or lines in
    memory (dicts or pydantic models, see the module docstring).

    Returns ``(tasks, lines, errors)``: the lines that are valid :class:`PlanTask` records
    with a new task id, in plan order (their tool or args may still be in ``errors``); task
    id → line number (the 1-based index for a plan in memory); and every problem found as
    ``(source, line, message)`` (:data:`~buddy.errors.Problem`; ``source`` is the file or
    ``<tasks>``), sorted by line and not capped. Checks the file (a regular file) and each
    line alone: strict JSON (no ``NaN`` / ``Infinity`` or number beyond a 64-bit float, no
    repeated key, nesting up to :data:`MAX_JSON_DEPTH`), fields and their bounds
    (``defaults`` fill the priority, predicted_success and confidence a line leaves out),
    duplicate ids, the tool (in ``registry``) and its arguments. Dependencies, waves and
    agents are checked by :func:`buddy.plan.build.build_plan`.
    """
    errors = FileErrors(source_name(plan))
    with gc_paused():
        parsed = parse_plan(plan, registry, defaults, errors)
    return parsed.tasks, parsed.lines, errors.sorted()


def parse_schedule(path: Path, errors: FileErrors) -> tuple[list[tuple[int, ScheduleEntry]], bytes]:
    """The entries of a schedule file with their lines, and the file's bytes (see
    :func:`load_schedule`); problems go to ``errors``."""
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


def load_schedule(path: Path) -> tuple[list[tuple[int, ScheduleEntry]], list[Problem]]:
    """Read a schedule file: ``([(line, entry), ...], errors)``, without raising.

    Errors (``(file, line, message)``, sorted by line): unreadable file or not a regular
    file, JSON that is not strict (as for a plan line: ``NaN``, a repeated key, nesting past
    :data:`MAX_JSON_DEPTH`), a bad field (``wave`` out of 1..``MAX_WAVE``), a task scheduled
    twice. Whether each task exists is checked by :func:`build_plan`.
    """
    errors = FileErrors(path)
    entries, _ = parse_schedule(Path(path), errors)
    return entries, errors.sorted()
