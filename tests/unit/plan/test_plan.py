"""Plan loading, validation, waves and assignment (buddy.plan).

Every test builds its own small :class:`ToolRegistry` so it does not depend on the built-in
tools: ``noop`` (no args), ``t.read`` (``path``; claims ``file:<path>`` for reading),
``t.sleep`` (``seconds``; expected duration = seconds) and ``t.write`` (``path``; claims
``file:<path>`` for writing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

from buddy.config import TaskDefaults
from buddy.errors import MAX_ERRORS, PlanError
from buddy.models import AgentSpec, ResourceClaim, Strategy
from buddy.plan.build import build_plan
from buddy.plan.load import load_plan, load_schedule
from buddy.plan.model import CampaignPlan, PlannedTask, assign_wave, summary_table
from buddy.tools import ToolRegistry, file_claim, tool

# -- fixtures ---------------------------------------------------------------------------------


class NoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str


class SleepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(ge=0)


class Empty(BaseModel):
    pass


def _run(args: Any, ctx: Any) -> dict[str, Any]:
    return {}


def make_registry() -> ToolRegistry:
    reg = ToolRegistry()
    tool("noop", args=NoArgs, result=Empty, registry=reg)(_run)
    tool(
        "t.read",
        args=PathArgs,
        result=Empty,
        registry=reg,
        resources=lambda a, wd: [file_claim(wd / a.path, "read")],
    )(_run)
    tool(
        "t.write",
        args=PathArgs,
        result=Empty,
        registry=reg,
        resources=lambda a, wd: [file_claim(wd / a.path, "write")],
    )(_run)
    tool("t.sleep", args=SleepArgs, result=Empty, registry=reg, expected_duration=lambda a: a.seconds)(_run)
    return reg


@pytest.fixture
def reg() -> ToolRegistry:
    return make_registry()


AGENTS = [AgentSpec(id="a1"), AgentSpec(id="a2"), AgentSpec(id="a3")]


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write ``lines`` (dicts as JSON, strings as they are) one per line."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def t(task_id: str, tool_name: str = "noop", **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "tool": tool_name, **fields}


def build(tmp_path: Path, lines: list[Any], reg: ToolRegistry, **kw: Any) -> CampaignPlan:
    plan = write_lines(tmp_path / "plan.jsonl", lines)
    kw.setdefault("workdir", tmp_path)
    agents = kw.pop("agents", AGENTS)
    strategy = kw.pop("strategy", Strategy.ROUND_ROBIN)
    return build_plan(plan, reg, agents, strategy, **kw)


def errors_of(tmp_path: Path, lines: list[Any], reg: ToolRegistry, **kw: Any) -> list[str]:
    with pytest.raises(PlanError) as info:
        build(tmp_path, lines, reg, **kw)
    assert str(info.value) == "\n".join(info.value.lines())
    return info.value.lines()


def one_error(tmp_path: Path, lines: list[Any], reg: ToolRegistry, **kw: Any) -> str:
    errs = errors_of(tmp_path, lines, reg, **kw)
    assert len(errs) == 1, errs
    return errs[0]


def by_agent(plan: CampaignPlan, wave: int = 1) -> dict[str, list[str]]:
    """Agent id → task ids of a wave, in dispatch order."""
    out: dict[str, list[str]] = {}
    for pt in plan.waves[wave]:
        out.setdefault(pt.agent, []).append(pt.task.task_id)
    return out


# -- a valid plan -----------------------------------------------------------------------------


def test_a_valid_plan_builds(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(
        tmp_path,
        [t("a", "t.read", args={"path": "x.txt"}), t("b", depends_on=["a"]), t("c")],
        reg,
    )
    assert list(plan.tasks) == ["a", "b", "c"]
    assert plan.wave_numbers() == [1, 2]
    assert [pt.task.task_id for pt in plan.waves[1]] == ["a", "c"]
    a = plan.tasks["a"]
    assert isinstance(a, PlannedTask)
    assert (a.line, a.wave, a.pinned) == (1, 1, False)
    assert a.task.priority == 50 and a.task.confidence == 0.5 and a.task.trigger_rule == "all_success"
    assert plan.path == tmp_path / "plan.jsonl"
    assert plan.dependents() == {"a": ["b"], "b": [], "c": []}
    # the same objects in tasks and waves
    assert all(plan.tasks[pt.task.task_id] is pt for w in plan.waves.values() for pt in w)


def test_blank_and_comment_lines_are_ignored_and_lines_still_count(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = ["# a comment", "", t("a"), "   ", "  # indented comment", t("b", priority=500)]
    err = one_error(tmp_path, lines, reg)
    assert err.startswith(f"{tmp_path / 'plan.jsonl'}:6: priority:")
    plan = build(tmp_path, [*lines[:-1], t("b")], reg)
    assert plan.tasks["a"].line == 3
    assert plan.tasks["b"].line == 6


def test_a_byte_order_mark_is_ignored(tmp_path: Path, reg: ToolRegistry) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(t("a")).encode() + b"\n")
    assert list(build_plan(path, reg, AGENTS).tasks) == ["a"]


def test_load_plan_does_not_raise(tmp_path: Path, reg: ToolRegistry) -> None:
    path = write_lines(tmp_path / "p.jsonl", [t("a"), "{nope", t("b", "t.read"), t("c")])
    tasks, lines, errors = load_plan(path, reg)
    assert [x.task_id for x in tasks] == ["a", "b", "c"]
    assert lines == {"a": 1, "b": 3, "c": 4}
    assert [(s, n) for s, n, _ in errors] == [(str(path), 2), (str(path), 3)]


def test_defaults_fill_only_omitted_fields(tmp_path: Path, reg: ToolRegistry) -> None:
    defaults = TaskDefaults(priority=70, predicted_success=0.9, confidence=0.8)
    plan = build(tmp_path, [t("a"), t("b", priority=10, confidence=0.1)], reg, defaults=defaults)
    a, b = plan.tasks["a"].task, plan.tasks["b"].task
    assert (a.priority, a.predicted_success, a.confidence) == (70, 0.9, 0.8)
    assert (b.priority, b.predicted_success, b.confidence) == (10, 0.9, 0.1)


def test_claims_merge_plan_resources_and_tool_claims(tmp_path: Path, reg: ToolRegistry) -> None:
    target = f"file:{(tmp_path / 'x.txt').resolve()}"
    plan = build(
        tmp_path,
        [
            t("a", "t.read", args={"path": "x.txt"}, resources=["db", {"name": target, "mode": "write"}]),
            t("b", "t.write", args={"path": "x.txt"}, resources=[{"name": target, "mode": "read"}]),
            t("c", resources=[{"name": "db", "mode": "read"}, "db"]),
        ],
        reg,
    )
    assert plan.tasks["a"].claims == [ResourceClaim(name="db"), ResourceClaim(name=target, mode="write")]
    assert plan.tasks["b"].claims == [ResourceClaim(name=target, mode="write")]
    assert plan.tasks["c"].claims == [ResourceClaim(name="db", mode="write")]


def test_digest_follows_the_file_bytes(tmp_path: Path, reg: ToolRegistry) -> None:
    first = build(tmp_path, [t("a")], reg).digest
    assert first == build(tmp_path, [t("a")], reg).digest
    assert len(first) == 64 and int(first, 16) >= 0
    assert build(tmp_path, [t("a", priority=51)], reg).digest != first
    schedule = write_lines(tmp_path / "s.jsonl", [{"task_id": "a", "agent": "a2"}])
    with_schedule = build(tmp_path, [t("a")], reg, schedule_path=schedule).digest
    assert with_schedule != first


def test_summary_table(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(tmp_path, [t("a"), t("b"), t("c"), t("d", depends_on=["a"])], reg)
    assert summary_table(plan) == [
        ["wave", "a1", "a2", "a3", "total"],
        ["1", "1", "1", "1", "3"],
        ["2", "1", "0", "0", "1"],
        ["total", "2", "1", "1", "4"],
    ]


# -- one test per validation error ----------------------------------------------------------


def test_error_not_json(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), '{"task_id": "b", "tool": ', t("c")], reg)
    assert err.startswith(f"{tmp_path / 'plan.jsonl'}:2: not valid JSON")


def test_error_not_an_object(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), "[1, 2]"], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: expected a JSON object, got an array"


def test_error_missing_field(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), {"task_id": "b"}], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: missing required field 'tool'"
    err = one_error(tmp_path, [{"tool": "noop"}], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:1: missing required field 'task_id'"


def test_error_ill_typed_field(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(tmp_path, [t("a", priority="high"), t("b", depends_on="a"), t("c", wave=1.5)], reg)
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in errs] == ["1", "2", "3"]
    assert ": priority: Input should be a valid integer" in errs[0]
    assert ": depends_on: Input should be a valid list" in errs[1]
    assert ": wave: " in errs[2]


def test_error_bad_task_id(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("has space")], reg)
    assert err.startswith(f"{tmp_path / 'plan.jsonl'}:1: task_id: task_id must be 1-128 characters")
    err = one_error(tmp_path, [t("x" * 129)], reg)
    assert ":1: task_id: " in err


def test_error_out_of_range(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [t("a", priority=101), t("b", confidence=1.5), t("c", predicted_success=-0.1), t("d", wave=0)]
    errs = errors_of(tmp_path, lines, reg)
    assert len(errs) == 4
    assert errs[0].endswith(":1: priority: Input should be less than or equal to 100 (got 101)")
    assert ":2: confidence: Input should be less than or equal to 1" in errs[1]
    assert ":3: predicted_success: Input should be greater than or equal to 0" in errs[2]
    assert ":4: wave: Input should be greater than or equal to 1" in errs[3]


def test_error_bad_resource_and_trigger_rule(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(
        tmp_path, [t("a", resources=[{"name": "db", "mode": "rw"}]), t("b", trigger_rule="any")], reg
    )
    assert ":1: resources.0.mode: Input should be 'read' or 'write'" in errs[0]
    assert ":2: trigger_rule: " in errs[1]


def test_error_unknown_field(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a", foo=1)], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:1: unknown field 'foo'"


def test_error_duplicate_task_id(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("x"), t("y"), t("x")], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:3: duplicate task_id 'x' (first defined on line 1)"


def test_a_duplicate_line_still_gets_its_tool_and_args_checked(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(tmp_path, [t("x"), t("x", "nope"), t("x", "t.read", priority=-1)], reg)
    plan = tmp_path / "plan.jsonl"
    assert errs[0] == f"{plan}:2: duplicate task_id 'x' (first defined on line 1)"
    assert errs[1].startswith(f"{plan}:2: unknown tool 'nope'")
    assert errs[2].startswith(f"{plan}:3: priority: ")
    assert errs[3] == f"{plan}:3: duplicate task_id 'x' (first defined on line 1)"
    assert errs[4] == f"{plan}:3: args.path: Field required"
    assert len(errs) == 5


def test_error_duplicate_of_an_invalid_line(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(tmp_path, [t("x", priority=-1), t("x")], reg)
    assert ":1: priority" in errs[0]
    assert errs[1].endswith(":2: duplicate task_id 'x' (first defined on line 1)")


def test_error_unknown_tool_lists_the_known_ones(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), t("b", "nope")], reg)
    assert err == (
        f"{tmp_path / 'plan.jsonl'}:2: unknown tool 'nope'; known tools: noop, t.read, t.sleep, t.write"
    )


def test_error_args_fail_the_tool_schema(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(
        tmp_path,
        [t("a", "t.read"), t("b", "t.sleep", args={"seconds": -1}), t("c", "noop", args={"x": 1})],
        reg,
    )
    assert errs[0] == f"{tmp_path / 'plan.jsonl'}:1: args.path: Field required"
    assert errs[1].startswith(f"{tmp_path / 'plan.jsonl'}:2: args.seconds: Input should be greater than")
    assert errs[2].startswith(f"{tmp_path / 'plan.jsonl'}:3: args.x: Extra inputs are not permitted")


def test_unknown_tool_does_not_stop_the_other_field_checks(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(tmp_path, [t("a", "nope", priority=300, bar=1)], reg)
    text = "\n".join(errs)
    assert all(e.split(": ")[0].endswith(":1") for e in errs)
    assert "priority" in text and "unknown field 'bar'" in text and "unknown tool 'nope'" in text


def test_bad_fields_do_not_stop_the_args_check(tmp_path: Path, reg: ToolRegistry) -> None:
    errs = errors_of(tmp_path, [t("a", "t.read", priority=300)], reg)
    assert len(errs) == 2
    assert ":1: priority" in errs[0] and errs[1].endswith(":1: args.path: Field required")


def test_error_depends_on_unknown_task(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), t("b", depends_on=["a", "zz"])], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: task 'b' depends on unknown task 'zz'"


def test_dependency_on_an_invalid_line_is_not_blamed_twice(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a", priority=1000), t("b", depends_on=["a"])], reg)
    assert ":1: priority" in err


def test_error_depends_on_itself(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), t("b", depends_on=["b"])], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: task 'b' depends on itself"


def test_error_dependency_cycle(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [
        t("x"),
        t("a", depends_on=["b"]),
        t("b", depends_on=["c", "x"]),
        t("c", depends_on=["a"]),
        t("after", depends_on=["c"]),  # behind the cycle: not an error of its own
    ]
    err = one_error(tmp_path, lines, reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: dependency cycle: a -> b -> c -> a"


def test_two_cycles_are_both_reported(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [
        t("a", depends_on=["b"]),
        t("b", depends_on=["a"]),
        t("c", depends_on=["d"]),
        t("d", depends_on=["c"]),
    ]
    errs = errors_of(tmp_path, lines, reg)
    assert [e.split(": ", 1)[1] for e in errs] == [
        "dependency cycle: a -> b -> a",
        "dependency cycle: c -> d -> c",
    ]
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in errs] == ["1", "3"]


def test_error_explicit_wave_not_after_its_dependency(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [t("a"), t("b", depends_on=["a"]), t("c", depends_on=["b", "a"], wave=2)]
    err = one_error(tmp_path, lines, reg)
    assert err == (
        f"{tmp_path / 'plan.jsonl'}:3: task 'c': explicit wave 2 is not after wave 2 of its dependency 'b'"
    )
    # the same with forward references (the Kahn path)
    err = one_error(tmp_path, lines[::-1], reg)
    assert err == (
        f"{tmp_path / 'plan.jsonl'}:1: task 'c': explicit wave 2 is not after wave 2 of its dependency 'b'"
    )


def test_error_pinned_agent_does_not_exist(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a"), t("b", agent="zz")], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: task 'b': agent 'zz' does not exist; agents: a1, a2, a3"


def test_error_pinned_agent_does_not_offer_the_tool(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [AgentSpec(id="a1", tools=["noop", "t.read"]), AgentSpec(id="a2")]
    err = one_error(tmp_path, [t("a", "t.sleep", args={"seconds": 1}, agent="a1")], reg, agents=agents)
    assert err == (
        f"{tmp_path / 'plan.jsonl'}:1: task 'a': agent 'a1' does not offer tool 't.sleep'; "
        "it offers: noop, t.read"
    )


def test_error_no_agent_offers_the_tool(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [AgentSpec(id="a1", tools=["noop"]), AgentSpec(id="a2", tools=["t.read"])]
    lines = [t("a"), t("b", "t.sleep", args={"seconds": 1}), t("c", "t.sleep", args={"seconds": 2})]
    err = one_error(tmp_path, lines, reg, agents=agents)
    assert err.startswith(f"{tmp_path / 'plan.jsonl'}:2: no agent offers tool 't.sleep', needed by task 'b'")
    assert "(and 1 more task)" in err and "a1 offers noop; a2 offers t.read" in err


def test_error_empty_plan(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, ["# only a comment", ""], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}: plan has no tasks"


def test_error_missing_file(tmp_path: Path, reg: ToolRegistry) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(PlanError) as info:
        build_plan(missing, reg, AGENTS)
    assert info.value.errors == [(str(missing), 0, "cannot read plan: No such file or directory")]
    assert str(info.value) == f"{missing}: cannot read plan: No such file or directory"


def test_error_no_agents(tmp_path: Path, reg: ToolRegistry) -> None:
    err = one_error(tmp_path, [t("a")], reg, agents=[])
    assert err == f"{tmp_path / 'plan.jsonl'}: no agents to run the plan"


def test_error_tool_that_fails_on_its_args(tmp_path: Path, reg: ToolRegistry) -> None:
    def boom(args: Any, workdir: Path) -> list[ResourceClaim]:
        raise RuntimeError("kaput")

    tool("t.boom", args=NoArgs, result=Empty, registry=reg, resources=boom)(_run)
    err = one_error(tmp_path, [t("a"), t("b", "t.boom")], reg)
    assert err == f"{tmp_path / 'plan.jsonl'}:2: tool 't.boom' failed on these args: RuntimeError: kaput"


# -- schedule errors --------------------------------------------------------------------------


def test_schedule_errors(tmp_path: Path, reg: ToolRegistry) -> None:
    schedule = write_lines(
        tmp_path / "sched.jsonl",
        [
            {"task_id": "a", "agent": "a2"},
            "# comment",
            {"task_id": "zz", "agent": "a1"},
            "not json",
            {"task_id": "a", "wave": 3},
            {"task_id": "b", "agnt": "a1"},
            {"task_id": "b", "wave": 0},
        ],
    )
    errs = errors_of(tmp_path, [t("a"), t("b")], reg, schedule_path=schedule)
    plan = tmp_path / "plan.jsonl"
    assert errs == [
        f"{schedule}:3: unknown task_id 'zz' (not in {plan})",
        f"{schedule}:4: not valid JSON: " + errs[1].split(": not valid JSON: ")[1],
        f"{schedule}:5: task 'a' is already scheduled on line 1",
        f"{schedule}:6: unknown field 'agnt'",
        f"{schedule}:7: wave: Input should be greater than or equal to 1 (got 0)",
    ]


def test_load_schedule(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "s.jsonl", ["", {"task_id": "a", "agent": "a1"}, {"task_id": "b", "wave": 2}]
    )
    entries, errors = load_schedule(path)
    assert errors == []
    assert [(line, e.task_id, e.agent, e.wave) for line, e in entries] == [
        (2, "a", "a1", None),
        (3, "b", None, 2),
    ]
    entries, errors = load_schedule(tmp_path / "missing.jsonl")
    assert entries == [] and errors == [
        (str(tmp_path / "missing.jsonl"), 0, "cannot read schedule: No such file or directory")
    ]


def test_schedule_pins_agent_and_wave_over_the_plan_line(tmp_path: Path, reg: ToolRegistry) -> None:
    schedule = write_lines(
        tmp_path / "s.jsonl",
        [
            {"task_id": "a", "agent": "a3"},
            {"task_id": "b", "wave": 4},
            {"task_id": "c", "agent": "a2", "wave": 2},
        ],
    )
    lines = [t("a", agent="a1", wave=1), t("b", agent="a1"), t("c"), t("d")]
    plan = build(tmp_path, lines, reg, schedule_path=schedule)
    got = {tid: (pt.agent, pt.wave, pt.pinned) for tid, pt in plan.tasks.items()}
    assert got == {"a": ("a3", 1, True), "b": ("a1", 4, True), "c": ("a2", 2, True), "d": ("a1", 1, False)}
    assert plan.schedule_path == schedule


def test_schedule_wave_conflict_is_reported_at_the_schedule_line(tmp_path: Path, reg: ToolRegistry) -> None:
    schedule = write_lines(tmp_path / "s.jsonl", [{"task_id": "a", "wave": 3}, {"task_id": "b", "wave": 3}])
    err = one_error(tmp_path, [t("a"), t("b", depends_on=["a"])], reg, schedule_path=schedule)
    assert err == f"{schedule}:2: task 'b': explicit wave 3 is not after wave 3 of its dependency 'a'"


def test_schedule_agent_that_does_not_exist(tmp_path: Path, reg: ToolRegistry) -> None:
    schedule = write_lines(tmp_path / "s.jsonl", [{"task_id": "a", "agent": "zz"}])
    err = one_error(tmp_path, [t("a")], reg, schedule_path=schedule)
    assert err == f"{schedule}:1: task 'a': agent 'zz' does not exist; agents: a1, a2, a3"


# -- all together -----------------------------------------------------------------------------


def test_all_errors_are_reported_together_in_line_order(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [
        t("a", depends_on=["c"]),  # 1: cycle a -> c -> a
        "oops",  # 2
        t("b", "nope"),  # 3
        t("c", depends_on=["a"]),  # 4
        t("d", priority=-5),  # 5
        t("a"),  # 6 duplicate
        t("e", agent="zz", depends_on=["ghost"]),  # 7: two errors
    ]
    errs = errors_of(tmp_path, lines, reg)
    prefix = f"{tmp_path / 'plan.jsonl'}:"
    assert [e.removeprefix(prefix).split(":")[0] for e in errs] == ["1", "2", "3", "5", "6", "7", "7"]
    text = "\n".join(errs)
    for words in (
        "dependency cycle: a -> c -> a",
        "not valid JSON",
        "unknown tool 'nope'",
        "priority",
        "duplicate task_id 'a'",
        "agent 'zz' does not exist",
        "unknown task 'ghost'",
    ):
        assert words in text


def test_errors_are_capped_at_fifty(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [t(f"t{i}", priority=1000) for i in range(MAX_ERRORS + 12)]
    errs = errors_of(tmp_path, lines, reg)
    assert MAX_ERRORS == 50
    assert len(errs) == 51
    assert errs[0].startswith(f"{tmp_path / 'plan.jsonl'}:1: ")
    assert errs[49].startswith(f"{tmp_path / 'plan.jsonl'}:50: ")
    assert errs[-1] == "… and 12 more errors"


# -- waves ------------------------------------------------------------------------------------


def waves_of(plan: CampaignPlan) -> dict[str, int]:
    return {tid: pt.wave for tid, pt in plan.tasks.items()}


def test_waves_diamond(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [
        t("a"),
        t("b", depends_on=["a"]),
        t("c", depends_on=["a"]),
        t("d", depends_on=["b", "c"]),
        t("e"),
    ]
    plan = build(tmp_path, lines, reg)
    assert waves_of(plan) == {"a": 1, "b": 2, "c": 2, "d": 3, "e": 1}
    assert {n: [pt.task.task_id for pt in w] for n, w in plan.waves.items()} == {
        1: ["a", "e"],
        2: ["b", "c"],
        3: ["d"],
    }


def test_waves_with_forward_references(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [t("d", depends_on=["b", "c"]), t("c", depends_on=["a"]), t("b", depends_on=["a", "a"]), t("a")]
    plan = build(tmp_path, lines, reg)
    assert waves_of(plan) == {"d": 3, "c": 2, "b": 2, "a": 1}
    assert list(plan.tasks) == ["d", "c", "b", "a"]  # plan order kept
    assert plan.dependents() == {"d": [], "c": ["d"], "b": ["d"], "a": ["c", "b"]}


def test_explicit_waves_are_kept(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [t("a", wave=3), t("b", depends_on=["a"]), t("c", wave=2), t("d", depends_on=["c"], wave=7)]
    plan = build(tmp_path, lines, reg)
    assert waves_of(plan) == {"a": 3, "b": 4, "c": 2, "d": 7}
    assert plan.wave_numbers() == [2, 3, 4, 7]


# -- strategies -------------------------------------------------------------------------------


def test_round_robin(tmp_path: Path, reg: ToolRegistry) -> None:
    lines = [t("t1"), t("t2"), t("p", agent="a3"), t("t3"), t("t4"), t("t5")]
    plan = build(tmp_path, lines, reg)
    # the pinned task keeps a3 and does not move the cursor; dispatch is plan order
    assert [(pt.task.task_id, pt.agent) for pt in plan.waves[1]] == [
        ("t1", "a1"),
        ("t2", "a2"),
        ("p", "a3"),
        ("t3", "a3"),
        ("t4", "a1"),
        ("t5", "a2"),
    ]


def test_round_robin_respects_eligibility_and_restarts_each_wave(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [AgentSpec(id="a1"), AgentSpec(id="a2", tools=["noop"]), AgentSpec(id="a3")]
    sleep = {"seconds": 1}
    lines = [
        t("s1", "t.sleep", args=sleep),
        t("n1"),
        t("s2", "t.sleep", args=sleep),
        t("n2"),
        t("w2", depends_on=["n1"]),
    ]
    plan = build(tmp_path, lines, reg, agents=agents)
    # s1 -> a1; n1 -> a2; s2: cursor at a3 -> a3; n2: cursor at a1 -> a1
    assert by_agent(plan, 1) == {"a1": ["s1", "n2"], "a2": ["n1"], "a3": ["s2"]}
    assert by_agent(plan, 2) == {"a1": ["w2"]}


def test_load_balanced(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [AgentSpec(id="a1", concurrency=1), AgentSpec(id="a2", concurrency=2)]

    def sleep(task_id: str, seconds: float, **kw: Any) -> dict[str, Any]:
        return t(task_id, "t.sleep", args={"seconds": seconds}, **kw)

    lines = [sleep("p", 4, agent="a1"), sleep("t1", 6), sleep("t2", 2), sleep("t3", 2), t("t4")]
    plan = build(tmp_path, lines, reg, agents=agents, strategy=Strategy.LOAD_BALANCED)
    # loads (seconds / concurrency): a1 4 (pinned p); t1 6 -> a2 (3); t2 2 -> a2 (4);
    # t3 2 -> tie 4/4 -> a1 (6); t4 unknown = 1 -> a2 (4.5). Dispatch: longest first.
    assert [(pt.task.task_id, pt.agent) for pt in plan.waves[1]] == [
        ("t1", "a2"),
        ("p", "a1"),
        ("t2", "a2"),
        ("t3", "a1"),
        ("t4", "a2"),
    ]
    assert plan.tasks["t1"].expected_s == 6.0 and plan.tasks["t4"].expected_s is None


def test_load_balanced_without_durations_balances_counts(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(tmp_path, [t(f"t{i}") for i in range(7)], reg, strategy=Strategy.LOAD_BALANCED)
    assert by_agent(plan) == {"a1": ["t0", "t3", "t6"], "a2": ["t1", "t4"], "a3": ["t2", "t5"]}


def test_priority(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [AgentSpec(id="a1", concurrency=1), AgentSpec(id="a2", concurrency=1)]
    lines = [
        t("x", priority=10),
        t("y", priority=90),
        t("z", priority=50),
        t("w", priority=90),
        t("v", priority=10, agent="a2"),
    ]
    plan = build(tmp_path, lines, reg, agents=agents, strategy=Strategy.PRIORITY)
    # v pinned: a2 = 1. y -> a1 (0 < 1); w: tie 1/1 -> a1; z -> a2 (1 < 2); x: tie 2/2 -> a1
    assert [pt.task.task_id for pt in plan.waves[1]] == ["y", "w", "z", "x", "v"]
    assert by_agent(plan) == {"a1": ["y", "w", "x"], "a2": ["z", "v"]}


def test_priority_uses_concurrency_and_eligibility(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [
        AgentSpec(id="a1", concurrency=1),
        AgentSpec(id="a2", concurrency=3),
        AgentSpec(id="a3", tools=["t.read"]),
    ]
    plan = build(
        tmp_path,
        [t(f"t{i}", priority=100 - i) for i in range(6)],
        reg,
        agents=agents,
        strategy=Strategy.PRIORITY,
    )
    # a3 cannot run noop. t0 -> a1 (tie, first); t1 -> a2 (0 < 1); t2 -> a2 (1/3 < 1); t3 -> a2 (2/3 < 1)
    # t4: a1 1, a2 1 -> a1; t5: a1 2, a2 1 -> a2
    assert by_agent(plan) == {"a1": ["t0", "t4"], "a2": ["t1", "t2", "t3", "t5"]}


def test_confidence(tmp_path: Path, reg: ToolRegistry) -> None:
    confidences = {"t1": 0.9, "t2": 0.1, "t3": 0.5, "t4": 0.3, "t5": 0.2, "t6": 0.8}
    lines = [t(tid, confidence=c) for tid, c in confidences.items()]
    weights = {"a1": 0.5, "a2": 0.9, "a3": 0.7}
    plan = build(tmp_path, lines, reg, strategy=Strategy.CONFIDENCE, agent_weights=weights)
    # least confident first: t2 t5 t4 t3 t6 t1; agents by weight: a2 a3 a1
    # t2 -> a2 (all 0); t5 -> a2 (1 is within one task of 0); t4 -> a3 (a2 at 2 is not);
    # t3 -> a3; t6 -> a1 (a2 2, a3 2 too far from 0); t1: least is 1 -> a2 (2 - 1 <= 1)
    assert by_agent(plan) == {"a1": ["t6"], "a2": ["t1", "t2", "t5"], "a3": ["t3", "t4"]}
    assert [pt.task.task_id for pt in plan.waves[1]] == list(confidences)  # dispatch: plan order
    assert plan.agent_weights == weights


def test_confidence_counts_pinned_tasks_and_defaults_weights(tmp_path: Path, reg: ToolRegistry) -> None:
    agents = [AgentSpec(id="a1"), AgentSpec(id="a2")]
    lines = [
        t("p1", agent="a1"),
        t("p2", agent="a1"),
        t("p3", agent="a1"),
        t("u1", confidence=0.1),
        t("u2", confidence=0.2),
    ]
    plan = build(tmp_path, lines, reg, agents=agents, strategy=Strategy.CONFIDENCE)
    # a1 holds 3 pinned tasks (load 1.5): too far from a2 (0), so both unpinned go to a2
    assert by_agent(plan) == {"a1": ["p1", "p2", "p3"], "a2": ["u1", "u2"]}


@pytest.mark.parametrize("strategy", list(Strategy))
def test_every_strategy_respects_pins_and_eligibility(
    tmp_path: Path, reg: ToolRegistry, strategy: Strategy
) -> None:
    agents = [AgentSpec(id="a1", tools=["noop"]), AgentSpec(id="a2", tools=["t.read"]), AgentSpec(id="a3")]
    lines = []
    for i in range(12):
        if i % 3 == 0:
            lines.append(
                t(f"r{i}", "t.read", args={"path": f"{i}.txt"}, priority=i * 7 % 100, confidence=i / 12)
            )
        elif i % 3 == 1:
            lines.append(t(f"s{i}", "t.sleep", args={"seconds": i}, priority=i * 7 % 100, confidence=i / 12))
        else:
            lines.append(t(f"n{i}", agent="a3" if i == 5 else None, priority=i * 7 % 100, confidence=i / 12))
    plan = build(tmp_path, lines, reg, agents=agents, strategy=strategy)
    specs = {a.id: a for a in agents}
    assert sorted(plan.tasks) == sorted(x["task_id"] for x in lines)
    assert plan.tasks["n5"].agent == "a3" and plan.tasks["n5"].pinned
    for pt in plan.tasks.values():
        assert specs[pt.agent].offers(pt.task.tool)
        if pt.task.tool == "t.sleep":
            assert pt.agent == "a3"


def test_assign_wave_reassigns_a_wave(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(tmp_path, [t("a"), t("b"), t("c", agent="a2"), t("d")], reg)
    fewer = [AgentSpec(id="a2"), AgentSpec(id="a3")]
    new = assign_wave(plan.waves[1], fewer, Strategy.ROUND_ROBIN)
    assert [(pt.task.task_id, pt.agent) for pt in new] == [("a", "a2"), ("b", "a3"), ("c", "a2"), ("d", "a2")]
    assert plan.waves[1][0].agent == "a1"  # the plan itself is untouched
    again = plan.reassign_wave(1, agents=fewer, strategy=Strategy.PRIORITY)
    assert {pt.agent for pt in again} <= {"a2", "a3"}
    assert plan.waves[1] == again and plan.tasks["a"] is again[0]


def test_assign_wave_takes_plan_order_from_the_lines(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(tmp_path, [t("a"), t("b"), t("c"), t("d")], reg)
    shuffled = [plan.waves[1][i] for i in (2, 0, 3, 1)]
    again = assign_wave(shuffled, AGENTS, Strategy.ROUND_ROBIN)
    assert [(pt.task.task_id, pt.agent) for pt in again] == [
        (pt.task.task_id, pt.agent) for pt in plan.waves[1]
    ]


def test_summary_table_after_a_reassignment_to_new_agents(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(tmp_path, [t("a"), t("b", depends_on=["a"])], reg, agents=[AgentSpec(id="a1")])
    plan.reassign_wave(2, agents=[AgentSpec(id="b1")])
    assert summary_table(plan) == [
        ["wave", "a1", "b1", "total"],
        ["1", "1", "0", "1"],
        ["2", "0", "1", "1"],
        ["total", "1", "1", "2"],
    ]


def test_assign_wave_raises_for_a_missing_agent(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build(tmp_path, [t("a"), t("b", agent="a1"), t("c", "t.read", args={"path": "x"})], reg)
    with pytest.raises(PlanError) as info:
        assign_wave(
            plan.waves[1], [AgentSpec(id="a2", tools=["noop"])], Strategy.ROUND_ROBIN, source="p.jsonl"
        )
    assert info.value.lines() == [
        "p.jsonl:2: task 'b' is pinned to agent 'a1', which is not among the agents: a2",
        "p.jsonl:3: task 'c': no agent offers tool 't.read'; agents: a2",
    ]


# -- property: waves on random DAGs -----------------------------------------------------------


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """A random DAG and the expected waves: half the time a shuffled plan with some explicit
    (valid) waves (the general path), else in plan order without explicit waves (the
    one-pass path for the usual plan)."""
    in_order = draw(st.booleans())
    n = draw(st.integers(min_value=1, max_value=25))
    lines: list[dict[str, Any]] = []
    expected: dict[str, int] = {}
    for i in range(n):
        deps = sorted(draw(st.sets(st.integers(min_value=0, max_value=i - 1), max_size=4))) if i else []
        floor = 1 + max((expected[f"t{j}"] for j in deps), default=0)
        line = t(f"t{i}", depends_on=[f"t{j}" for j in deps])
        if not in_order and draw(st.booleans()) and draw(st.booleans()):
            line["wave"] = floor + draw(st.integers(min_value=0, max_value=3))
        expected[f"t{i}"] = line.get("wave", floor)
        lines.append(line)
    if in_order:
        return lines, expected
    order = draw(st.permutations(lines))
    return list(order), expected


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=dags())
def test_waves_on_random_dags(tmp_path: Path, case: tuple[list[dict[str, Any]], dict[str, int]]) -> None:
    lines, expected = case
    plan = build(tmp_path, lines, make_registry())
    waves = waves_of(plan)
    explicit = {x["task_id"] for x in lines if "wave" in x}
    for x in lines:
        tid = x["task_id"]
        dep_waves = [waves[d] for d in x["depends_on"]]
        assert all(waves[tid] > w for w in dep_waves)
        if tid not in explicit:
            assert waves[tid] == 1 + max(dep_waves, default=0)
    assert waves == expected
    assert plan.wave_numbers() == sorted(set(waves.values()))
