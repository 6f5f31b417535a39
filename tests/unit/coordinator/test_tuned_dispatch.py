"""What the agent tuner decides is what the dispatcher does: the tuned batch size sets the
tasks per message of the next wave (on the in-thread worker)."""

from __future__ import annotations

import json
from pathlib import Path

from buddy.models import Mode
from tests.unit.coordinator.conftest import FakeClock, Fleet, options


def plan_lines() -> list[dict[str, object]]:
    """A tool whose contract states no duration (file.sha256), run mock: instant tasks."""
    return [
        {"task_id": f"w{w}-{i}", "tool": "file.sha256", "wave": w, "args": {"path": f"f{i}.txt"}}
        for w, n in ((1, 20), (2, 40))
        for i in range(n)
    ]


def wave_messages(fleet: Fleet, cid: str) -> dict[int, int]:
    return {
        e["data"]["wave"]: e["data"]["messages"]
        for e in fleet.store.events(cid, count=1000)
        if e["type"] == "wave_dispatched"
    }


def test_the_tuned_batch_size_is_what_the_next_wave_is_sent_with(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(plan_lines(), tmp_path)
    fixed, tuned = tmp_path / "fixed", tmp_path / "tuned"
    fixed.mkdir()
    tuned.mkdir()
    _, static = worker.run(plan, options(fixed, mode=Mode.MOCK), clock=FakeClock())
    plan = worker.plan(plan_lines(), tmp_path)
    _, adaptive = worker.run(plan, options(tuned, mode=Mode.MOCK, optimize=True), clock=FakeClock())
    assert static.exit_code == adaptive.exit_code == 0

    slots = sum(a.concurrency for a in plan.agents)  # one live worker per agent
    # without the tuner: about four messages per slot for tasks of unknown length
    assert wave_messages(worker, static.campaign_id)[2] >= 2 * slots
    # the tuner saw instant tasks in wave 1: as many per message as fit, one message per slot
    changes = [
        json.loads(x)
        for f in (tuned / "out").glob("wave_2/agent_*/tuned_parameters.jsonl")
        for x in f.read_text().splitlines()
    ]
    batch = {c["agent_id"]: c["new"] for c in changes if c["parameter"] == "batch_size"}
    assert set(batch) == {"a1", "a2"} and min(batch.values()) >= 20
    assert wave_messages(worker, adaptive.campaign_id)[2] == slots


def sleeps(n: int) -> list[dict[str, object]]:
    return [{"task_id": f"s{i}", "tool": "sleep", "args": {"seconds": 0.01}} for i in range(n)]


def test_a_second_campaign_starts_from_what_the_first_left(worker: Fleet, tmp_path: Path) -> None:
    runs = {}
    for name, fresh in (("first", False), ("second", False), ("fresh", True)):
        (tmp_path / name).mkdir()
        plan = worker.plan(sleeps(12), tmp_path)
        opts = options(tmp_path / name, mode=Mode.LIVE, optimize=True, fresh=fresh)
        _, runs[name] = worker.run(plan, opts, clock=FakeClock())
        assert runs[name].exit_code == 0

    from buddy.state.profiles import Profiles

    agents = Profiles(worker.store.r).agents()
    assert set(agents) == {"a1", "a2"} and all(p.campaigns == 3 for p in agents.values())
    assert all(8 <= p.mean_duration_ms <= 200 for p in agents.values())  # 10 ms sleeps, live

    def report(name: str) -> str:
        return (tmp_path / name / "out" / "report.md").read_text()

    assert "learned before the first wave: nothing: no usable profile" in report("first")
    assert "learned before the first wave: a1:" in report("second") and "buddy:profile" in report("second")
    assert "learned before the first wave: nothing: --fresh" in report("fresh")
    seeded = [
        json.loads(x)
        for f in (tmp_path / "second" / "out").glob("wave_1/agent_*/tuned_parameters.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert {c["parameter"] for c in seeded} == {"batch_size"}
    assert all(
        "profile" in c["reason"] and c["evidence"]["profile"].startswith("buddy:profile:agent:")
        for c in seeded
    )
    assert not list((tmp_path / "fresh" / "out").glob("wave_1/agent_*/tuned_parameters.jsonl"))
