"""Basic built-in tools: ``noop``, ``sleep`` and ``flaky``, and helpers the other built-ins share.

``noop`` does nothing, ``sleep`` waits (it honours the call's deadline) and ``flaky`` fails
retryably on its first attempts: together they rehearse scheduling, timeouts and retries
without touching anything.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from buddy.errors import RetryableToolError, ToolTimeoutError
from buddy.models import Risk
from buddy.tools import RetryPolicy, ToolContext, tool

#: Largest text (in bytes, UTF-8) a built-in puts in a result: stdout, stderr, HTTP bodies.
MAX_TEXT_BYTES = 64 * 1024

#: The retry policy of built-ins that may fail transiently: 3 attempts, 0.5 s doubling, at most 30 s.
DEFAULT_RETRY = RetryPolicy(max_attempts=3, backoff="exponential", initial_s=0.5, max_s=30.0)

#: The retry policy of built-ins that never fail transiently or must not run twice: one attempt.
NO_RETRY = RetryPolicy(max_attempts=1)


def remaining_s(ctx: ToolContext) -> float | None:
    """Seconds left before ``ctx.deadline`` (may be ≤ 0), or None when the call has no deadline."""
    return None if ctx.deadline is None else ctx.deadline - time.monotonic()


def time_budget(ctx: ToolContext, timeout_s: float) -> tuple[float, bool]:
    """The seconds a call may take: ``timeout_s`` or, when sooner, what is left of ``ctx.deadline``.

    The flag is True when the deadline is the binding limit (running out of time is then a
    :class:`ToolTimeoutError`, not a retryable timeout). Raises :class:`ToolTimeoutError`
    when the deadline has already passed.
    """
    left = remaining_s(ctx)
    if left is None or left >= timeout_s:
        return timeout_s, False
    if left <= 0:
        raise ToolTimeoutError("the call's deadline passed before it started")
    return left, True


def head_text(data: bytes, limit: int = MAX_TEXT_BYTES) -> str:
    """The first ``limit`` bytes of ``data`` decoded as UTF-8 (undecodable bytes become U+FFFD)."""
    return _decode(data[:limit])


def tail_text(data: bytes, limit: int = MAX_TEXT_BYTES) -> str:
    """The last ``limit`` bytes of ``data`` decoded as UTF-8 (undecodable bytes become U+FFFD)."""
    return _decode(data[-limit:] if len(data) > limit else data)


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NoopArgs(_Args):
    """``noop`` takes no arguments."""


class NoopResult(BaseModel):
    """``noop`` returns an empty object."""


def _noop_mock(args: NoopArgs) -> NoopResult:
    """Synthetic result: the same empty object the live call returns."""
    return NoopResult()


def _noop_dry_run(args: NoopArgs, ctx: ToolContext) -> dict[str, object]:
    return {"would_run": "noop", "effect": "none"}


@tool(
    "noop",
    args=NoopArgs,
    result=NoopResult,
    description="Do nothing and succeed.",
    risk=Risk.LOW,
    idempotent=True,
    timeout_s=10.0,
    retry=DEFAULT_RETRY,
    mock=_noop_mock,
    dry_run=_noop_dry_run,
    expected_duration=lambda args: 0.0,
)
def noop(args: NoopArgs, ctx: ToolContext) -> NoopResult:
    """Do nothing and succeed."""
    return NoopResult()


class SleepArgs(_Args):
    """``seconds``: how long to wait, 0–3600."""

    seconds: float = Field(ge=0.0, le=3600.0)


class SleepResult(BaseModel):
    """``slept_s``: seconds actually waited (monotonic clock)."""

    slept_s: float


def _sleep_mock(args: SleepArgs) -> SleepResult:
    """Synthetic result: reports ``seconds`` as slept, without waiting."""
    return SleepResult(slept_s=args.seconds)


def _sleep_dry_run(args: SleepArgs, ctx: ToolContext) -> dict[str, object]:
    left = remaining_s(ctx)
    return {
        "would_sleep_s": args.seconds,
        "deadline_in_s": left,
        "would_time_out": left is not None and left < args.seconds,
    }


@tool(
    "sleep",
    args=SleepArgs,
    result=SleepResult,
    description="Wait the given number of seconds.",
    risk=Risk.LOW,
    idempotent=True,
    timeout_s=3610.0,
    timeout_of=lambda args: args.seconds + 10.0,
    retry=NO_RETRY,  # nothing in a sleep fails retryably
    mock=_sleep_mock,
    dry_run=_sleep_dry_run,
    expected_duration=lambda args: args.seconds,
)
def sleep(args: SleepArgs, ctx: ToolContext) -> SleepResult:
    """Wait ``args.seconds`` seconds.

    Raises :class:`ToolTimeoutError` (after waiting until the deadline) when ``ctx.deadline``
    comes before the wait would end.
    """
    start = time.monotonic()
    left = remaining_s(ctx)
    if left is not None and left < args.seconds:
        time.sleep(max(0.0, left))
        raise ToolTimeoutError(
            f"sleep of {args.seconds:g} s stopped at the call's deadline after "
            f"{time.monotonic() - start:.3f} s"
        )
    time.sleep(args.seconds)
    return SleepResult(slept_s=time.monotonic() - start)


class FlakyArgs(_Args):
    """``fail_first``: how many first attempts fail; ``seconds``: wait before each outcome, 0–600."""

    fail_first: int = Field(ge=0)
    seconds: float = Field(default=0.0, ge=0.0, le=600.0)


class FlakyResult(BaseModel):
    """``attempts``: the attempt number that succeeded (``ctx.attempt``)."""

    attempts: int


def _flaky_mock(args: FlakyArgs) -> FlakyResult:
    """Synthetic result: reports success on attempt ``fail_first + 1``, without failing."""
    return FlakyResult(attempts=args.fail_first + 1)


def _flaky_dry_run(args: FlakyArgs, ctx: ToolContext) -> dict[str, object]:
    return {
        "attempt": ctx.attempt,
        "would_fail": ctx.attempt <= args.fail_first,
        "succeeds_on_attempt": args.fail_first + 1,
        "seconds": args.seconds,
    }


@tool(
    "flaky",
    args=FlakyArgs,
    result=FlakyResult,
    description="Fail retryably on the first attempts, then succeed (a retry rehearsal).",
    risk=Risk.LOW,
    idempotent=True,
    timeout_s=610.0,
    timeout_of=lambda args: args.seconds + 10.0,
    retry=DEFAULT_RETRY,
    mock=_flaky_mock,
    dry_run=_flaky_dry_run,
    expected_duration=lambda args: args.seconds,
)
def flaky(args: FlakyArgs, ctx: ToolContext) -> FlakyResult:
    """Wait ``args.seconds``, then fail while ``ctx.attempt <= args.fail_first``, else succeed.

    Raises :class:`RetryableToolError` (``error_type`` ``FlakyError``) on the failing attempts
    and :class:`ToolTimeoutError` when the wait would pass ``ctx.deadline``.
    """
    if args.seconds:
        sleep.run(SleepArgs(seconds=args.seconds), ctx)
    if ctx.attempt <= args.fail_first:
        raise RetryableToolError(
            f"flaky: attempt {ctx.attempt} fails (the first {args.fail_first} do)",
            error_type="FlakyError",
        )
    return FlakyResult(attempts=ctx.attempt)
