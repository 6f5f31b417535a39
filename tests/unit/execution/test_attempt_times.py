"""Every attempt's real start time and duration: on the outcome, on each failed attempt's
error, and on each line of ``tool_execution_log.jsonl``; none for a task that never ran.

Each test runs on fakeredis and on the session's real Redis (the ``store`` fixture). The test
tools wait :data:`WAIT_S` before they return or raise, so a duration of 0 cannot pass for real.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from buddy.errors import RetryableToolError, ToolDeniedError, ToolError, ToolTimeoutError
from buddy.execution.executor import Executor
from buddy.models import AttemptError, Mode, Outcome, Risk, TaskSpec, TaskStatus
from buddy.outputs.writer import tool_log_entries
from buddy.state.store import Store
from buddy.tools import RetryPolicy, ToolContext, ToolRegistry, tool

CID = "c-times"
WAVE = 1
AGENT = "a1"
#: Seconds each test tool waits before it returns or raises.
WAIT_S = 0.03
WAIT_MS = WAIT_S * 1000


class Args(BaseModel):
    fail_first: int = 0


class Result(BaseModel):
    attempt: int = 0


def registry() -> ToolRegistry:
    reg = ToolRegistry()
    twice = RetryPolicy(max_attempts=2, initial_s=0.0)

    @tool("t.ok", args=Args, result=Result, registry=reg, idempotent=True)
    def ok(args: Args, ctx: ToolContext) -> Result:
        time.sleep(WAIT_S)
        return Result(attempt=ctx.attempt)

    @tool("t.fail", args=Args, result=Result, registry=reg, idempotent=True)
    def fail(args: Args, ctx: ToolContext) -> Result:
        time.sleep(WAIT_S)
        raise ToolError("it broke", error_type="Broken")

    @tool("t.slow", args=Args, result=Result, registry=reg, idempotent=True)
    def slow(args: Args, ctx: ToolContext) -> Result:
        time.sleep(WAIT_S)
        raise ToolTimeoutError("ran past its timeout")

    @tool("t.deny", args=Args, result=Result, registry=reg, idempotent=True)
    def deny(args: Args, ctx: ToolContext) -> Result:
        time.sleep(WAIT_S)
        raise ToolDeniedError("not on the allow-list")

    @tool("t.flaky", args=Args, result=Result, registry=reg, idempotent=True, retry=twice)
    def flaky(args: Args, ctx: ToolContext) -> Result:
        """Fails retryably on the first ``fail_first`` attempts (at most two are made)."""
        time.sleep(WAIT_S)
        if ctx.attempt <= args.fail_first:
            raise RetryableToolError(f"attempt {ctx.attempt} flaked", error_type="Flake")
        return Result(attempt=ctx.attempt)

    @tool("t.high", args=Args, result=Result, registry=reg, idempotent=True, risk=Risk.HIGH)
    def high(args: Args, ctx: ToolContext) -> Result:
        time.sleep(WAIT_S)
        return Result(attempt=ctx.attempt)

    return reg


@pytest.fixture
def ex(store: Store) -> Executor:
    return Executor(store, registry(), worker="w1", claim_ttl_s=600)


def spec(task_id: str, tool_name: str, fail_first: int = 0) -> TaskSpec:
    return TaskSpec(task_id=task_id, tool=tool_name, args={"fail_first": fail_first}, mode=Mode.LIVE)


def run(ex: Executor, *specs: TaskSpec) -> list[TaskSpec]:
    """Dispatch and run ``specs`` as one batch; returns the specs sent back for a retry."""
    if not ex.store.campaign(CID):
        ex.store.create_campaign(CID, {"status": "running"})
    ex.store.record_dispatch(CID, WAVE, [s.model_dump(mode="json") for s in specs])
    return ex.run_batch(CID, WAVE, AGENT, list(specs)).retry


def until_done(ex: Executor, s: TaskSpec) -> Outcome:
    """Run ``s`` again while it comes back for a retry (a Celery retry, without the broker)."""
    for _ in range(5):
        if not run(ex, s):
            break
    return ex.store.outcomes(CID)[s.task_id]


def assert_ran(o: Outcome, before: datetime) -> None:
    """``o``'s last attempt started after ``before``, ended after it started, and took at least
    :data:`WAIT_MS` (its own clock and the wall clock agree within 50 ms)."""
    assert o.start_time is not None and o.end_time is not None, o
    assert before <= o.start_time <= o.end_time
    assert o.duration_ms >= WAIT_MS
    wall_ms = (o.end_time - o.start_time) / timedelta(milliseconds=1)
    assert abs(wall_ms - o.duration_ms) < 50


@pytest.mark.parametrize(
    ("tool_name", "status", "error_type"),
    [
        ("t.fail", TaskStatus.FAILED, "Broken"),
        ("t.slow", TaskStatus.TIMED_OUT, "ToolTimeoutError"),
        ("t.deny", TaskStatus.DENIED, "ToolDeniedError"),
    ],
)
def test_a_failed_attempt_has_its_real_start_and_duration(
    ex: Executor, tool_name: str, status: TaskStatus, error_type: str
) -> None:
    before = datetime.now(UTC)
    run(ex, spec("t1", tool_name))

    o = ex.store.outcomes(CID)["t1"]
    assert (o.status, o.attempts, o.error_type) == (status, 1, error_type)
    assert_ran(o, before)
    (e,) = o.errors
    assert e.attempt == 1 and e.start_time == o.start_time
    assert e.duration_ms is not None and WAIT_MS <= e.duration_ms <= o.duration_ms
    (line,) = tool_log_entries(o)
    assert (line.attempt, line.status, line.start_time, line.end_time, line.duration_ms) == (
        1,
        status,
        o.start_time,
        o.end_time,
        o.duration_ms,
    )


def test_retried_then_failed_shows_each_attempt_with_its_own_times(ex: Executor) -> None:
    before = datetime.now(UTC)
    o = until_done(ex, spec("t1", "t.flaky", fail_first=2))

    assert (o.status, o.attempts, o.error_type) == (TaskStatus.FAILED, 2, "Flake")
    assert_ran(o, before)
    first, last = o.errors
    assert (first.attempt, last.attempt) == (1, 2)
    assert first.start_time is not None and before <= first.start_time
    assert first.duration_ms is not None and first.duration_ms >= WAIT_MS
    assert o.start_time is not None and first.at < o.start_time  # attempt 2 started after attempt 1 failed
    assert last.start_time == o.start_time
    lines = tool_log_entries(o)
    assert [(x.attempt, x.status) for x in lines] == [(1, TaskStatus.FAILED), (2, TaskStatus.FAILED)]
    assert (lines[0].start_time, lines[0].end_time, lines[0].duration_ms) == (
        first.start_time,
        first.at,
        first.duration_ms,
    )
    assert (lines[1].start_time, lines[1].duration_ms) == (o.start_time, o.duration_ms)
    assert all(x.start_time is not None and x.duration_ms >= WAIT_MS for x in lines)


def test_retried_then_succeeded_keeps_the_failed_attempts_times(ex: Executor) -> None:
    before = datetime.now(UTC)
    o = until_done(ex, spec("t1", "t.flaky", fail_first=1))

    assert (o.status, o.attempts, o.result) == (TaskStatus.SUCCEEDED, 2, {"attempt": 2})
    assert_ran(o, before)
    (e,) = o.errors
    assert e.start_time is not None and o.start_time is not None and e.start_time < o.start_time
    assert e.duration_ms is not None and e.duration_ms >= WAIT_MS
    lines = tool_log_entries(o)
    assert [(x.attempt, x.status) for x in lines] == [(1, TaskStatus.FAILED), (2, TaskStatus.SUCCEEDED)]
    assert lines[0].start_time == e.start_time and lines[0].duration_ms == e.duration_ms


def test_a_task_that_never_ran_has_no_start_time_and_no_log_line(ex: Executor) -> None:
    """An unknown tool, and a HIGH live task without an approved record: decided by the worker
    without running the tool."""
    run(ex, spec("unknown", "t.missing"), spec("unapproved", "t.high"))

    got = ex.store.outcomes(CID)
    assert (got["unknown"].status, got["unknown"].error_type) == (TaskStatus.FAILED, "UnknownTool")
    assert (got["unapproved"].status, got["unapproved"].error_type) == (TaskStatus.DENIED, "approval_missing")
    for o in got.values():
        assert (o.start_time, o.duration_ms, o.attempts, o.errors) == (None, 0.0, 0, []), o.task_id
        assert o.end_time is not None  # when it was decided
        assert tool_log_entries(o) == []


def test_a_succeeded_attempt_has_its_real_start_and_duration(ex: Executor) -> None:
    before = datetime.now(UTC)
    run(ex, spec("t1", "t.ok"))
    o = ex.store.outcomes(CID)["t1"]
    assert (o.status, o.attempts, o.errors) == (TaskStatus.SUCCEEDED, 1, [])
    assert_ran(o, before)


def test_an_error_recorded_without_times_still_reads_and_says_it_has_none() -> None:
    """An attempt error kept before times were (a claim written by an older worker), or one
    of an attempt that died: no start time, duration 0 in the log."""
    at = datetime(2024, 1, 1, tzinfo=UTC)
    e = AttemptError.model_validate({"attempt": 1, "error_type": "WorkerLost", "error_msg": "gone", "at": at})
    assert (e.start_time, e.duration_ms) == (None, None)
    o = Outcome(
        task_id="t1",
        campaign_id=CID,
        agent_id=AGENT,
        wave=1,
        status=TaskStatus.SUCCEEDED,
        mode=Mode.LIVE,
        attempts=2,
        start_time=at + timedelta(seconds=5),
        end_time=at + timedelta(seconds=6),
        duration_ms=1000.0,
        tool="t.ok",
        errors=[e],
    )
    first, last = tool_log_entries(o)
    assert (first.attempt, first.start_time, first.end_time, first.duration_ms) == (1, None, at, 0.0)
    assert (last.attempt, last.start_time, last.duration_ms) == (2, o.start_time, 1000.0)


def test_a_rollback_error_joins_its_attempts_log_line() -> None:
    """Two errors of one attempt (the tool's, then its rollback's) are one line of the log."""
    at = datetime(2024, 1, 1, tzinfo=UTC)
    errors = [
        AttemptError(
            attempt=1, error_type="Broken", error_msg="it broke", at=at, start_time=at, duration_ms=5.0
        ),
        AttemptError(
            attempt=1,
            error_type="RollbackFailed",
            error_msg="disk gone",
            at=at,
            start_time=at,
            duration_ms=7.0,
        ),
    ]
    o = Outcome(
        task_id="t1", campaign_id=CID, agent_id=AGENT, wave=1, status=TaskStatus.SUCCEEDED, mode=Mode.LIVE,
        attempts=2, start_time=at, end_time=at, duration_ms=1.0, tool="t.ok", errors=errors,
    )  # fmt: skip
    first, last = tool_log_entries(o)
    assert (first.attempt, first.error_type, first.duration_ms) == (1, "Broken", 5.0)
    assert first.error_msg == "it broke (then RollbackFailed: disk gone)"
    assert last.attempt == 2
