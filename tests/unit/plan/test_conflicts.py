"""Plan-time conflicts: each type with each resolution that applies to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from buddy.errors import PlanError
from buddy.models import AgentSpec
from buddy.plan.build import build_plan
from buddy.plan.conflicts import resolve
from buddy.plan.model import CampaignPlan
from buddy.plan.policy import APPLICABLE, DEFAULTS, ConflictPolicy, ConflictType, Resolution
from buddy.tools import ToolRegistry, tool

T, R = ConflictType, Resolution


class Args(BaseModel):
    n: int = 0


class Out(BaseModel):
    pass


@pytest.fixture(scope="module")
def reg() -> ToolRegistry:
    r = ToolRegistry()
    tool(
        "t.ok",
        args=Args,
        result=Out,
        idempotent=True,
        reversible=True,
        rollback=lambda a, u, c: None,
        registry=r,
    )(lambda a, c: {})
    tool(
        "t.excl",
        args=Args,
        result=Out,
        exclusive=True,
        reversible=True,
        rollback=lambda a, u, c: None,
        registry=r,
    )(lambda a, c: {})
    tool("t.irr", args=Args, result=Out, registry=r)(lambda a, c: {})  # irreversible
    tool("t.idem", args=Args, result=Out, idempotent=True, registry=r)(lambda a, c: {})  # harmless twice
    return r


def plan_of(tmp_path: Path, reg: ToolRegistry, lines: list[dict[str, Any]], **kw: Any) -> CampaignPlan:
    p = tmp_path / "plan.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return build_plan(p, reg, [AgentSpec(id="a1"), AgentSpec(id="a2")], **kw)


def policy(**kw: str) -> ConflictPolicy:
    return ConflictPolicy.model_validate({"resolutions": kw})


def waves(plan: CampaignPlan) -> dict[int, list[str]]:
    return {n: sorted(pt.task.task_id for pt in pts) for n, pts in plan.waves.items()}


def test_defaults_are_applicable_and_as_documented() -> None:
    assert all(DEFAULTS[t] in APPLICABLE[t] for t in ConflictType)
    assert [DEFAULTS[t] for t in (T.WRITE_WRITE, T.READ_WRITE, T.EXCLUSIVE_TOOL)] == [R.SERIALIZE] * 3
    assert DEFAULTS[T.DEPENDENCY_VIOLATION] is DEFAULTS[T.CAPABILITY_MISMATCH] is R.REJECT


def test_a_resolution_that_does_not_apply_is_refused() -> None:
    with pytest.raises(ValidationError, match="deduplicate does not apply to write_write"):
        policy(write_write="deduplicate")
    with pytest.raises(ValidationError, match="serialize does not apply to capability_mismatch"):
        policy(capability_mismatch="serialize")


WW = [
    {"task_id": "low", "tool": "t.ok", "priority": 10, "resources": ["file:/x"]},
    {"task_id": "high", "tool": "t.ok", "priority": 90, "resources": ["file:/x"]},
    {"task_id": "other", "tool": "t.ok", "resources": ["file:/y"]},
    {"task_id": "after", "tool": "t.ok", "depends_on": ["low"]},
]


def test_write_write_serialize_splits_the_wave_higher_priority_first(
    tmp_path: Path, reg: ToolRegistry
) -> None:
    plan = plan_of(tmp_path, reg, WW)
    report = resolve(plan, reg, policy())
    assert waves(plan) == {1: ["high", "other"], 2: ["low"], 3: ["after"]}
    (c,) = report.conflicts
    assert c.type is T.WRITE_WRITE and c.resolution is R.SERIALIZE and c.subject == "file:/x"
    assert c.moved == {"low": 2, "high": 1}
    assert report.wave_renumbering == {1: [1, 2], 2: [3]}
    assert plan.tasks["after"].wave == 3  # dependents stay after


def test_write_write_priority_keeps_the_highest(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(tmp_path, reg, WW)
    report = resolve(plan, reg, policy(write_write="priority"))
    assert plan.skip == {"low": "write_write on file:/x: a higher-priority task kept it"}
    assert report.conflicts[0].kept == "high" and report.conflicts[0].skipped == ["low"]
    assert waves(plan) == {1: ["high", "low", "other"], 2: ["after"]}  # skipped stays, as an outcome


def test_write_write_reject(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(tmp_path, reg, WW)
    with pytest.raises(PlanError, match="write_write in wave 1 on file:/x: low, high"):
        resolve(plan, reg, policy(write_write="reject"))


RW = [
    {"task_id": "r1", "tool": "t.ok", "resources": [{"name": "db", "mode": "read"}]},
    {"task_id": "r2", "tool": "t.ok", "resources": [{"name": "db", "mode": "read"}]},
    {"task_id": "w", "tool": "t.ok", "priority": 80, "resources": [{"name": "db", "mode": "write"}]},
]


def test_read_write_serialize_lets_readers_share(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(tmp_path, reg, RW)
    report = resolve(plan, reg, policy())
    assert waves(plan) == {1: ["w"], 2: ["r1", "r2"]}
    assert [c.type for c in report.conflicts] == [T.READ_WRITE]


def test_readers_that_write_other_resources_still_share(tmp_path: Path, reg: ToolRegistry) -> None:
    # each reader of db also writes its own file: that is no reason to keep the readers apart
    lines = [
        {**r, "resources": [*r["resources"], f"file:/out/{r['task_id']}"]} if r["task_id"] != "w" else r
        for r in RW
    ]
    plan = plan_of(tmp_path, reg, lines)
    resolve(plan, reg, policy())
    assert waves(plan) == {1: ["w"], 2: ["r1", "r2"]}


def test_read_write_priority_and_reject(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(tmp_path, reg, RW)
    resolve(plan, reg, policy(read_write="priority"))
    assert set(plan.skip) == {"r1", "r2"}
    with pytest.raises(PlanError, match="read_write"):
        resolve(plan_of(tmp_path, reg, RW), reg, policy(read_write="reject"))


EXCL = [{"task_id": f"e{i}", "tool": "t.excl", "args": {"n": i}, "priority": 10 * i} for i in range(3)]


def test_exclusive_tool_each_resolution(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(tmp_path, reg, EXCL)
    resolve(plan, reg, policy())
    assert waves(plan) == {1: ["e2"], 2: ["e1"], 3: ["e0"]}
    plan = plan_of(tmp_path, reg, EXCL)
    report = resolve(plan, reg, policy(exclusive_tool="priority"))
    assert report.conflicts[0].kept == "e2" and set(plan.skip) == {"e0", "e1"}
    with pytest.raises(PlanError, match="exclusive_tool"):
        resolve(plan_of(tmp_path, reg, EXCL), reg, policy(exclusive_tool="reject"))


DUP = [
    {"task_id": "once", "tool": "t.irr", "args": {"n": 1}, "priority": 20},
    {"task_id": "twice", "tool": "t.irr", "args": {"n": 1}, "priority": 70},
    {"task_id": "fine", "tool": "t.irr", "args": {"n": 2}},
    {"task_id": "rev", "tool": "t.ok", "args": {"n": 1}},
    {"task_id": "rev2", "tool": "t.ok", "args": {"n": 1}},  # reversible: not a conflict
    {"task_id": "idem", "tool": "t.idem", "args": {"n": 1}},
    {"task_id": "idem2", "tool": "t.idem", "args": {"n": 1}},  # idempotent: not a conflict
]


def test_duplicate_irreversible_each_resolution(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(tmp_path, reg, DUP)
    report = resolve(plan, reg, policy())
    assert plan.reuse == {"twice": "once"} and report.conflicts[0].reused_from == "once"
    plan = plan_of(tmp_path, reg, DUP)
    resolve(plan, reg, policy(duplicate_irreversible="priority"))
    assert list(plan.skip) == ["once"]
    with pytest.raises(PlanError, match="duplicate_irreversible: once, twice"):
        resolve(plan_of(tmp_path, reg, DUP), reg, policy(duplicate_irreversible="reject"))


DEP = [
    {"task_id": "first", "tool": "t.ok", "wave": 2},
    {"task_id": "second", "tool": "t.ok", "depends_on": ["first"], "wave": 1},
]


def test_dependency_violation_reject_and_serialize(tmp_path: Path, reg: ToolRegistry) -> None:
    with pytest.raises(PlanError, match="explicit wave 1 is not after wave 2"):
        plan_of(tmp_path, reg, DEP)
    plan = plan_of(tmp_path, reg, DEP, unpin_violations=True)
    report = resolve(plan, reg, policy(dependency_violation="serialize"))
    assert plan.tasks["second"].wave == 3 and plan.tasks["first"].wave == 2
    (c,) = report.conflicts
    assert c.type is T.DEPENDENCY_VIOLATION and c.tasks == ["second", "first"]


def test_capability_mismatch_is_rejected(tmp_path: Path, reg: ToolRegistry) -> None:
    p = tmp_path / "plan.jsonl"
    p.write_text(json.dumps({"task_id": "t", "tool": "t.irr", "agent": "a1"}) + "\n")
    with pytest.raises(PlanError, match=r"does not offer tool 't\.irr'"):
        build_plan(p, reg, [AgentSpec(id="a1", tools=["t.ok"]), AgentSpec(id="a2")])


def test_no_conflicts_keep_wave_numbers(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = plan_of(
        tmp_path, reg, [{"task_id": "a", "tool": "t.ok", "wave": 3}, {"task_id": "b", "tool": "t.ok"}]
    )
    report = resolve(plan, reg, policy())
    assert report.conflicts == [] and waves(plan) == {1: ["b"], 3: ["a"]}
