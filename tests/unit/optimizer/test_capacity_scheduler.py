"""Balancing by the fleet's real capacity (issue 15): the scheduler's service-rate × live
capacity assignment, the first wave's re-assignment, the metrics on a capacity-heterogeneous
fleet, and the learner taking the capacity the workers report.

The fleet of the issue: agents that differ only in their pools (a1 8 slots, a2 1, a3 4), waves
of 150 equal tasks. Waves are simulated: each slot runs its agent's tasks back to back, each
taking the agent's execution time plus its wait per task (seconds)."""

from __future__ import annotations

import io
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from rich.console import Console

from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, Mode, Outcome, PlanTask, TaskStatus
from buddy.optimizer.learner import GROW_PATIENCE_S, Learner, _hold_grows, _per_worker
from buddy.optimizer.meta import OptimizationGoal
from buddy.optimizer.scheduler import AdaptiveScheduler, SchedulerConfig
from buddy.optimizer.tuner import ParameterChange, TunedParameters
from buddy.outputs.writer import OutputWriter
from buddy.plan.build import build_plan
from buddy.plan.model import PlannedTask
from buddy.state.store import Store
from buddy.tools.registry import default_registry

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SLOTS = {"a1": 8, "a2": 1, "a3": 4}
FLEET = [AgentSpec(id=a, concurrency=c) for a, c in SLOTS.items()]
ALL = set(SLOTS)
TASK_S = 0.02


def tasks(n: int, *, wave: int = 2, tool: str = "sleep", pinned: dict[int, str] | None = None,
          expected: float | None = TASK_S, agents: tuple[str, ...] = ("a1", "a2", "a3"),
          ) -> list[PlannedTask]:  # fmt: skip
    """``n`` tasks of ``tool`` dealt round robin over ``agents`` (the static plan)."""
    pinned = pinned or {}
    return [
        PlannedTask(
            PlanTask(task_id=f"w{wave}-{tool}-{i}", tool=tool, confidence=0.9),
            i + 1,
            wave,
            pinned.get(i, agents[i % len(agents)]),
            i in pinned,
            [],
            expected,
        )
        for i in range(n)
    ]


def simulate(
    assigned: list[PlannedTask],
    wave: int,
    *,
    slots: dict[str, int] = SLOTS,
    exec_s: dict[tuple[str, str], float] | None = None,
    wait_s: dict[str, float] | None = None,
) -> list[Outcome]:
    """Outcomes of running ``assigned``: per agent, its tasks dealt over its slots, each slot
    running them back to back (execution ``exec_s[(agent, tool)]``, default 20 ms, then the
    agent's ``wait_s``)."""
    exec_s = exec_s or {}
    wait_s = wait_s or {}
    free: dict[str, list[float]] = {a: [0.0] * n for a, n in slots.items()}
    out = []
    for pt in assigned:
        lanes = free[pt.agent]
        k = min(range(len(lanes)), key=lambda i: (lanes[i], i))
        d = exec_s.get((pt.agent, pt.task.tool), TASK_S)
        start = lanes[k]
        lanes[k] = start + d + wait_s.get(pt.agent, 0.0)
        out.append(
            Outcome(
                task_id=pt.task_id, campaign_id="c", agent_id=pt.agent, wave=wave,
                status=TaskStatus.SUCCEEDED, mode=Mode.LIVE, attempts=1,
                start_time=T0 + timedelta(seconds=start), end_time=T0 + timedelta(seconds=start + d),
                duration_ms=d * 1000, worker=f"{pt.agent}@h", tool=pt.task.tool,
            )
        )  # fmt: skip
    return out


def metrics_of(outcomes: list[Outcome], wave: int, agents: list[AgentSpec] = FLEET) -> WaveMetrics:
    return compute_wave_metrics(wave, outcomes, {}, {}, agents)


def makespan(outcomes: list[Outcome]) -> float:
    """Last end − first start, seconds (the wave's wall, as the summaries measure it)."""
    assert all(o.start_time is not None and o.end_time is not None for o in outcomes)
    starts = [o.start_time for o in outcomes if o.start_time is not None]
    ends = [o.end_time for o in outcomes if o.end_time is not None]
    return (max(ends) - min(starts)).total_seconds()


def ideal(n: int, slots: int = 13, task_s: float = TASK_S) -> float:
    """The issue's capacity-ideal: work ÷ total slots + one task."""
    return n * task_s / slots + task_s


