"""Work stealing (:mod:`buddy.coordinator.stealing`) on fakeredis: an idle agent takes the
queued tasks a busy one would reach last; never a pinned, started or finished task, never a
tool it does not offer, never the same task twice."""

from __future__ import annotations

import fakeredis

from buddy.coordinator.stalls import Sent
from buddy.coordinator.stealing import WorkStealing
from buddy.models import AgentSpec, Mode, Outcome, PlanTask, TaskStatus
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.state.claims import Claim, Claims
from buddy.state.store import Store

CID = "c1"


def plan(pinned: set[str], tools: dict[str, str]) -> CampaignPlan:
    ids = [f"b{i}" for i in range(8)] + ["a0", "a1"]
    tasks = {
        t: PlannedTask(
            PlanTask(task_id=t, tool=tools.get(t, "noop")),
            i + 1,
            1,
            "slow" if t.startswith("b") else "fast",
            t in pinned,
            [],
        )
        for i, t in enumerate(ids)
    }
    agents = [
        AgentSpec(id="fast", concurrency=2),
        AgentSpec(id="slow", concurrency=1, tools=["noop", "shell"]),
    ]
    p = CampaignPlan.__new__(CampaignPlan)
    p.tasks, p.agents = tasks, agents  # only what stealing reads
    return p


def setup(pinned: set[str] = frozenset(), tools: dict[str, str] | None = None):  # type: ignore[assignment]
    store = Store(fakeredis.FakeRedis())
    p = plan(set(pinned), tools or {})
    ids = list(p.tasks)
    sent = {t: Sent(pt.agent, f"m-{pt.agent}", {"task_id": t}) for t, pt in p.tasks.items()}
    done = [Outcome(task_id=t, campaign_id=CID, agent_id="fast", wave=1, status=TaskStatus.SUCCEEDED,
                    mode=Mode.LIVE, worker="w") for t in ("a0", "a1", "b0")]  # fmt: skip
    store.record_outcomes(done)
    Claims(store.r).acquire(CID, 1, {"b1": (None, Claim(worker="w2", attempt=1, started_at=1.0))}, 60)
    return WorkStealing(p, store), ids, sent


def test_an_idle_agent_takes_the_tail_of_a_busy_ones_queue() -> None:
    ws, ids, sent = setup()
    got = ws.check(CID, ids, sent, {"fast", "slow"}, {"fast": 2, "slow": 1})
    # slow still has b1 (running: claimed) and b2..b7 queued: fast takes the last half of those
    assert got == {"fast": ["b5", "b6", "b7"]}
    # next time: half of what is still queued (b2, b3, b4), never a task taken before
    assert ws.check(CID, ids, sent, {"fast", "slow"}, {"fast": 2, "slow": 1}) == {"fast": ["b4"]}


def test_pinned_and_unoffered_tasks_stay() -> None:
    ws, ids, sent = setup(pinned={"b6", "b7"}, tools={"b5": "file.write"})
    # fast offers every tool: b5 (file.write) may go; b6, b7 are pinned to slow
    got = ws.check(CID, ids, sent, {"fast", "slow"}, {"fast": 2, "slow": 1})
    assert got == {"fast": ["b4", "b5"]}


def test_a_tool_the_idle_agent_does_not_offer_stays() -> None:
    ws, ids, sent = setup(tools={t: "file.write" for t in ("b2", "b3", "b4", "b5")})
    sent = {t: Sent("fast", "m", x.item) for t, x in sent.items()}  # all went to fast; slow is idle
    # slow offers noop and shell only: of b2..b7 it may take b6, b7 (noop), half of them
    assert ws.check(CID, ids, sent, {"fast", "slow"}, {"fast": 2, "slow": 1}) == {"slow": ["b7"]}


def test_a_busy_or_unhealthy_agent_takes_nothing() -> None:
    ws, ids, sent = setup()
    assert ws.check(CID, ids, sent, {"slow"}, {"fast": 2, "slow": 1}) == {}  # fast has no live worker
    # nobody idle: give fast a task left to do
    sent2 = dict(sent) | {"b2": Sent("fast", "m-x", {"task_id": "b2"})}
    assert ws.check(CID, ids, sent2, {"fast", "slow"}, {"fast": 2, "slow": 1}) == {}


def test_a_finished_task_is_read_once_and_a_large_wave_stays_cheap() -> None:
    ws, ids, sent = setup()
    ws.check(CID, ids, sent, {"fast", "slow"}, {"fast": 2, "slow": 1})
    assert ws.done == {"a0", "a1", "b0"}  # known finished: not asked for again
    calls: list[list[str]] = []
    real = ws.store.missing_outcomes
    ws.store.missing_outcomes = lambda cid, tids: calls.append(list(tids)) or real(cid, tids)  # type: ignore[method-assign]
    ws.check(CID, ids, sent, {"fast", "slow"}, {"fast": 2, "slow": 1})
    assert calls and not set(calls[0]) & ws.done
