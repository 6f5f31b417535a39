"""Plan lines may carry the seeds' ``phase21_plan_id`` and ``phase22_validation_id`` (issue 15):
they are read, sent in the task's message, kept in its outcome and its learning signals, and a
task without them sends (and digests) exactly the message it sent before."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import fakeredis
import pytest

from buddy.analysis.feedback import analyze_wave
from buddy.analysis.signals import per_task
from buddy.coordinator.sending import WaveSender
from buddy.errors import PlanError
from buddy.execution.executor import Executor
from buddy.models import Mode, TaskSpec
from buddy.plan.build import build_plan
from buddy.plan.load import load_plan
from buddy.plan.model import CampaignPlan
from buddy.safety.gates import Gate
from buddy.state.store import Store, spec_digest
from buddy.tools import ToolRegistry
from tests.unit.plan.test_plan import AGENTS, make_registry, t, write_lines

CID = "c-seed"


@pytest.fixture
def reg() -> ToolRegistry:
    return make_registry()


def lines() -> list[dict[str, Any]]:
    return [
        t("a", phase21_plan_id="p21-42", phase22_validation_id="v-a", agent="a1", predicted_success=0.9),
        t("b", phase21_plan_id="p21-42", agent="a1", predicted_success=0.9),
        t("c", agent="a1", predicted_success=0.9),
    ]


def test_plan_lines_accept_the_seed_ids(tmp_path: Path, reg: ToolRegistry) -> None:
    tasks, _, errors = load_plan(write_lines(tmp_path / "p.jsonl", lines()), reg)
    assert errors == []
    ids = {x.task_id: (x.phase21_plan_id, x.phase22_validation_id) for x in tasks}
    assert ids == {"a": ("p21-42", "v-a"), "b": ("p21-42", None), "c": (None, None)}
    in_memory, _, errors = load_plan(lines(), reg)
    assert errors == [] and in_memory == tasks


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("phase21_plan_id", "", "phase21_plan_id: String should have at least 1 character"),
        ("phase22_validation_id", 7, "phase22_validation_id: Input should be a valid string"),
        ("phase21_plan_id", "x" * 129, "phase21_plan_id: String should have at most 128 characters"),
        ("phase23_id", "x", "unknown field 'phase23_id'"),
    ],
)
def test_bad_seed_ids_and_other_unknown_fields_are_errors(
    tmp_path: Path, reg: ToolRegistry, field: str, value: Any, message: str
) -> None:
    plan = write_lines(tmp_path / "p.jsonl", [t("a", **{field: value})])
    with pytest.raises(PlanError) as info:
        build_plan(plan, reg, AGENTS)
    assert any(message in msg for _, _, msg in info.value.errors), info.value.errors


def items_of(plan: CampaignPlan, workdir: Path) -> list[dict[str, Any]]:
    """The message items :meth:`WaveSender.spec` makes for the plan's tasks, dumped as
    :meth:`WaveSender.dispatch` dumps them."""
    sender = cast(WaveSender, SimpleNamespace(opts=SimpleNamespace(workdir=workdir), limits={}))
    return [
        WaveSender.spec(sender, pt, Gate(Mode.MOCK, None)).model_dump(mode="json")
        for pt in plan.tasks.values()
    ]


def test_a_task_without_seed_ids_sends_the_message_it_sent_before(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build_plan(lines(), reg, AGENTS, workdir=tmp_path)
    items = {i["task_id"]: i for i in items_of(plan, tmp_path)}
    before: dict[str, Any] = {
        "task_id": "c",
        "tool": "noop",
        "args": {},
        "mode": "mock",
        "mode_reason": None,
        "workdir": str(tmp_path),
        "planned_agent": "a1",
        "planned_wave": 1,
        "claims": [],
    }
    assert items["c"] == before and spec_digest(items["c"]) == spec_digest(before)
    assert items["b"]["phase21_plan_id"] == "p21-42" and "phase22_validation_id" not in items["b"]
    assert (items["a"]["phase21_plan_id"], items["a"]["phase22_validation_id"]) == ("p21-42", "v-a")
    for item in items.values():  # a worker's retry dumps the spec again: the same item, the same digest
        again = TaskSpec.model_validate(item).model_dump(mode="json")
        assert again == item and spec_digest(again) == spec_digest(item)


def test_seed_ids_reach_the_outcomes_and_the_signals(tmp_path: Path, reg: ToolRegistry) -> None:
    plan = build_plan(lines(), reg, AGENTS, workdir=tmp_path)
    items = items_of(plan, tmp_path)
    store = Store(fakeredis.FakeRedis())
    store.create_campaign(CID, {"status": "running"})
    store.record_dispatch(CID, 1, items)
    specs = [TaskSpec.model_validate(i) for i in items]  # as the worker reads its message
    ex = Executor(store, reg, worker="w1", stale_s=2.0, renew_s=0.1)
    res = ex.run_batch(CID, 1, "a1", specs, delivery="m:0", digests=[spec_digest(i) for i in items])
    assert res.refused == 0 and sorted(res.done) == [
        ("a", "succeeded"),
        ("b", "succeeded"),
        ("c", "succeeded"),
    ]
    outcomes = store.outcomes(CID)
    ids = {tid: (x.phase21_plan_id, x.phase22_validation_id) for tid, x in outcomes.items()}
    assert ids == {"a": ("p21-42", "v-a"), "b": ("p21-42", None), "c": (None, None)}
    assert "phase21_plan_id" not in json.loads(outcomes["c"].model_dump_json())
    fb = analyze_wave(CID, 1, list(outcomes.values()), {x: 0.9 for x in outcomes})
    by_task = {s.content["task_id"]: s for s in fb.signals if per_task(s)}
    assert {tid: (s.phase21_plan_id, s.phase22_validation_id) for tid, s in by_task.items()} == ids
    wave_level = [s for s in fb.signals if not per_task(s)]
    assert wave_level and all(s.phase21_plan_id == "p21-42" for s in wave_level)
