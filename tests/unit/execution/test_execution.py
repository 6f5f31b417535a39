"""Executor.run_batch: claims, redelivery, modes, errors as outcomes, retries, rollback, the lock,
pauses and cancels.

Each test runs on fakeredis and on the session's real Redis (the ``store`` fixture) with a
private :class:`ToolRegistry` of test tools that count their calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from buddy.errors import RetryableToolError, ToolDeniedError, ToolError, ToolTimeoutError
from buddy.execution.executor import BatchResult, Executor
from buddy.models import Mode, Outcome, TaskSpec, TaskStatus
from buddy.state.claims import Claim, parse
from buddy.state.keys import Keys
from buddy.state.store import Store
from buddy.tools import RetryPolicy, ToolContext, ToolRegistry, default_registry, tool

CID = "c1"
WAVE = 1
AGENT = "a1"


class NArgs(BaseModel):
    n: int = 0
    path: str = ""


class NResult(BaseModel):
    n: int = 0


class Tools:
    """A private registry of test tools; ``calls`` lists ``(tool, task_id, attempt)`` per live run."""

    def __init__(self, store: Store) -> None:
        self.reg = ToolRegistry()
        self.reg.register(default_registry().get("file.append"))
        self.store = store
        self.calls: list[tuple[str, str, int]] = []
        self.seen: dict[str, dict[str, Outcome]] = {}
        self.fail_first = 1
        reg = self.reg
        calls = self.calls
        retry = RetryPolicy(max_attempts=3, backoff="exponential", initial_s=0.5, max_s=30.0)

        def record(name: str, ctx: ToolContext) -> None:
            calls.append((name, ctx.task_id, ctx.attempt))

        @tool(
            "t.ok",
            args=NArgs,
            result=NResult,
            registry=reg,
            idempotent=True,
            mock=lambda a: {"n": -1},
            dry_run=lambda a, ctx: {"would_set": a.n},
        )
        def ok(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.ok", ctx)
            return NResult(n=args.n)

        @tool("t.fail", args=NArgs, result=NResult, registry=reg, idempotent=True)
        def fail(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.fail", ctx)
            raise ToolError("it broke", error_type="Broken")

        @tool("t.crash", args=NArgs, result=NResult, registry=reg, idempotent=True)
        def crash(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.crash", ctx)
            return NResult(n=1 // args.n)

        @tool("t.flaky", args=NArgs, result=NResult, registry=reg, idempotent=True, retry=retry)
        def flaky(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.flaky", ctx)
            if ctx.attempt <= self.fail_first:
                raise RetryableToolError(f"attempt {ctx.attempt} flaked", error_type="Flake")
            return NResult(n=ctx.attempt)

        @tool(
            "t.nonretry",
            args=NArgs,
            result=NResult,
            registry=reg,
            idempotent=True,
            retry=RetryPolicy(max_attempts=3, non_retryable=("Flake",)),
        )
        def nonretry(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.nonretry", ctx)
            raise RetryableToolError("flaked", error_type="Flake")

        @tool("t.deny", args=NArgs, result=NResult, registry=reg, idempotent=True)
        def deny(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.deny", ctx)
            raise ToolDeniedError("not on the allow-list")

        @tool("t.slow", args=NArgs, result=NResult, registry=reg, idempotent=True)
        def slow(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.slow", ctx)
            raise ToolTimeoutError("ran past its timeout")

        @tool("t.badresult", args=NArgs, result=NResult, registry=reg, idempotent=True)
        def badresult(args: NArgs, ctx: ToolContext) -> dict[str, Any]:
            record("t.badresult", ctx)
            return {"n": "not a number"}

        def undo_write(args: NArgs, undo: dict[str, Any], ctx: ToolContext) -> None:
            Path(undo["path"]).write_text(undo["old"])

        @tool(
            "t.rev",
            args=NArgs,
            result=NResult,
            registry=reg,
            reversible=True,
            rollback=undo_write,
            retry=RetryPolicy(max_attempts=1),
        )
        def rev(args: NArgs, ctx: ToolContext) -> NResult:
            """Write ``new`` to the file, then fail."""
            record("t.rev", ctx)
            target = ctx.path(args.path)
            ctx.record_undo({"path": str(target), "old": target.read_text()})
            target.write_text("new")
            raise ToolError("failed after its effect")

        def bad_undo(args: NArgs, undo: dict[str, Any], ctx: ToolContext) -> None:
            raise OSError("disk gone")

        @tool("t.badrev", args=NArgs, result=NResult, registry=reg, reversible=True, rollback=bad_undo)
        def badrev(args: NArgs, ctx: ToolContext) -> NResult:
            record("t.badrev", ctx)
            ctx.record_undo({"x": 1})
            raise ToolError("failed after its effect")

        @tool("t.once", args=NArgs, result=NResult, registry=reg, idempotent=False)
        def once(args: NArgs, ctx: ToolContext) -> NResult:
            """A non-idempotent effect."""
            record("t.once", ctx)
            return NResult(n=args.n)

        @tool("t.probe", args=NArgs, result=NResult, registry=reg, idempotent=True)
        def probe(args: NArgs, ctx: ToolContext) -> NResult:
            """Look at Redis from inside a running task: what outcomes exist already?"""
            record("t.probe", ctx)
            self.seen[ctx.task_id] = self.store.outcomes(ctx.campaign_id)
            return NResult()


@pytest.fixture
def tools(store: Store) -> Tools:
    return Tools(store)


@pytest.fixture
def ex(store: Store, tools: Tools) -> Executor:
    return Executor(store, tools.reg, worker="w1", claim_ttl_s=600, clock=lambda: 1000.0)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., TaskSpec]:
    def make(task_id: str, tool_name: str, mode: Mode = Mode.LIVE, **args: Any) -> TaskSpec:
        return TaskSpec(task_id=task_id, tool=tool_name, args=args, mode=mode, workdir=str(tmp_path))

    return make


def dispatch(store: Store, *specs: TaskSpec, wave: int = WAVE) -> None:
    """What the coordinator does before it sends a batch: the campaign runs, the tasks are recorded."""
    if not store.campaign(CID):
        store.create_campaign(CID, {"status": "running"})
    store.record_dispatch(CID, wave, [s.model_dump(mode="json") for s in specs])


def run(ex: Executor, *specs: TaskSpec, delivery: str = "") -> BatchResult:
    dispatch(ex.store, *specs)
    return ex.run_batch(CID, WAVE, AGENT, list(specs), delivery=delivery)


def stored(store: Store, task_id: str) -> Outcome:
    return store.outcomes(CID)[task_id]


def claim_of(store: Store, task_id: str) -> Claim:
    got = parse(store.begin_batch(CID, [task_id]).claims[task_id])
    assert got is not None
    return got


# -- success and redelivery ----------------------------------------------------------------------


def test_successful_batch_writes_outcomes(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    res = run(ex, make_spec("t1", "t.ok", n=5), make_spec("t2", "t.ok", n=6))
    assert res.done == [("t1", "succeeded"), ("t2", "succeeded")]
    assert res.retry == []
    assert [c[:2] for c in tools.calls] == [("t.ok", "t1"), ("t.ok", "t2")]
    o = stored(store, "t1")
    assert o.status is TaskStatus.SUCCEEDED
    assert o.attempts == 1
    assert o.mode is Mode.LIVE
    assert o.worker == "w1"
    assert (o.campaign_id, o.agent_id, o.wave, o.tool) == (CID, AGENT, WAVE, "t.ok")
    assert o.result == {"n": 5}
    assert o.error_type is None and o.errors == []
    assert o.start_time is not None and o.end_time is not None
    assert o.start_time <= o.end_time
    assert o.duration_ms >= 0.0
    assert stored(store, "t2").result == {"n": 6}
    claim = claim_of(store, "t1")
    assert (claim.worker, claim.attempt, claim.started_at) == ("w1", 1, 1000.0)


def test_wave_and_agent_counters_after_a_mixed_batch(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    tools.fail_first = 99
    run(
        ex,
        make_spec("ok", "t.ok"),
        make_spec("fail", "t.fail"),
        make_spec("unknown", "no.such.tool"),
        make_spec("flaky", "t.flaky"),
        make_spec("once", "t.once"),
        make_spec("mock", "t.ok", mode=Mode.MOCK),
    )
    outs = store.outcomes(CID)
    assert set(outs) == {"ok", "fail", "unknown", "once", "mock"}
    w = store.wave_counters(CID, WAVE)
    assert w["running"] == "0"
    assert w["done"] == str(len(outs))
    assert w["failed"] == "2"
    assert w["retries"] == "1"
    info = store.agent_info(AGENT)
    assert info.in_flight == 0
    assert (info.processed, info.failed) == (5, 2)


def test_redelivered_batch_returns_stored_outcomes(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    specs = [make_spec("t1", "t.ok", n=1), make_spec("t2", "t.once", n=2), make_spec("t3", "t.fail")]
    first = run(ex, *specs, delivery="msg-1:0")
    before = store.outcomes(CID)
    n_calls = len(tools.calls)
    n_events = len(store.events(CID))

    again = Executor(store, tools.reg, worker="w2", clock=lambda: 2000.0)
    second = again.run_batch(CID, WAVE, AGENT, specs, delivery="msg-1:0")

    assert sorted(second.done) == sorted(first.done)
    assert store.outcomes(CID) == before  # unchanged: same start_time, same worker
    assert before["t1"].worker == "w1"
    assert len(tools.calls) == n_calls  # no tool ran again
    assert len(store.events(CID)) == n_events
    assert store.wave_counters(CID, WAVE)["done"] == "3"


# -- modes and the lock ----------------------------------------------------------------------------


def test_mock_mode_never_runs_the_tool(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    run(ex, make_spec("t1", "t.ok", mode=Mode.MOCK, n=5), make_spec("t2", "t.fail", mode=Mode.MOCK))
    assert tools.calls == []
    o = stored(store, "t1")
    assert (o.status, o.mode, o.result) == (TaskStatus.SUCCEEDED, Mode.MOCK, {"n": -1})
    # without a mock function the result model's defaults are the synthetic result
    assert stored(store, "t2").result == {"n": 0}
    assert stored(store, "t2").status is TaskStatus.SUCCEEDED


def test_dry_run_returns_the_preview(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    run(ex, make_spec("t1", "t.ok", mode=Mode.DRY_RUN, n=7), make_spec("t2", "t.fail", mode=Mode.DRY_RUN))
    assert tools.calls == []
    o = stored(store, "t1")
    assert (o.status, o.mode, o.result) == (TaskStatus.SUCCEEDED, Mode.DRY_RUN, {"would_set": 7})
    assert stored(store, "t2").result == {"would_run": "t.fail", "args": {"n": 0, "path": ""}}


def test_system_lock_holds_live_tasks_and_lets_the_others_run(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    store.r.set(Keys.system_lock(), "incident 42")  # a plain string (set by hand) is a reason too
    specs = [make_spec("t1", "t.ok", n=3), make_spec("t2", "t.once"), make_spec("t3", "t.ok", Mode.DRY_RUN)]
    res = run(ex, *specs)
    assert tools.calls == []  # nothing live ran, and nothing ran mock in its place
    assert res.held == ["t1", "t2"]
    assert [s.task_id for s in res.retry] == ["t1", "t2"] and res.retry_delay_s >= 1.0
    assert set(store.outcomes(CID)) == {"t3"}  # held tasks have no outcome...
    assert stored(store, "t3").mode is Mode.DRY_RUN
    assert store.begin_batch(CID, ["t1", "t2"]).claims == {}  # ...and no claim
    assert store.wave_counters(CID, WAVE).get("running", "0") == "0"
    store.clear_system_lock()
    again = ex.run_batch(CID, WAVE, AGENT, res.retry)  # the retry, after `buddy unlock`
    assert sorted(again.done) == [("t1", "succeeded"), ("t2", "succeeded")]
    assert stored(store, "t1").mode is Mode.LIVE and stored(store, "t1").result == {"n": 3}


def test_a_lock_set_during_a_batch_holds_its_next_live_task(store: Store, tools: Tools, make_spec) -> None:
    ex = Executor(store, tools.reg, worker="w1", claim_ttl_s=600, clock=lambda: 1000.0)
    original = ex.attempts.execute

    def execute(r: Any) -> Any:
        got = original(r)
        store.r.set(Keys.system_lock(), '{"reason": "freeze", "by": "ops@h"}')
        return got

    ex.attempts.execute = execute  # type: ignore[method-assign]
    res = run(ex, make_spec("a", "t.ok", n=1), make_spec("b", "t.ok", n=2))
    assert res.done == [("a", "succeeded")] and res.held == ["b"]
    assert set(store.outcomes(CID)) == {"a"}


def test_a_paused_campaign_holds_every_task(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    from buddy.state.control import PauseRequest

    dispatch(store, make_spec("m", "t.ok", Mode.MOCK))
    store.request_pause(CID, PauseRequest(reason="look first", by="ops@h"))
    res = run(ex, make_spec("m", "t.ok", Mode.MOCK), make_spec("l", "t.ok"))
    assert res.held == ["m", "l"] and store.outcomes(CID) == {}
    store.update_campaign(CID, status="paused")  # what the coordinator records meanwhile
    assert ex.run_batch(CID, WAVE, AGENT, res.retry).held == ["m", "l"]  # not refused
    assert store.clear_pause(CID)
    assert sorted(ex.run_batch(CID, WAVE, AGENT, res.retry).done) == [("l", "succeeded"), ("m", "succeeded")]


def test_a_cancelled_task_ends_cancelled_without_running(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    dispatch(store, make_spec("x", "t.ok"))
    store.request_cancel(CID, ["x", "y"], by="ops@h")
    res = run(ex, make_spec("x", "t.ok"), make_spec("y", "t.ok", Mode.MOCK), make_spec("z", "t.ok"))
    assert tools.calls == [("t.ok", "z", 1)]
    assert sorted(res.done) == [("x", "cancelled"), ("y", "cancelled"), ("z", "succeeded")]
    o = stored(store, "x")
    assert o.status is TaskStatus.CANCELLED and o.error_type == "cancelled" and o.attempts == 0
    assert store.wave_counters(CID, WAVE)["status:cancelled"] == "2"


def test_a_held_task_of_an_ended_campaign_is_not_dead_lettered(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    refused: list[Any] = []
    ex.on_refused = lambda *a: refused.append(a)
    spec = make_spec("x", "t.ok")
    store.request_cancel(CID, ["x"], by="ops@h")
    run(ex, spec)
    store.update_campaign(CID, status="aborted")
    assert ex.run_batch(CID, WAVE, AGENT, [spec]).done == [("x", "cancelled")]
    assert refused == []


def test_mode_reason_is_carried_into_the_outcome(store: Store, ex: Executor, make_spec) -> None:
    spec = make_spec("t1", "t.ok", mode=Mode.DRY_RUN).model_copy(update={"mode_reason": "confidence 0.2"})
    run(ex, spec)
    assert stored(store, "t1").mode_reason == "confidence 0.2"


# -- failures are data -----------------------------------------------------------------------------


def test_tool_error_is_a_failed_outcome(store: Store, ex: Executor, make_spec) -> None:
    res = run(ex, make_spec("t1", "t.fail"), make_spec("t2", "t.ok"))
    assert res.done == [("t1", "failed"), ("t2", "succeeded")]
    o = stored(store, "t1")
    assert o.status is TaskStatus.FAILED
    assert (o.error_type, o.error_msg) == ("Broken", "it broke")
    assert o.attempts == 1
    assert [(e.attempt, e.error_type) for e in o.errors] == [(1, "Broken")]
    assert o.rolled_back is False


def test_unexpected_exception_is_a_failed_outcome(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    res = run(ex, make_spec("t1", "t.crash", n=0), make_spec("t2", "t.ok"))
    assert res.done == [("t1", "failed"), ("t2", "succeeded")]
    o = stored(store, "t1")
    assert o.status is TaskStatus.FAILED
    assert o.error_type == "ZeroDivisionError"
    assert o.error_msg is not None and "division" in o.error_msg
    assert ("t.ok", "t2", 1) in tools.calls


def test_denied_and_timed_out(store: Store, ex: Executor, make_spec) -> None:
    run(ex, make_spec("d", "t.deny"), make_spec("s", "t.slow"))
    d, s = stored(store, "d"), stored(store, "s")
    assert (d.status, d.error_type) == (TaskStatus.DENIED, "ToolDeniedError")
    assert (s.status, s.error_type) == (TaskStatus.TIMED_OUT, "ToolTimeoutError")


def test_result_not_matching_the_model(store: Store, ex: Executor, make_spec) -> None:
    run(ex, make_spec("t1", "t.badresult"))
    o = stored(store, "t1")
    assert (o.status, o.error_type) == (TaskStatus.FAILED, "ResultValidationError")
    assert o.result is None


def test_unknown_tool_and_invalid_args(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    res = run(ex, make_spec("u", "no.such.tool"), make_spec("i", "t.ok", n="seven"))
    assert sorted(res.done) == [("i", "failed"), ("u", "failed")]
    assert tools.calls == []
    u, i = stored(store, "u"), stored(store, "i")
    assert u.status is TaskStatus.FAILED and u.error_type == "UnknownTool"
    assert u.error_msg is not None and "no.such.tool" in u.error_msg
    assert i.status is TaskStatus.FAILED and i.error_type == "InvalidArgs"
    assert i.error_msg is not None and "n" in i.error_msg
    # nothing was claimed, so nothing counts as running
    assert store.begin_batch(CID, ["u", "i"]).claims == {}
    assert store.wave_counters(CID, WAVE).get("running", "0") == "0"


# -- retries ---------------------------------------------------------------------------------------


def test_retryable_error_schedules_a_retry(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    spec = make_spec("t1", "t.flaky")
    res = run(ex, spec, make_spec("t2", "t.ok"))
    assert res.retry == [spec]
    assert res.retry_delay_s == pytest.approx(0.5)  # the policy: 0.5 s after attempt 1
    assert res.done == [("t2", "succeeded")]
    assert "t1" not in store.outcomes(CID)
    claim = claim_of(store, "t1")
    assert claim.state == "retry_wait"
    assert claim.attempt == 1
    assert [e["error_type"] for e in claim.errors] == ["Flake"]
    w = store.wave_counters(CID, WAVE)
    assert (w["running"], w["retries"]) == ("0", "1")

    # the Celery retry runs the same spec again: attempt 2 succeeds and remembers attempt 1
    res2 = run(ex, *res.retry)
    assert res2.done == [("t1", "succeeded")] and res2.retry == []
    o = stored(store, "t1")
    assert o.attempts == 2
    assert o.result == {"n": 2}
    assert [(e.attempt, e.error_type) for e in o.errors] == [(1, "Flake")]
    assert [c for c in tools.calls if c[0] == "t.flaky"] == [("t.flaky", "t1", 1), ("t.flaky", "t1", 2)]
    assert store.wave_counters(CID, WAVE)["running"] == "0"


def test_retries_exhausted_fail_with_every_error(store: Store, tools: Tools, ex: Executor, make_spec) -> None:
    tools.fail_first = 99
    res = run(ex, make_spec("t1", "t.flaky"))
    assert res.retry_delay_s == pytest.approx(0.5)
    res = run(ex, *res.retry)
    assert res.retry_delay_s == pytest.approx(1.0)  # exponential: 0.5 * 2
    res = run(ex, *res.retry)
    assert res.retry == []
    assert res.done == [("t1", "failed")]
    o = stored(store, "t1")
    assert o.status is TaskStatus.FAILED
    assert o.attempts == 3
    assert o.error_type == "Flake"
    assert [(e.attempt, e.error_type) for e in o.errors] == [(1, "Flake"), (2, "Flake"), (3, "Flake")]
    w = store.wave_counters(CID, WAVE)
    assert (w["running"], w["retries"], w["done"]) == ("0", "2", "1")


def test_non_retryable_error_type_is_not_retried(store: Store, ex: Executor, make_spec) -> None:
    res = run(ex, make_spec("t1", "t.nonretry"))
    assert res.retry == []
    assert stored(store, "t1").status is TaskStatus.FAILED


# -- rollback --------------------------------------------------------------------------------------


def test_reversible_tool_is_rolled_back_on_failure(
    store: Store, tools: Tools, ex: Executor, make_spec, tmp_path: Path
) -> None:
    target = tmp_path / "f.txt"
    target.write_text("original")
    run(ex, make_spec("t1", "t.rev", path="f.txt"))
    assert ("t.rev", "t1", 1) in tools.calls
    assert target.read_text() == "original"
    o = stored(store, "t1")
    assert o.status is TaskStatus.ROLLED_BACK  # failed, and its partial effect undone
    assert o.rolled_back is True and o.error_type == "ToolError"
    # the undo record was persisted before the effect, with what a later compensation needs
    record = store.undo_data(CID)["t1"]
    assert record["undo"] == {"path": str(target), "old": "original"}
    assert record["tool"] == "t.rev" and record["args"] == {"path": "f.txt"} and record["agent_id"] == "a1"
    # the worker's transitions went to Redis with the outcome
    moves = [(t.from_state.value, t.to_state.value) for t in store.pop_transitions(CID)]
    assert moves == [("queued", "running"), ("running", "failed"), ("failed", "rolled_back")]


def test_failed_rollback_is_reported(store: Store, ex: Executor, make_spec) -> None:
    run(ex, make_spec("t1", "t.badrev"))
    o = stored(store, "t1")
    assert o.status is TaskStatus.FAILED
    assert o.rolled_back is False
    assert [e.error_type for e in o.errors] == ["ToolError", "RollbackFailed"]


def test_reversible_tool_in_dry_run_records_nothing(
    store: Store, tools: Tools, ex: Executor, make_spec, tmp_path: Path
) -> None:
    (tmp_path / "f.txt").write_text("original")
    run(ex, make_spec("t1", "t.rev", mode=Mode.DRY_RUN, path="f.txt"))
    assert tools.calls == []
    assert store.undo_data(CID) == {}
    assert (tmp_path / "f.txt").read_text() == "original"


# -- an earlier attempt that died ------------------------------------------------------------------


def died(store: Store, task_id: str, attempt: int = 1) -> None:
    """Simulate an attempt that claimed the task and died without an outcome."""
    claim = Claim(worker="w0", attempt=attempt, started_at=500.0, state="running", delivery="msg-1:0")
    store.r.set(Keys.claim(CID, task_id), claim.model_dump_json())


def test_stale_running_claim_reruns_an_idempotent_tool(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    died(store, "t1")
    res = run(ex, make_spec("t1", "t.ok", n=4), delivery="msg-1:0")
    assert res.done == [("t1", "succeeded")]
    assert tools.calls == [("t.ok", "t1", 2)]
    o = stored(store, "t1")
    assert o.attempts == 2
    assert o.result == {"n": 4}
    assert [(e.attempt, e.error_type) for e in o.errors] == [(1, "WorkerLost")]
    assert "w0" in o.errors[0].error_msg


def test_stale_running_claim_of_a_non_idempotent_tool_needs_review(
    store: Store, ex: Executor, make_spec, tmp_path: Path
) -> None:
    log = tmp_path / "log.txt"
    log.write_text("before\n")
    died(store, "t1")
    res = run(ex, make_spec("t1", "file.append", path="log.txt", line="again"), delivery="msg-1:0")
    assert res.done == [("t1", "needs_review")]
    assert log.read_text() == "before\n"  # not run again
    o = stored(store, "t1")
    assert o.status is TaskStatus.NEEDS_REVIEW
    assert o.error_type == "WorkerLost"
    assert o.error_msg is not None and "buddy review" in o.error_msg
    assert [e.error_type for e in o.errors] == ["WorkerLost"]


def test_stale_running_claim_of_a_non_idempotent_tool_in_dry_run_runs(
    store: Store, ex: Executor, make_spec, tmp_path: Path
) -> None:
    died(store, "t1")
    run(ex, make_spec("t1", "file.append", mode=Mode.DRY_RUN, path="log.txt", line="x"))
    o = stored(store, "t1")
    assert o.status is TaskStatus.SUCCEEDED
    assert o.attempts == 2
    assert not (tmp_path / "log.txt").exists()


def test_non_idempotent_live_outcome_is_written_before_the_next_task(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    run(ex, make_spec("t1", "t.once", n=1), make_spec("t2", "t.probe"))
    seen = tools.seen["t2"]
    assert "t1" in seen
    assert seen["t1"].status is TaskStatus.SUCCEEDED
    assert seen["t1"].result == {"n": 1}
    assert set(store.outcomes(CID)) == {"t1", "t2"}
    assert store.wave_counters(CID, WAVE)["running"] == "0"


def test_non_idempotent_live_file_append_runs_once(
    store: Store, ex: Executor, make_spec, tmp_path: Path
) -> None:
    spec = make_spec("t1", "file.append", path="log.txt", line="hello")
    run(ex, spec)
    run(ex, spec)  # redelivered after it finished: the stored outcome stands
    assert (tmp_path / "log.txt").read_text() == "hello\n"
    assert stored(store, "t1").result == {"bytes": 6}


def test_empty_batch(store: Store, ex: Executor) -> None:
    res = run(ex)
    assert (res.done, res.retry, res.retry_delay_s) == ([], [], 0.0)
    assert store.events(CID) == []


def test_a_tool_past_its_timeout_is_stopped_and_ends_timed_out(store: Store) -> None:
    """The worker's alarm (prefork/solo: the main thread) stops a tool that ignores its deadline."""
    import time as _time

    from pydantic import BaseModel

    from buddy.tools import ToolRegistry
    from buddy.tools import tool as register

    class NoArgs(BaseModel):
        pass

    reg = ToolRegistry()
    ran_to_end: list[bool] = []

    def stubborn(args: NoArgs, ctx: Any) -> NoArgs:
        _time.sleep(30)  # ignores ctx.deadline
        ran_to_end.append(True)
        return NoArgs()

    register("t.stubborn", args=NoArgs, result=NoArgs, timeout_s=0.2, idempotent=True, registry=reg)(stubborn)
    ex = Executor(store, reg, worker="w1")
    t0 = _time.monotonic()
    spec = TaskSpec(task_id="t1", tool="t.stubborn", mode=Mode.LIVE)
    dispatch(store, spec)
    ex.run_batch(CID, 1, "a1", [spec])
    elapsed = _time.monotonic() - t0
    o = stored(store, "t1")
    assert o.status is TaskStatus.TIMED_OUT and o.error_type == "ToolTimeoutError"
    assert ran_to_end == [] and elapsed < 5  # stopped after timeout + grace (1.2 s), not 30 s


