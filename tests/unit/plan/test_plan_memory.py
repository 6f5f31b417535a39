"""A plan given in memory (dicts or pydantic models) is checked and built as a plan file is."""

from __future__ import annotations

import hashlib
import json
import pickle
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from buddy.config import TaskDefaults
from buddy.errors import PlanError
from buddy.models import PlanTask, ResourceClaim
from buddy.plan.build import build_plan
from buddy.plan.load import load_plan
from buddy.plan.model import MEMORY_SOURCE
from buddy.tools import ToolRegistry
from tests.unit.plan.test_plan import AGENTS, make_registry, t, write_lines


@pytest.fixture
def reg() -> ToolRegistry:
    return make_registry()


def problems(tasks: Any, reg: ToolRegistry, **kw: Any) -> list[tuple[str, int, str]]:
    with pytest.raises(PlanError) as info:
        build_plan(tasks, reg, AGENTS, **kw)
    return info.value.errors


def test_dicts_build_the_same_plan_as_the_file(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [
        t("a", "t.write", args={"path": "x"}),
        t("b", depends_on=["a"], priority=90),
        t("c", "t.sleep", args={"seconds": 2}, wave=3, agent="a2"),
    ]
    from_file = build_plan(write_lines(tmp_path / "p.jsonl", lines), reg, AGENTS, workdir=tmp_path)
    in_memory = build_plan(lines, reg, AGENTS, workdir=tmp_path)
    assert in_memory.path == Path("<tasks>") == Path(MEMORY_SOURCE)
    assert in_memory.tasks == from_file.tasks
    assert in_memory.waves == from_file.waves
    canonical = b"".join(json.dumps(x, sort_keys=True, separators=(",", ":")).encode() + b"\n" for x in lines)
    assert in_memory.digest == hashlib.sha256(canonical).hexdigest()
    assert build_plan(iter(lines), reg, AGENTS, workdir=tmp_path).digest == in_memory.digest


def test_models_take_the_defaults_for_the_fields_they_leave_out(reg: ToolRegistry) -> None:
    defaults = TaskDefaults(priority=70, confidence=0.8)
    tasks = [
        PlanTask(task_id="a", tool="noop"),
        PlanTask(task_id="b", tool="noop", priority=10, depends_on=["a"], resources=["r"]),
    ]
    plan = build_plan(tasks, reg, AGENTS, defaults=defaults)
    a, b = plan.tasks["a"], plan.tasks["b"]
    assert (a.task.priority, a.task.confidence, a.line) == (70, 0.8, 1)
    assert (b.task.priority, b.task.confidence, b.line, b.wave) == (10, 0.8, 2, 2)
    assert b.claims == [ResourceClaim(name="r", mode="write")]


def test_other_models_with_the_plan_fields_are_read(reg: ToolRegistry) -> None:
    class Line(BaseModel):
        task_id: str
        tool: str = "noop"
        wave: int | None = None

    plan = build_plan([Line(task_id="a"), Line(task_id="b", wave=2)], reg, AGENTS)
    assert {tid: pt.wave for tid, pt in plan.tasks.items()} == {"a": 1, "b": 2}


def test_every_check_names_tasks_and_the_index(reg: ToolRegistry) -> None:
    tasks = [
        t("a", "nope"),
        t("b", "t.sleep", args={"seconds": -1}),
        t("a"),
        t("c", depends_on=["ghost"]),
        t("d", depends_on=["e"]),
        t("e", depends_on=["d"]),
        t("f", priority=1000),
    ]
    found = problems(tasks, reg)
    assert [(s, n) for s, n, _ in found] == [("<tasks>", n) for n in (1, 2, 3, 4, 5, 7)]
    assert found[0][2].startswith("unknown tool 'nope'; known tools: ")
    assert found[1][2].startswith("args.seconds: ")
    assert found[2][2] == "duplicate task_id 'a' (first defined on line 1)"
    assert found[3][2] == "task 'c' depends on unknown task 'ghost'"
    assert found[4][2] == "dependency cycle: d -> e -> d"
    assert found[5][2].startswith("priority: ")


def test_wave_pins_are_checked(reg: ToolRegistry) -> None:
    found = problems([t("a", wave=2), t("b", depends_on=["a"], wave=2)], reg)
    assert found == [("<tasks>", 2, "task 'b': explicit wave 2 is not after wave 2 of its dependency 'a'")]


def test_items_that_are_not_json_are_errors(reg: ToolRegistry) -> None:
    found = problems(
        [
            t("a", args={"when": datetime(2024, 1, 1)}),
            t("b", confidence=float("nan")),
            "not a task",
            t("c"),
        ],
        reg,
    )
    assert [(s, n) for s, n, _ in found] == [("<tasks>", 1), ("<tasks>", 2), ("<tasks>", 3)]
    assert found[0][2].startswith("cannot be written as JSON: ")
    assert "NaN and Infinity are not JSON numbers" in found[1][2]
    assert found[2][2] == "expected a dict or a pydantic model, got str"


def test_an_empty_iterable_has_no_tasks(reg: ToolRegistry) -> None:
    with pytest.raises(PlanError) as info:
        build_plan([], reg, AGENTS)
    err = info.value
    assert err.errors == [("<tasks>", 0, "plan has no tasks")]
    assert str(err) == "<tasks>: plan has no tasks"
    assert pickle.loads(pickle.dumps(err)).errors == err.errors


def test_load_plan_reads_memory_too(reg: ToolRegistry) -> None:
    tasks, lines, errors = load_plan([t("a"), {"task_id": "b"}, t("c")], reg)
    assert [x.task_id for x in tasks] == ["a", "c"]
    assert lines == {"a": 1, "c": 3}
    assert errors == [("<tasks>", 2, "missing required field 'tool'")]