# -- metrics on the fleet ----------------------------------------------------------------


def test_round_robin_on_8_1_4_slots_is_judged_imbalanced() -> None:
    wave = simulate(tasks(150, wave=1), 1)
    m = metrics_of(wave, 1)
    assert m.wall_s == pytest.approx(50 * TASK_S)  # a2 holds the wave: 50 tasks on one slot
    assert m.load_balance < 0.3
    assert m.optimization_efficiency < 0.35
    assert m.agent_utilization < 0.3
    assert m.agents["a2"].utilization == pytest.approx(1.0)
    assert m.agents["a1"].utilization < 0.15
    # what the monitor saw before: campaign.yaml's equal concurrency hides it entirely
    equal = metrics_of(wave, 1, [AgentSpec(id=a, concurrency=2) for a in SLOTS])
    assert equal.load_balance == pytest.approx(1.0)


def test_agent_rows_carry_span_and_per_tool_times() -> None:
    wave = simulate(tasks(150, wave=1), 1, wait_s={"a1": 0.005})
    r = metrics_of(wave, 1).agents["a1"]
    # 50 tasks on 8 slots: 7 rounds of 25 ms, the last task without its wait
    assert r.span_s == pytest.approx(7 * 0.025 - 0.005)
    assert r.tool_executed == {"sleep": 50} and r.tool_mean_ms == {"sleep": pytest.approx(20.0)}


# -- service rate × capacity ---------------------------------------------------------------------


def test_the_wave_after_round_robin_is_split_by_capacity_within_the_goal() -> None:
    first = simulate(tasks(150, wave=1), 1)
    s = AdaptiveScheduler.from_history([metrics_of(first, 1)])
    for aid in SLOTS:
        assert s.estimates[aid].rate_tps("sleep") == pytest.approx(1 / TASK_S, rel=0.2)
    new, moves = s.assign(tasks(150), FLEET, ALL, goal=OptimizationGoal.BALANCE_LOAD)
    share = Counter(t.agent for t in new)
    assert share["a1"] == pytest.approx(150 * 8 / 13, abs=3)
    assert share["a3"] == pytest.approx(150 * 4 / 13, abs=3)
    assert share["a2"] == pytest.approx(150 / 13, abs=2)
    assert makespan(simulate(new, 2)) <= 1.3 * ideal(150)
    assert all("slot" in m.reason and "tasks/s per slot" in m.reason for m in moves)


def test_an_agent_with_slow_slots_gets_less_than_its_capacity_share() -> None:
    """a1's eight slots each lose 20 ms per task (contention): its service rate halves."""
    wait = {"a1": TASK_S}
    s = AdaptiveScheduler()
    waves = [simulate(tasks(150, wave=1), 1, wait_s=wait)]
    s.observe(metrics_of(waves[0], 1))
    assert s.estimates["a1"].wait_s == pytest.approx(TASK_S, rel=0.1)
    assert s.estimates["a1"].rate_tps() == pytest.approx(1 / (2 * TASK_S), rel=0.1)
    for w in (2, 3):
        new, _ = s.assign(tasks(150, wave=w), FLEET, ALL)
        waves.append(simulate(new, w, wait_s=wait))
        s.observe(metrics_of(waves[-1], w))
    share = Counter(o.agent_id for o in waves[-1])
    # slots × rate: a1 8 × 25/s = 200/s, a2 50/s, a3 200/s
    assert share["a1"] == pytest.approx(150 * 200 / 450, abs=4)
    assert share["a3"] == pytest.approx(150 * 200 / 450, abs=4)
    capacity_only, _ = AdaptiveScheduler().assign(tasks(150, wave=9), FLEET, ALL)  # nothing observed
    assert makespan(waves[-1]) < 0.85 * makespan(simulate(capacity_only, 9, wait_s=wait))
    assert makespan(waves[-1]) < 0.5 * makespan(waves[0])  # round robin


