"""FleetView.wait_for_workers by a fake clock: nothing sleeps; heartbeats come from the test."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from buddy.coordinator.fleet_view import FleetView
from buddy.errors import CampaignAborted
from buddy.models import AgentSpec
from buddy.plan.build import build_plan
from buddy.state.store import Store
from buddy.tools.registry import default_registry
from tests.unit.coordinator.conftest import FakeClock


def view(store: Store, tmp_path: Path, clock: FakeClock) -> tuple[FleetView, io.StringIO]:
    """A fleet view of a plan with one task on a1 and one on a2; the console's text."""
    lines = [{"task_id": f"t{i}", "tool": "file.sha256", "args": {"path": f"f{i}"}} for i in (1, 2)]
    path = tmp_path / "plan.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    plan = build_plan(path, default_registry([]), [AgentSpec(id="a1"), AgentSpec(id="a2")], workdir=tmp_path)
    assert sorted(pt.agent for pt in plan.tasks.values()) == ["a1", "a2"]
    text = io.StringIO()
    return FleetView(plan, store, clock, Console(file=text, width=300)), text


def test_no_live_worker_aborts_naming_the_queues_after_the_wait(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(now=0.0)
    fleet, _ = view(store, tmp_path, clock)

    with pytest.raises(CampaignAborted) as e:
        fleet.wait_for_workers(4.0)

    assert e.value.reason == (
        "no live worker consumes buddy.agent.a1, buddy.agent.a2 (waited 4 s); "
        "start one: buddy worker --agent a1; buddy worker --agent a2"
    )
    # polled every 0.2 s of fake time until the wait was over, not one poll more
    assert 4.0 <= clock.now < 4.2
    assert set(clock.slept) == {0.2} and len(clock.slept) == round(clock.now / 0.2)


def test_a_worker_that_heartbeats_during_the_wait_ends_it(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(now=0.0)
    fleet, text = view(store, tmp_path, clock)

    def start(now: float) -> None:
        if len(clock.slept) == 3:
            store.heartbeat("w1@test", ["a1", "a2"])

    clock.on_sleep.append(start)
    fleet.wait_for_workers(10.0)

    assert clock.slept == [0.2, 0.2, 0.2]
    assert fleet.healthy(fresh=True) == {"a1", "a2"}
    assert text.getvalue() == ""


def test_an_agent_without_worker_is_reported_and_the_others_go_on(store: Store, tmp_path: Path) -> None:
    store.heartbeat("w1@test", ["a1"])
    clock = FakeClock(now=0.0)
    fleet, text = view(store, tmp_path, clock)

    fleet.wait_for_workers(1.0)  # no abort: a1 can take a2's tasks

    assert 1.0 <= clock.now < 1.2
    assert " ".join(text.getvalue().split()) == (
        "warning: no live worker consumes buddy.agent.a2 (waited 1 s); start one: buddy worker "
        "--agent a2; their tasks go to agents that have workers"
    )
    assert fleet.healthy() == {"a1"}


def test_live_workers_end_the_wait_before_any_sleep(store: Store, tmp_path: Path) -> None:
    store.heartbeat("w1@test", ["a1", "a2"])
    clock = FakeClock(now=0.0)
    fleet, _ = view(store, tmp_path, clock)

    fleet.wait_for_workers(10.0)

    assert clock.slept == [] and clock.now == 0.0


def test_capacity_is_what_the_live_workers_report(store: Store, tmp_path: Path) -> None:
    fleet, _ = view(store, tmp_path, FakeClock(now=0.0))
    store.heartbeat("w1@test", ["a1"], pool=8)
    store.heartbeat("w2@test", ["a1"], pool=4)
    assert fleet.capacity() == {"a1": 12, "a2": 2}  # a2: no worker, campaign.yaml's 2
    store.heartbeat("w3@test", ["a2"], pool=1)
    assert fleet.capacity() == {"a1": 12, "a2": 2}  # read once per wave ...
    assert fleet.capacity(fresh=True) == {"a1": 12, "a2": 1}  # ... unless asked fresh


def test_failover_fills_the_agents_by_their_slots(store: Store, tmp_path: Path) -> None:
    """a3 has no worker: its six tasks go to a1 (3 slots) and a2 (1 slot), tasks per slot even."""
    lines = [{"task_id": f"t{i}", "tool": "noop"} for i in range(6)]
    path = tmp_path / "plan.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    agents = [AgentSpec(id="a1"), AgentSpec(id="a2"), AgentSpec(id="a3")]
    plan = build_plan(path, default_registry([]), agents, workdir=tmp_path)
    store.heartbeat("w1@test", ["a1"], pool=3)
    store.heartbeat("w2@test", ["a2"], pool=1)
    fleet = FleetView(plan, store, FakeClock(now=0.0), Console(file=io.StringIO()))
    to_send = {"a3": [plan.tasks[f"t{i}"] for i in range(6)]}
    out, moves = fleet.failover(1, to_send)
    assert {a: len(p) for a, p in out.items()} == {"a1": 4, "a2": 2}  # 4/3 ≈ 2/1 per slot
    assert len(moves) == 6 and all(m.from_agent == "a3" for m in moves)
