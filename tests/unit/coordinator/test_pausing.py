"""Pauses, the lock and cancels in the coordinator, on the in-thread worker: a live campaign
started while locked starts paused and goes on after the unlock, or ends at --lock-timeout
with its tasks cancelled; `buddy pause` holds any campaign; `buddy cancel` ends tasks that
have not started. The operator acts from the fake clock's sleeps (no real waiting)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from buddy.coordinator.options import EXIT_ABORTED, EXIT_FAILURES, EXIT_OK
from buddy.models import Mode, Pause, TaskStatus
from buddy.safety.gates import lock, unlock
from buddy.state.control import PauseRequest
from tests.unit.coordinator.conftest import FakeClock, Fleet, Recorder, options


class PauseRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.paused: list[Pause] = []
        self.resumed: list[Pause] = []

    def on_pause(self, ctx: Any, pause: Pause) -> None:
        self.paused.append(pause.model_copy())

    def on_resume(self, ctx: Any, pause: Pause) -> None:
        self.resumed.append(pause.model_copy())


def write_then_hash(tmp_path: Path) -> list[dict[str, Any]]:
    target = tmp_path / "written.txt"
    return [
        {"task_id": "slow", "tool": "noop", "confidence": 0.9},
        {
            "task_id": "write",
            "tool": "file.write",
            "depends_on": ["slow"],
            "confidence": 0.9,
            "args": {"path": str(target), "content": "paused, then written\n"},
        },
        {
            "task_id": "hash",
            "tool": "file.sha256",
            "depends_on": ["write"],
            "confidence": 0.9,
            "args": {"path": str(target)},
        },
    ]


def events(fleet: Fleet, cid: str) -> list[str]:
    return [e["type"] for e in fleet.store.events(cid, count=1000)]


def test_a_live_campaign_started_while_locked_waits_for_the_unlock(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(write_then_hash(tmp_path), tmp_path)
    clock, hook = FakeClock(), PauseRecorder()
    lock(worker.store, "change freeze", by="ops@host")
    seen: dict[str, str] = {}

    def operator(now: float) -> None:  # `buddy unlock` 3 s into the pause
        if now >= 1003.0 and worker.store.system_lock() is not None:
            seen.update(worker.store.campaign("c-locked"))
            unlock(worker.store)

    clock.on_sleep.append(operator)
    opts = options(tmp_path, mode=Mode.LIVE, campaign_id="c-locked")
    c, result = worker.run(plan, opts, hooks=[hook], clock=clock)

    assert (result.status, result.exit_code) == ("succeeded", EXIT_OK), result.summary
    # while it waited: nothing of it ran, and Redis said why
    assert seen["status"] == "paused"
    assert (
        Pause.model_validate_json(seen["paused"])
        .describe()
        .startswith("system locked: change freeze, by ops@host")
    )
    assert [p.kind for p in hook.paused] == ["lock"] and len(hook.resumed) == 1
    assert 2.5 <= (hook.resumed[0].seconds or 0) <= 4.0
    # no outcome claims a mode it did not run in: every task ran live, after the unlock
    assert {o.mode for o in result.outcomes.values()} == {Mode.LIVE}
    data = (tmp_path / "written.txt").read_bytes()
    assert result.outcomes["hash"].result == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert result.summary.pauses == [hook.resumed[0]]
    summary = json.loads((tmp_path / "out" / "execution_summary.json").read_text())
    assert summary["pauses"][0]["reason"] == "change freeze"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "paused 1 time(s)" in report and "system locked: change freeze" in report
    kinds = events(worker, c.cid)
    assert kinds.index("campaign_paused") < kinds.index("campaign_resumed") < kinds.index("wave_dispatched")
    assert worker.store.campaign(c.cid)["status"] == "succeeded"


def test_the_lock_timeout_ends_the_campaign_with_its_tasks_cancelled(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(write_then_hash(tmp_path), tmp_path)
    lock(worker.store, "incident 42", by="ops@host")
    try:
        c, result = worker.run(plan, options(tmp_path, mode=Mode.LIVE, lock_timeout_s=5.0), clock=FakeClock())
    finally:
        unlock(worker.store)

    assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED)
    assert result.abort_reason is not None and "--lock-timeout 5 s" in result.abort_reason
    assert {o.status for o in result.outcomes.values()} == {TaskStatus.CANCELLED}
    assert len(result.outcomes) == 3 and not (tmp_path / "written.txt").exists()
    assert result.summary.counts.by_status == {"cancelled": 3}
    assert len(result.summary.pauses) == 1 and result.summary.pauses[0].kind == "lock"
    moves = [json.loads(x) for x in (tmp_path / "out" / "state_transitions.jsonl").read_text().splitlines()]
    assert {(m["task_id"], m["to"]) for m in moves if m["to"] == "cancelled"} == {
        ("slow", "cancelled"), ("write", "cancelled"), ("hash", "cancelled")
    }  # fmt: skip
    assert "campaign_resumed" not in events(worker, c.cid)


def test_a_mock_campaign_runs_while_the_system_is_locked(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(write_then_hash(tmp_path), tmp_path)
    lock(worker.store, "freeze", by="ops@host")
    try:
        _, result = worker.run(plan, options(tmp_path, mode=Mode.MOCK, lock_timeout_s=1.0), clock=FakeClock())
    finally:
        unlock(worker.store)
    assert (result.status, result.exit_code) == ("succeeded", EXIT_OK)
    assert result.summary.pauses == [] and not (tmp_path / "written.txt").exists()


def test_pause_unpause_and_cancel_between_waves(worker: Fleet, tmp_path: Path) -> None:
    lines = [
        {"task_id": "first", "tool": "noop"},
        {"task_id": "gone", "tool": "noop", "depends_on": ["first"]},
        {"task_id": "needs-gone", "tool": "noop", "depends_on": ["gone"]},
        {"task_id": "after-all", "tool": "noop", "depends_on": ["gone"], "trigger_rule": "all_done"},
    ]
    plan = worker.plan(lines, tmp_path)
    clock = FakeClock()
    cid: list[str] = []

    class Operator(PauseRecorder):
        def after_wave(self, ctx: Any, report: Any) -> None:
            if ctx.wave == 1:  # `buddy pause`, then `buddy cancel gone`, from another shell
                ctx.store.request_pause(ctx.campaign_id, PauseRequest(reason="look first", by="ops@host"))
                ctx.store.request_cancel(ctx.campaign_id, ["gone"], by="ops@host")
                cid.append(ctx.campaign_id)

    def unpause(now: float) -> None:
        if cid and now >= 1002.0:
            worker.store.clear_pause(cid[0])

    clock.on_sleep.append(unpause)
    hook = Operator()
    _, result = worker.run(plan, options(tmp_path), hooks=[hook], clock=clock)

    assert (result.status, result.exit_code) == ("finished_with_failures", EXIT_FAILURES)
    got = {t: o.status for t, o in result.outcomes.items()}
    assert got == {
        "first": TaskStatus.SUCCEEDED,
        "gone": TaskStatus.CANCELLED,
        "needs-gone": TaskStatus.SKIPPED,  # its trigger rule: all_success
        "after-all": TaskStatus.SUCCEEDED,  # all_done
    }
    assert [p.kind for p in hook.paused] == ["operator"] and hook.paused[0].wave == 2
    assert hook.resumed[0].reason == "look first" and hook.resumed[0].by == "ops@host"
    moves = [json.loads(x) for x in (tmp_path / "out" / "state_transitions.jsonl").read_text().splitlines()]
    cancel = [m for m in moves if m["task_id"] == "gone" and m["to"] == "cancelled"]
    assert len(cancel) == 1 and cancel[0]["by"] == "operator ops@host"
    assert result.outcomes["gone"].attempts == 0


def failing_writes(tmp_path: Path) -> list[dict[str, Any]]:
    """Five live writes the plan is sure of (0.95) that all fail (no such folder), then a
    task of wave 2 that runs whatever they did (``all_done``)."""
    lines: list[dict[str, Any]] = [
        {
            "task_id": f"w{i}",
            "tool": "file.write",
            "confidence": 0.9,
            "predicted_success": 0.95,
            "args": {"path": str(tmp_path / "no-such-folder" / f"f{i}.txt"), "content": "x"},
        }
        for i in range(5)
    ]
    lines.append({"task_id": "next", "tool": "noop", "depends_on": ["w0"], "trigger_rule": "all_done"})
    return lines


def test_unsafe_escalation_locks_the_system_and_pauses_the_campaign(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(failing_writes(tmp_path), tmp_path)
    clock, hook = FakeClock(), PauseRecorder()
    seen: list[Any] = []

    def operator(now: float) -> None:  # reviews the evidence, then `buddy unlock`
        got = worker.store.system_lock()
        if got is not None and hook.paused:
            seen.append(got)
            unlock(worker.store)

    clock.on_sleep.append(operator)
    try:
        _, result = worker.run(plan, options(tmp_path, mode=Mode.LIVE), hooks=[hook], clock=clock)
    finally:
        unlock(worker.store)

    (auto,) = seen
    assert auto.reason.startswith("unsafe_escalation in wave 1") and auto.by.startswith("buddy monitor")
    assert auto.evidence["live_executions"] == 5 and auto.evidence["drift"] > 0.4
    assert sorted(auto.evidence["tasks"]) == [f"w{i}" for i in range(5)]
    assert [p.kind for p in hook.paused] == ["lock"] and hook.paused[0].wave == 2
    anomalies = [a for r in hook.reports if r is not None for a in r.anomalies]
    assert [(a.type, a.severity, a.action) for a in anomalies if a.type == "unsafe_escalation"] == [
        ("unsafe_escalation", 7, "lock")
    ]
    # wave 2 ran after the unlock, live
    assert (
        result.outcomes["next"].status is TaskStatus.SUCCEEDED and result.outcomes["next"].mode is Mode.LIVE
    )
    assert "system_locked" in events(worker, result.campaign_id)


def test_auto_lock_false_reports_the_escalation_and_goes_on(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(failing_writes(tmp_path), tmp_path)
    hook = PauseRecorder()
    _, result = worker.run(
        plan, options(tmp_path, mode=Mode.LIVE, auto_lock=False), hooks=[hook], clock=FakeClock()
    )
    assert worker.store.system_lock() is None and hook.paused == []
    assert result.outcomes["next"].status is TaskStatus.SUCCEEDED
    assert any(a.type == "unsafe_escalation" for r in hook.reports if r is not None for a in r.anomalies)


def test_harmless_tools_never_lock(worker: Fleet, tmp_path: Path) -> None:
    lines = [  # the plan is sure of them (0.95) and every one fails: LOW risk, no effect
        {"task_id": f"n{i}", "tool": "flaky", "args": {"fail_first": 99}, "predicted_success": 0.95}
        for i in range(6)
    ]
    plan = worker.plan(lines, tmp_path)
    hook = PauseRecorder()
    _, result = worker.run(plan, options(tmp_path, mode=Mode.LIVE), hooks=[hook], clock=FakeClock())
    assert {o.status for o in result.outcomes.values()} == {TaskStatus.FAILED}
    assert worker.store.system_lock() is None and hook.paused == []
    assert not any(a.type == "unsafe_escalation" for r in hook.reports if r is not None for a in r.anomalies)