def test_per_tool_service_rates() -> None:
    """a3 runs ``render`` four times slower than a1 does, ``sleep`` as fast: render avoids a3."""
    fleet = [AgentSpec(id="a1", concurrency=4), AgentSpec(id="a3", concurrency=4)]
    slots = {"a1": 4, "a3": 4}
    slow = {("a3", "render"): 4 * TASK_S}
    pair = ("a1", "a3")
    mixed = [*tasks(40, wave=1, agents=pair), *tasks(40, wave=1, tool="render", agents=pair)]
    s = AdaptiveScheduler.from_history([metrics_of(simulate(mixed, 1, slots=slots, exec_s=slow), 1, fleet)])
    e = s.estimates["a3"]
    assert e.tools["render"] == pytest.approx(4 * TASK_S) and e.tools["sleep"] == pytest.approx(TASK_S)
    assert s.tool_s["render"] == pytest.approx(2.5 * TASK_S)
    render, _ = s.assign(tasks(40, tool="render"), fleet, {"a1", "a3"})
    sleep, _ = s.assign(tasks(40, tool="sleep"), fleet, {"a1", "a3"})
    assert Counter(t.agent for t in render)["a3"] == pytest.approx(8, abs=1)  # 1:4 by rate
    assert Counter(t.agent for t in sleep)["a3"] == pytest.approx(20, abs=1)


def test_pinned_tasks_and_capabilities_are_kept() -> None:
    fleet = [
        AgentSpec(id="a1", concurrency=8, tools=["sleep"]),
        AgentSpec(id="a2", concurrency=1),
        AgentSpec(id="a3", concurrency=4),
    ]
    s = AdaptiveScheduler.from_history([metrics_of(simulate(tasks(150, wave=1), 1), 1)])
    pins = {i: "a2" for i in range(0, 30, 3)}
    wave = [*tasks(60, pinned=pins), *tasks(20, tool="render")]
    new, moves = s.assign(wave, fleet, {"a1", "a2", "a3"})
    for old, pt in zip(wave, new, strict=True):
        if old.pinned:
            assert pt.agent == old.agent == "a2"
        if pt.task.tool == "render":
            assert pt.agent != "a1"  # a1 offers only sleep
    assert not any(m.pinned for m in moves)
    assert Counter(pt.agent for pt in new if not pt.pinned)["a2"] <= 2  # a2's one slot is full of pins


def test_assignment_is_deterministic() -> None:
    history = [metrics_of(simulate(tasks(150, wave=1), 1, wait_s={"a3": 0.004}), 1)]
    a = AdaptiveScheduler.from_history(history).assign(tasks(150), FLEET, ALL)
    b = AdaptiveScheduler.from_history(
        [WaveMetrics.model_validate_json(m.model_dump_json()) for m in history]
    ).assign(tasks(150), list(FLEET), set(reversed(sorted(ALL))))
    assert [t.agent for t in a[0]] == [t.agent for t in b[0]]
    assert [m.model_dump(exclude={"at"}) for m in a[1]] == [m.model_dump(exclude={"at"}) for m in b[1]]


# -- the first wave ------------------------------------------------------------------------------


def test_the_first_wave_is_rebalanced_by_capacity_only_when_that_pays() -> None:
    s = AdaptiveScheduler()
    first = tasks(150, wave=1)
    new, moves = s.rebalance(first, FLEET, ALL)
    assert moves and makespan(simulate(new, 1)) <= 1.3 * ideal(150)
    assert all(not m.pinned for m in moves)
    equal = [AgentSpec(id=a, concurrency=2) for a in SLOTS]
    same, none = s.rebalance(first, equal, ALL)  # round robin already fits equal pools
    assert none == [] and [t.agent for t in same] == [t.agent for t in first]
    few, none = AdaptiveScheduler(SchedulerConfig(rebalance_gain=0.99)).rebalance(first, FLEET, ALL)
    assert none == [] and [t.agent for t in few] == [t.agent for t in first]


# -- the learner ---------------------------------------------------------------------------------


class FakeControl:
    def __init__(self) -> None:
        self.grown: list[tuple[int, list[str]]] = []

    def pool_grow(self, n: int, destination: list[str], **_: Any) -> None:
        self.grown.append((n, destination))


class FakeApp:
    def __init__(self) -> None:
        self.control = FakeControl()


def learner(tmp_path: Path, *, optimize: bool = True) -> tuple[Learner, Store]:
    """A learner over a 150-task round-robin wave 1 on agents whose campaign.yaml says 2 slots."""
    path = tmp_path / "plan.jsonl"
    path.write_text(
        "".join(
            f'{{"task_id": "t{i}", "tool": "sleep", "args": {{"seconds": {TASK_S}}}}}\n' for i in range(150)
        )
    )
    plan = build_plan(path, default_registry([]), [AgentSpec(id=a) for a in SLOTS], workdir=tmp_path)
    store = Store(fakeredis.FakeRedis(), stale_s=10.0)
    out = OutputWriter(tmp_path / "out")
    out.create()
    app: Any = FakeApp()
    lr = Learner(plan, store, app, out, Console(file=io.StringIO()), campaign_id="c", optimize=optimize)
    return lr, store