def test_the_tuners_attempts_apply_below_the_contracts(
    store: Store, tools: Tools, ex: Executor, make_spec
) -> None:
    once = make_spec("t1", "t.flaky").model_copy(update={"max_attempts": 1})  # the contract allows 3
    res = run(ex, once)
    assert res.retry == [] and stored(store, "t1").status is TaskStatus.FAILED
    more = make_spec("t2", "t.flaky").model_copy(update={"max_attempts": 9})  # above: the contract's 3 win
    tools.fail_first = 99
    for _ in range(5):
        res = run(ex, more) if not res.retry else ex.run_batch(CID, WAVE, AGENT, res.retry)
        if not res.retry:
            break
    assert stored(store, "t2").attempts == 3
    # a spec without them serializes as before: nothing in the message
    assert "max_attempts" not in make_spec("t3", "t.ok").model_dump(mode="json")


def test_the_tuners_timeout_applies_below_the_contracts(store: Store) -> None:
    import time as _time

    from buddy.tools import ToolRegistry
    from buddy.tools import tool as register

    reg = ToolRegistry()

    def slow(args: NArgs, ctx: Any) -> NResult:
        _time.sleep(3)
        return NResult()

    register("t.slowish", args=NArgs, result=NResult, timeout_s=60, idempotent=True, registry=reg)(slow)
    ex = Executor(store, reg, worker="w1")
    spec = TaskSpec(task_id="t1", tool="t.slowish", mode=Mode.LIVE, timeout_s=0.3)
    dispatch(store, spec)
    t0 = _time.monotonic()
    ex.run_batch(CID, 1, "a1", [spec])
    assert stored(store, "t1").status is TaskStatus.TIMED_OUT and _time.monotonic() - t0 < 2.5
