"""One attempt of one task on a worker: the tool in its mode, under its fenced leases (live),
errors turned into outcomes, a failed reversible effect rolled back (README, "Execution").

:class:`AttemptRunner` is the part of :class:`buddy.execution.executor.Executor` that runs a claimed
task; it knows nothing of batches or claims. Tool errors become outcomes:
``ToolDeniedError`` → ``denied``, ``ToolTimeoutError`` → ``timed_out``, a retryable error with
attempts left → retried (the caller's Celery ``retry``, with the policy's backoff), a lease
found lost after the commit (``stale_commit``) → ``needs_review``, anything else → ``failed``.
A reversible tool that fails after recording undo data is rolled back while its leases are
still held; a rollback refused by a lost lease ends ``needs_review`` with both tokens.

Times (docs/architecture.md, "Outputs"): an outcome's ``start_time`` is when its last attempt
started and ``duration_ms`` that attempt's wall time, whether it succeeded or failed; each
failed attempt's :class:`~buddy.models.AttemptError` carries its own start and duration, so
``tool_execution_log.jsonl`` shows every attempt's real times. An outcome decided without
running the tool has ``start_time`` None and ``attempts`` 0 (:meth:`AttemptRunner.outcome`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from buddy.errors import (
    LeaseConflictError,
    LeaseLostError,
    RetryableToolError,
    StaleCommitError,
    ToolDeniedError,
    ToolError,
    ToolTimeoutError,
)
from buddy.execution.timeouts import HARD_TIMEOUT_GRACE_S, hard_timeout
from buddy.models import AttemptError, Mode, Outcome, TaskSpec, TaskStatus, utcnow
from buddy.state.leases import LeaseManager
from buddy.state.lifecycle import Transition, transition
from buddy.state.store import Store
from buddy.tools.contract import ToolContext, ToolContract

log = logging.getLogger("buddy.execution")


@dataclass
class Run:
    """One task of a batch on its way through the executor: its spec, parsed args, attempt
    number and errors so far, state transitions, claim and, once decided, its outcome."""

    cid: str
    wave: int
    agent_id: str
    spec: TaskSpec
    attempt: int = 1
    errors: list[AttemptError] = field(default_factory=list)
    contract: ToolContract | None = None
    args: Any = None
    effectful: bool = False
    state: TaskStatus = TaskStatus.QUEUED
    transitions: list[Transition] = field(default_factory=list)
    outcome: Outcome | None = None
    fencing_token: int | None = None
    current_token: int | None = None
    claim_raw: bytes | None = None  # the claim as last read or written
    orphan: bool = False  # an earlier attempt claimed the task and left no outcome
    claimed: bool = False
    guarded: bool = False  # its outcome is recorded under its claim (Claims.commit)

    @property
    def repeatable(self) -> bool:
        """Whether running it twice is harmless: not live, or an idempotent call."""
        assert self.contract is not None
        return not self.effectful or self.contract.is_idempotent(self.args)


class AttemptRunner:
    """Runs attempts for one worker process (``worker`` names it in outcomes and transitions).

    ``leases`` (None: no leasing) fences live effects on write claims; a task that cannot get
    its leases is retried up to ``conflict_attempts`` times; ``inject_failure_rate`` (0–1, a
    testing aid) fails that fraction of attempts with a retryable ``InjectedFailure``.
    """

    def __init__(
        self,
        store: Store,
        *,
        worker: str,
        leases: LeaseManager | None = None,
        conflict_attempts: int = 5,
        inject_failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.worker = worker
        self.leases = leases
        self.conflict_attempts = conflict_attempts
        self.inject_failure_rate = inject_failure_rate
        self.rng = rng or random.Random()

    def move(self, run: Run, to: TaskStatus, reason: str | None = None) -> None:
        run.transitions.append(
            transition(run.cid, run.spec.task_id, run.state, to, by=f"worker {self.worker}", reason=reason)
        )
        run.state = to

    def execute(self, run: Run) -> tuple[Outcome | None, float]:
        """Run one attempt. Returns (outcome, 0) when final, (None, delay_s) to retry."""
        spec, contract, cid = run.spec, run.contract, run.cid
        assert contract is not None
        timeout_s = contract.timeout_for(run.args)
        if spec.timeout_s is not None:  # the tuner's, never above the contract's
            timeout_s = min(timeout_s, spec.timeout_s)
        ctx = ToolContext(
            campaign_id=cid,
            task_id=spec.task_id,
            attempt=run.attempt,
            workdir=Path(spec.workdir),
            mode=spec.mode,
            worker=self.worker,
            deadline=time.monotonic() + timeout_s,
        )
        if run.effectful and contract.reversible:
            record = {
                "tool": spec.tool,
                "args": spec.args,
                "workdir": spec.workdir,
                "agent_id": run.agent_id,
                "claims": [c.model_dump(mode="json") for c in spec.claims],
            }
            ctx.on_undo = lambda data: self.store.save_undo(cid, spec.task_id, {**record, "undo": data})
        if run.effectful and not run.repeatable:
            run.guarded = True
        start = utcnow()
        t0 = time.perf_counter()
        try:
            if self.inject_failure_rate and self.rng.random() < self.inject_failure_rate:
                raise RetryableToolError(
                    "injected transient failure (BUDDY_INJECT_FAILURE_RATE, a testing aid)",
                    error_type="InjectedFailure",
                )
            if spec.mode is Mode.MOCK:
                result = contract.mock_result(run.args)
            elif spec.mode is Mode.DRY_RUN:
                result = contract.preview(run.args, ctx)
            else:
                return self._live_attempt(run, ctx, start, t0, timeout_s)
        except ToolError as e:
            return self._failed(run, ctx, e, start, t0)
        except Exception as e:  # a tool's bug is the task's failure, not the worker's
            log.exception("tool %s raised an unexpected error in task %s", spec.tool, spec.task_id)
            return self._failed(
                run, ctx, ToolError(f"{type(e).__name__}: {e}", error_type=type(e).__name__), start, t0
            )
        return self.outcome(run, TaskStatus.SUCCEEDED, start=start, t0=t0, result=result), 0.0

    def _live_attempt(
        self, run: Run, ctx: ToolContext, start: datetime, t0: float, timeout_s: float
    ) -> tuple[Outcome | None, float]:
        """The live effect under the task's leases; a failure is handled (and rolled back) before
        the leases are released, so a rollback is fenced like the effect."""
        assert run.contract is not None
        with self.leased(run, ctx):
            try:
                with hard_timeout(timeout_s + HARD_TIMEOUT_GRACE_S, run.contract.name):
                    result = run.contract.execute(run.args, ctx)
            except ToolError as e:
                return self._failed(run, ctx, e, start, t0)
            except Exception as e:
                log.exception(
                    "tool %s raised an unexpected error in task %s", run.spec.tool, run.spec.task_id
                )
                return self._failed(
                    run, ctx, ToolError(f"{type(e).__name__}: {e}", error_type=type(e).__name__), start, t0
                )
        return self.outcome(run, TaskStatus.SUCCEEDED, start=start, t0=t0, result=result), 0.0

    @contextmanager
    def leased(self, run: Run, ctx: ToolContext) -> Iterator[None]:
        """Hold the task's write leases (fenced) while the block runs."""
        writes = [c for c in run.spec.claims if c.mode == "write"]
        if self.leases is None or not writes:
            yield
            return
        wave_key = self.store.keys.wave(run.cid, run.wave)

        def contended(n: int) -> None:
            self.store.r.hincrby(wave_key, "lease_contention", n)

        owner = f"{run.cid}:{run.spec.task_id}:{run.attempt}:{self.worker}"
        with self.leases.hold(writes, owner, contended) as lease:
            ctx.fencing_token = run.fencing_token = lease.fencing_token
            ctx.lease_check = lease.check
            ctx.lease_confirm = lease.confirm
            yield

    def _failed(
        self, run: Run, ctx: ToolContext, e: ToolError, start: datetime, t0: float
    ) -> tuple[Outcome | None, float]:
        contract = run.contract
        assert contract is not None
        run.errors.append(attempt_error(run, e.error_type, str(e), start, t0))
        if isinstance(e, (LeaseLostError, StaleCommitError)):
            run.current_token = e.current_token
        status = TaskStatus.FAILED
        rolled_back = False
        # A refused effect (lease_lost) left nothing to undo; one that may have landed stale
        # (stale_commit) must not be "undone" with another stale write.
        undo = not isinstance(e, (LeaseLostError, StaleCommitError))
        if (
            undo
            and run.effectful
            and contract.reversible
            and ctx.undo is not None
            and contract.rollback is not None
        ):
            try:
                contract.rollback(run.args, ctx.undo, ctx)
                rolled_back = True
            except (LeaseLostError, StaleCommitError) as rb:
                run.current_token = rb.current_token
                status = TaskStatus.NEEDS_REVIEW
                run.errors.append(attempt_error(run, "RollbackFenced", str(rb), start, t0))
            except Exception as rb:  # the rollback's failure is reported, not raised
                log.exception("rollback of task %s failed", run.spec.task_id)
                run.errors.append(attempt_error(run, "RollbackFailed", str(rb), start, t0))
        if isinstance(e, StaleCommitError):
            status = TaskStatus.NEEDS_REVIEW
        elif status is TaskStatus.NEEDS_REVIEW:
            pass
        elif isinstance(e, ToolDeniedError):
            status = TaskStatus.DENIED
        elif isinstance(e, ToolTimeoutError):
            status = TaskStatus.TIMED_OUT
        # A tool raises RetryableToolError only where another try is safe (5xx, refused); a
        # lease conflict ran nothing, so it is retried even for a tool that never retries.
        elif isinstance(e, LeaseConflictError):
            if run.attempt < self.conflict_attempts:
                return None, max(contract.retry.delay_s(run.attempt), 0.2)
        elif contract.retry.should_retry(run.attempt, e.error_type, isinstance(e, RetryableToolError)) and (
            run.spec.max_attempts is None or run.attempt < run.spec.max_attempts  # the tuner's, within
        ):
            return None, contract.retry.delay_s(run.attempt)
        outcome = self.outcome(run, status, start=start, t0=t0, error=(e.error_type, str(e)))
        if rolled_back:
            self.move(run, TaskStatus.ROLLED_BACK, "the partial effect was undone")
            outcome.status = TaskStatus.ROLLED_BACK
            outcome.rolled_back = True
        return outcome, 0.0

    def outcome(
        self,
        run: Run,
        status: TaskStatus,
        *,
        start: datetime | None = None,
        t0: float | None = None,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> Outcome:
        """The outcome of ``run`` with ``status`` (its transition recorded).

        ``start`` (UTC) and ``t0`` (:func:`time.perf_counter` seconds) are when the attempt that
        ends here started: the outcome's ``start_time``, ``attempts`` (this attempt's number)
        and ``duration_ms`` (its wall time, milliseconds) come from them. Without them the task
        is decided here without running its tool (unknown tool, invalid arguments, no approval,
        an attempt that died and may not run again): ``start_time`` and ``duration_ms`` are
        those of the last attempt that ran, from ``run.errors`` (None and 0 when no attempt
        ran, or its start is not known), and ``attempts`` the number of that attempt (0: none
        ran, and ``tool_execution_log.jsonl`` has no line for it). The spec's seed ids
        (``phase21_plan_id``, ``phase22_validation_id``) are carried into the outcome.
        """
        spec = run.spec
        end = utcnow()
        self.move(run, status, f"{error[0]}: {error[1][:200]}" if error else spec.mode_reason)
        start_time: datetime | None = start
        if start is not None:
            attempts = run.attempt
            duration_ms = (time.perf_counter() - t0) * 1000.0 if t0 is not None else 0.0
        else:
            last = run.errors[-1] if run.errors else None
            attempts = max((e.attempt for e in run.errors), default=0)
            start_time = last.start_time if last is not None else None
            duration_ms = (last.duration_ms or 0.0) if last is not None else 0.0
        return Outcome(
            task_id=spec.task_id,
            campaign_id=run.cid,
            agent_id=run.agent_id,
            wave=run.wave,
            status=status,
            mode=spec.mode,
            mode_reason=spec.mode_reason,
            attempts=attempts,
            start_time=start_time,
            end_time=end,
            duration_ms=duration_ms,
            result=result,
            error_type=error[0] if error else None,
            error_msg=error[1] if error else None,
            worker=self.worker,
            tool=spec.tool,
            errors=list(run.errors),
            fencing_token=run.fencing_token,
            current_fencing_token=run.current_token,
            phase21_plan_id=spec.phase21_plan_id,
            phase22_validation_id=spec.phase22_validation_id,
        )


def attempt_error(run: Run, error_type: str, error_msg: str, start: datetime, t0: float) -> AttemptError:
    """The error of ``run``'s current attempt, which started at ``start`` (UTC;
    :func:`time.perf_counter` ``t0``): its start time and its wall time until now
    (``duration_ms``, milliseconds) go with it into ``tool_execution_log.jsonl``."""
    return AttemptError(
        attempt=run.attempt,
        error_type=error_type,
        error_msg=error_msg,
        at=utcnow(),
        start_time=start,
        duration_ms=(time.perf_counter() - t0) * 1000.0,
    )