@pytest.mark.parametrize("optimize", [True, False])
def test_the_learner_takes_the_capacity_workers_report(tmp_path: Path, optimize: bool) -> None:
    lr, store = learner(tmp_path, optimize=optimize)
    for aid, n in SLOTS.items():
        store.heartbeat(f"{aid}@h", [aid], pool=n, queues=[f"buddy.agent.{aid}"])
    before = Counter(pt.agent for pt in lr.plan.waves[1])
    assert before == {"a1": 50, "a2": 50, "a3": 50}
    lr.prepare(1, ALL)
    assert {a.id: a.concurrency for a in lr.plan.agents} == SLOTS  # with --no-optimize too
    after = Counter(pt.agent for pt in lr.plan.waves[1])
    if optimize:
        assert after["a1"] == pytest.approx(92, abs=3) and after["a2"] == pytest.approx(12, abs=2)
        assert lr.adjustments and all(m.wave == 1 for m in lr.adjustments)
        assert {pt.task_id: pt for pt in lr.plan.waves[1]} == {t: lr.plan.tasks[t] for t in lr.plan.tasks}
    else:
        assert after == before and lr.adjustments == []


def test_the_learner_falls_back_to_campaign_yaml(tmp_path: Path) -> None:
    lr, store = learner(tmp_path)
    store.heartbeat("a1@h", ["a1"], pool=8)
    store.heartbeat("a1-old@h", ["a1"])  # a worker that does not report its pool: campaign.yaml's 2
    store.heartbeat("a2@h", ["a2"])
    for _ in range(3):  # the fallback is campaign.yaml's, never the capacity taken before
        lr.prepare(1, ALL)
        assert {a.id: a.concurrency for a in lr.plan.agents} == {"a1": 10, "a2": 2, "a3": 2}  # a3: no worker


def test_a_grow_is_asked_once_until_the_workers_report_it(tmp_path: Path) -> None:
    lr, store = learner(tmp_path)
    store.heartbeat("a1@h", ["a1"], pool=8)
    slots, infos = lr.use_capacity()
    lr._grows["a1"] = (10, time.time())  # asked for 10; billiard has not started them yet
    assert lr._pools_in_force(slots, infos)["a1"] == 10
    assert lr.plan.agents[0].concurrency == 8  # the scheduler counts only running slots
    store.heartbeat("a1@h", ["a1"], pool=10)
    slots, infos = lr.use_capacity()
    assert lr._pools_in_force(slots, infos)["a1"] == 10 and "a1" not in lr._grows
    lr._grows["a1"] = (12, time.time() - GROW_PATIENCE_S - 1)  # never reported: the grow failed
    assert lr._pools_in_force(slots, infos)["a1"] == 10 and "a1" not in lr._grows


def test_pool_changes_are_split_over_an_agents_workers() -> None:
    assert [_per_worker(d, w) for d, w in ((4, 2), (1, 3), (-3, 2), (5, 1), (0, 4))] == [2, 1, -2, 5, 0]


def test_no_second_grow_while_one_is_under_way() -> None:
    tuned = {
        "a1": TunedParameters(agent_id="a1", concurrency=12, max_retries=3),
        "a2": TunedParameters(agent_id="a2", concurrency=2, max_retries=3, batch_size=5),
    }
    at = datetime(2024, 1, 1, tzinfo=UTC)
    changes = [
        ParameterChange(agent_id="a1", parameter="concurrency", old=10, new=12, reason="busy", changed_at=at),
        ParameterChange(agent_id="a2", parameter="concurrency", old=1, new=2, reason="busy", changed_at=at),
        ParameterChange(agent_id="a2", parameter="batch_size", old=1, new=5, reason="fast", changed_at=at),
    ]
    # a1 asked for 10 at the wave before, its workers still report 8: no grow on top of it
    out, kept = _hold_grows(tuned, changes, {"a1"}, {"a1": 10, "a2": 1})
    assert (out["a1"].concurrency, out["a2"].concurrency) == (10, 2)
    assert [(c.agent_id, c.parameter) for c in kept] == [("a2", "concurrency"), ("a2", "batch_size")]
