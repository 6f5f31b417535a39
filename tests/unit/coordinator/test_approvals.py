"""Approvals: an ``approver`` callable, an operator deciding in Redis, and the timeout, all
measured by a fake clock (nothing sleeps); what the campaign hash and the hooks say while
tasks wait, and the commands the coordinator prints. :class:`ApprovalWaiter` alone runs against
fakeredis and the private Redis; whole campaigns against the private Redis."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from buddy.config import get_settings
from buddy.coordinator.approvals import (
    APPROVAL_WAIT_FIELD,
    ApprovalRequest,
    ApprovalWait,
    ApprovalWaiter,
    Approver,
    approval_commands,
    hint_redis_url,
)
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.options import EXIT_FAILURES, EXIT_OK, CampaignOptions
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.models import AgentSpec, Mode, Risk, TaskStatus, utcnow
from buddy.plan.build import build_plan
from buddy.safety.gates import Approvals
from buddy.state.store import Store
from buddy.tools.registry import default_registry
from tests.unit.coordinator.conftest import FakeClock, Fleet, Recorder, options

CID = "c-approvals"


def delete_lines(*names: str) -> list[dict[str, Any]]:
    """HIGH-risk ``file.delete`` tasks, confident enough (0.95 >= 0.8) to run live once approved."""
    return [
        {"task_id": f"rm-{n}", "tool": "file.delete", "args": {"path": f"{n}.txt"}, "confidence": 0.95}
        for n in names
    ]


# -- ApprovalWaiter alone ------------------------------------------------------------------


class Waiting:
    """A waiter's inputs for tasks ``rm-<name>``: context, the waiting list, and what
    ``on_approved`` and the ``on_approvals`` hook were called with."""

    def __init__(self, store: Store, tmp_path: Path, *names: str) -> None:
        registry = default_registry([])
        path = tmp_path / "plan.jsonl"
        path.write_text("".join(f"{line}\n" for line in map(_json, delete_lines(*names))))
        self.plan = build_plan(path, registry, [AgentSpec(id="a1")], workdir=tmp_path)
        self.ctx = CampaignContext(CID, self.plan, CampaignOptions(mode=Mode.LIVE, workdir=tmp_path), store)
        self.waiting = [(pt, Risk.HIGH, 0.95) for pt in self.plan.tasks.values()]
        self.approved: list[tuple[str, str, str]] = []
        self.hook = Recorder()
        self.hooks = HookRunner([self.hook])

    def on_approved(self, task_id: str, why: str, by: str) -> None:
        self.approved.append((task_id, why, by))

    def wait(self, waiter: ApprovalWaiter) -> list[tuple[str, str, str]]:
        denied = waiter.wait(self.ctx, self.waiting, self.on_approved)
        return [(pt.task.task_id, why, by) for pt, why, by in denied]


def _json(x: dict[str, Any]) -> str:
    import json

    return json.dumps(x)


def test_the_approver_is_asked_about_each_task_and_its_answers_are_recorded(
    store: Store, tmp_path: Path
) -> None:
    w = Waiting(store, tmp_path, "keep", "drop", "boom")
    asked: list[ApprovalRequest] = []

    def approver(request: ApprovalRequest) -> bool:
        asked.append(request)
        if request.task_id == "rm-boom":
            raise ValueError("cannot reach the change board")
        return request.task_id == "rm-keep"

    clock = FakeClock()
    denied = w.wait(ApprovalWaiter(Approvals(store), clock, w.hooks, timeout_s=30.0, approver=approver))

    by = f"approver {approver.__qualname__}"
    assert w.approved == [("rm-keep", f"approved by {by}", by)]
    assert denied == [
        ("rm-drop", f"approval denied by {by}", by),
        (
            "rm-boom",
            f"approval denied by {by}: the approver raised ValueError: cannot reach the change board",
            by,
        ),
    ]
    assert [(r.task_id, r.tool, r.risk, r.confidence, r.agent, r.wave) for r in asked] == [
        (f"rm-{n}", "file.delete", Risk.HIGH, 0.95, "a1", 1) for n in ("keep", "drop", "boom")
    ]
    assert asked[0].args == {"path": "keep.txt"} and asked[0].campaign_id == CID
    recorded = {a.task_id: (a.status, a.by, a.reason) for a in Approvals(store).get(CID)}
    assert recorded == {
        "rm-keep": ("approved", by, None),
        "rm-drop": ("denied", by, None),
        "rm-boom": ("denied", by, "the approver raised ValueError: cannot reach the change board"),
    }
    # (waiting, approved, denied) after each answer; the clock was never slept
    assert w.hook.approvals == [(2, 1, 0), (1, 1, 1), (0, 1, 2)]
    assert clock.slept == []


def says_yes(request: ApprovalRequest) -> Any:
    return "yes"


def test_an_answer_that_is_not_a_bool_denies(store: Store, tmp_path: Path) -> None:
    w = Waiting(store, tmp_path, "x")

    denied = w.wait(ApprovalWaiter(Approvals(store), FakeClock(), w.hooks, timeout_s=30.0, approver=says_yes))

    assert w.approved == []
    assert [why for _, why, _ in denied] == [
        "approval denied by approver says_yes: the approver returned 'yes', not True or False"
    ]


def test_without_a_decision_the_request_is_denied_after_the_timeout_by_the_clock(
    store: Store, tmp_path: Path
) -> None:
    w = Waiting(store, tmp_path, "x", "y")
    clock = FakeClock(now=1000.0)

    denied = w.wait(ApprovalWaiter(Approvals(store), clock, w.hooks, timeout_s=30.0, poll_s=0.25))

    assert denied == [
        ("rm-x", "approval timed out: no decision within 30 s", "coordinator"),
        ("rm-y", "approval timed out: no decision within 30 s", "coordinator"),
    ]
    assert w.approved == []
    # polled every 0.25 s of fake time until exactly the timeout
    assert clock.now == 1030.0 and clock.slept == [0.25] * 120
    recorded = {a.task_id: (a.status, a.by, a.reason) for a in Approvals(store).get(CID)}
    assert recorded == {t: ("denied", "coordinator", "no decision within 30 s") for t in ("rm-x", "rm-y")}
    assert w.hook.approvals == [(2, 0, 0)] * 121 + [(0, 0, 2)]  # one call per poll, then the denials


def test_the_hook_hears_of_the_denials_at_the_timeout(store: Store, tmp_path: Path) -> None:
    w = Waiting(store, tmp_path, "x", "y")

    w.wait(ApprovalWaiter(Approvals(store), FakeClock(), w.hooks, timeout_s=1.0, poll_s=0.25))

    assert w.hook.approvals[-1] == (0, 0, 2)


def test_operators_decide_in_redis_while_the_coordinator_waits(store: Store, tmp_path: Path) -> None:
    w = Waiting(store, tmp_path, "x", "y")
    clock = FakeClock(now=0.0)
    operators = Approvals(store)

    def operator(now: float) -> None:
        if len(clock.slept) == 1:
            operators.decide(CID, ["rm-x"], "approved", by="op", reason="change 42")
        if len(clock.slept) == 3:
            operators.decide(CID, ["rm-y"], "denied", by="op2")

    clock.on_sleep.append(operator)
    denied = w.wait(ApprovalWaiter(Approvals(store), clock, w.hooks, timeout_s=30.0, poll_s=0.25))

    assert w.approved == [("rm-x", "approved by op: change 42", "operator op")]
    assert denied == [("rm-y", "approval denied by op2", "operator op2")]
    assert clock.slept == [0.25, 0.25, 0.25]  # read again after each sleep; no wait past the last decision
    assert w.hook.approvals == [(2, 0, 0), (1, 1, 0), (1, 1, 0), (0, 1, 1)]


class Requested(Recorder):
    """A recorder that also keeps what ``on_approval_request`` got."""

    def __init__(self) -> None:
        super().__init__()
        self.requested: list[tuple[list[ApprovalRequest], datetime]] = []

    def on_approval_request(self, ctx: Any, requests: list[ApprovalRequest], timeout_at: datetime) -> None:
        self.requested.append((requests, timeout_at))


def test_while_tasks_wait_the_campaign_says_so_and_the_hook_hears_once(store: Store, tmp_path: Path) -> None:
    w = Waiting(store, tmp_path, "x", "y")
    hook = Requested()
    clock = FakeClock(now=0.0)
    seen: list[dict[str, str]] = []
    operators = Approvals(store)

    def operator(now: float) -> None:
        seen.append(store.campaign(CID))
        if len(clock.slept) == 2:
            operators.decide(CID, ["rm-x", "rm-y"], "approved", by="op")

    clock.on_sleep.append(operator)
    before = utcnow()
    w.wait(ApprovalWaiter(Approvals(store), clock, HookRunner([hook]), timeout_s=30.0, poll_s=0.25))

    [(requests, timeout_at)] = hook.requested  # once, though the waiter polled three times
    assert [(r.task_id, r.tool, r.risk, r.wave, r.agent) for r in requests] == [
        ("rm-x", "file.delete", Risk.HIGH, 1, "a1"), ("rm-y", "file.delete", Risk.HIGH, 1, "a1")
    ]  # fmt: skip
    assert before + timedelta(seconds=30) <= timeout_at <= utcnow() + timedelta(seconds=30)
    wait = ApprovalWait.model_validate_json(seen[0][APPROVAL_WAIT_FIELD])
    assert (wait.wave, wait.tasks, wait.task_ids, wait.timeout_at) == (1, 2, ["rm-x", "rm-y"], timeout_at)
    assert wait.describe() == (
        f"waiting for approval (2 tasks, wave 1, times out at {timeout_at:%Y-%m-%d %H:%M:%S} UTC)"
    )
    assert APPROVAL_WAIT_FIELD not in store.campaign(CID)  # removed once decided


def test_an_operator_decision_recorded_before_the_approver_answers_counts(
    store: Store, tmp_path: Path
) -> None:
    w = Waiting(store, tmp_path, "x")

    def slow_yes(request: ApprovalRequest) -> bool:
        Approvals(store).decide(CID, [request.task_id], "denied", by="op@host", reason="not today")
        return True  # too late: the record says denied

    denied = w.wait(ApprovalWaiter(Approvals(store), FakeClock(), w.hooks, timeout_s=30.0, approver=slow_yes))

    assert w.approved == []
    assert denied == [("rm-x", "approval denied by op@host: not today", "operator op@host")]


def test_the_hint_names_the_redis_only_when_a_pasted_command_needs_it(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded = Store(redis_client(redis_server.url))
    assert hint_redis_url(CampaignOptions(embedded=True), embedded) == (redis_server.url, "")
    other = CampaignOptions(redis_display="redis://fleet:6379/0")
    assert hint_redis_url(other, embedded) == ("redis://fleet:6379/0", "")
    monkeypatch.setenv("BUDDY_REDIS_URL", "redis://fleet:6379/0")
    get_settings.cache_clear()
    assert hint_redis_url(other, embedded) == (None, "")  # the configured default: found without it
    url, note = hint_redis_url(CampaignOptions(redis_display="redis://:***@vault:6379/0"), embedded)
    assert url is None and "redis://:***@vault:6379/0" in note and "password is not printed" in note
    assert approval_commands("c-1", 2, redis_server.url) == (
        f"buddy approvals list c-1 --redis-url {redis_server.url}",
        f"buddy approvals approve c-1 --wave 2 --redis-url {redis_server.url}",
    )
    assert approval_commands("c 1", 2, None)[1] == "buddy approvals approve 'c 1' --wave 2"


# -- in a campaign -------------------------------------------------------------------------


def live(tmp_path: Path, **kw: Any) -> CampaignOptions:
    return options(tmp_path, mode=Mode.LIVE, approval_timeout_s=30.0, **kw)


def test_an_approved_task_runs_live_on_the_worker(worker: Fleet, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("to be deleted\n")
    plan = worker.plan(delete_lines("x"), tmp_path)
    asked: list[str] = []

    def approver(request: ApprovalRequest) -> bool:
        asked.append(request.task_id)
        return True

    hooks = Recorder()
    c, result = worker.run(plan, live(tmp_path), approver=approver, hooks=[hooks], clock=FakeClock())

    assert (result.status, result.exit_code) == ("succeeded", EXIT_OK)
    o = result.outcomes["rm-x"]
    assert (o.status, o.mode, o.result) == (TaskStatus.SUCCEEDED, Mode.LIVE, {"deleted": True})
    assert not (tmp_path / "x.txt").exists()
    assert asked == ["rm-x"]
    [a] = Approvals(worker.store).get(c.cid)
    assert (a.task_id, a.status, a.by) == ("rm-x", "approved", f"approver {approver.__qualname__}")
    assert hooks.approvals == [(0, 1, 0)]


def refuse(request: ApprovalRequest) -> bool:
    return False


def explode(request: ApprovalRequest) -> bool:
    raise RuntimeError("approver offline")


@pytest.mark.parametrize(
    ("approver", "why"),
    [
        (refuse, "approval denied by approver refuse"),
        (explode, "approval denied by approver explode: the approver raised RuntimeError: approver offline"),
    ],
)
def test_a_denied_task_never_runs_and_says_why(
    fleet: Fleet, tmp_path: Path, approver: Approver, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "x.txt").write_text("kept\n")
    fleet.beat()  # no worker: nothing is sent, but the fleet must look alive
    plan = fleet.plan(delete_lines("x"), tmp_path)
    caplog.set_level(logging.WARNING, logger="buddy.approvals")

    _, result = fleet.run(plan, live(tmp_path), approver=approver, clock=FakeClock())

    assert (result.status, result.exit_code) == ("finished_with_failures", EXIT_FAILURES)
    o = result.outcomes["rm-x"]
    assert (o.status, o.mode, o.attempts) == (TaskStatus.DENIED, Mode.LIVE, 0)
    assert (o.error_type, o.error_msg) == ("approval_denied", why)
    assert (tmp_path / "x.txt").read_text() == "kept\n"
    raised = [r.getMessage() for r in caplog.records if r.name == "buddy.approvals"]
    assert raised == (
        ["approver raised for rm-x: RuntimeError: approver offline (denied)"] if approver is explode else []
    )


def test_without_approver_or_operator_the_task_is_denied_at_the_timeout(fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("kept\n")
    fleet.beat()
    plan = fleet.plan(delete_lines("x"), tmp_path)
    clock = FakeClock(now=0.0)

    _, result = fleet.run(plan, live(tmp_path), clock=clock)

    o = result.outcomes["rm-x"]
    assert (o.status, o.error_type) == (TaskStatus.DENIED, "approval_denied")
    assert o.error_msg == "approval timed out: no decision within 30 s"
    assert clock.now == 30.0 and sum(clock.slept) == 30.0
    assert (tmp_path / "x.txt").exists()
    assert result.summary.counts.by_status == {"denied": 1}


def test_an_operator_approval_in_redis_lets_the_task_run(worker: Fleet, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("to be deleted\n")
    plan = worker.plan(delete_lines("x"), tmp_path)
    clock = FakeClock(now=0.0)
    operators = Approvals(worker.store)
    campaign: list[str] = []

    def operator(now: float) -> None:
        if now == 1.0:  # after four polls
            operators.decide(campaign[0], ["rm-x"], "approved", by="op")

    clock.on_sleep.append(operator)
    hooks = Recorder()
    hooks.before_campaign = lambda ctx: campaign.append(ctx.campaign_id)  # type: ignore[method-assign]

    _, result = worker.run(plan, live(tmp_path), clock=clock, hooks=[hooks])

    o = result.outcomes["rm-x"]
    assert (o.status, o.mode, o.result) == (TaskStatus.SUCCEEDED, Mode.LIVE, {"deleted": True})
    assert not (tmp_path / "x.txt").exists()
    assert clock.slept == [0.25] * 4
    [a] = operators.get(campaign[0])
    assert (a.status, a.by) == ("approved", "op")
