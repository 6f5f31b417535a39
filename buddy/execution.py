"""Running a batch of tasks on a worker: claim, gate, tool, rollback, outcome (DESIGN.md, data flow).

:class:`Executor` holds no Celery code; ``workers.tasks.execute_batch`` calls
:meth:`Executor.run_batch` and turns its ``retry`` list into a Celery retry.

For each task of a batch, in order:

1. An outcome already in Redis is returned unchanged (a redelivered message).
2. The claim ``buddy:campaign:<cid>:claim:<task>`` decides the attempt number: none → 1;
   ``retry_wait`` → the next attempt; ``running`` with no outcome → an earlier attempt died
   mid-way: the task runs again only if that is safe (mock/dry run, an idempotent tool, or
   a reversible one, rolled back first), else it ends ``needs_review``.
3. The system lock (``buddy lock``) degrades a live task to ``mock``.
4. The tool runs in the task's mode; tool errors become outcomes: ``ToolDeniedError`` →
   ``denied``, ``ToolTimeoutError`` → ``timed_out``, a retryable error with attempts left
   → retried (Celery ``retry`` with the policy's backoff), anything else → ``failed``.
   A reversible tool that fails after recording undo data is rolled back.
5. Outcomes are written in one pipeline: at once after a task with a non-idempotent live
   effect (so a crash cannot hide that it happened), else at the end of the batch.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from buddy.errors import (
    BuddyError,
    RetryableToolError,
    ToolDeniedError,
    ToolError,
    ToolTimeoutError,
)
from buddy.leases import LeaseConflictError, LeaseManager
from buddy.lifecycle import Transition, transition
from buddy.logs import log_context
from buddy.models import AttemptError, Mode, Outcome, RollbackEvent, TaskSpec, TaskStatus, utcnow
from buddy.state import Claim, Store
from buddy.tools.contract import ToolContext, ToolContract
from buddy.tools.registry import ToolRegistry

log = logging.getLogger("buddy.execution")


@dataclass
class BatchResult:
    """What :meth:`Executor.run_batch` did.

    ``done`` pairs each finished task id with its final status; ``retry`` holds the specs to
    run again after ``retry_delay_s`` seconds (the longest backoff among them).
    """

    done: list[tuple[str, str]] = field(default_factory=list)
    retry: list[TaskSpec] = field(default_factory=list)
    retry_delay_s: float = 0.0


@dataclass
class _Run:
    cid: str
    wave: int
    agent_id: str
    spec: TaskSpec
    attempt: int
    errors: list[AttemptError]
    contract: ToolContract | None = None
    args: Any = None
    effectful: bool = False
    state: TaskStatus = TaskStatus.QUEUED
    transitions: list[Transition] = field(default_factory=list)
    outcome: Outcome | None = None
    fencing_token: int | None = None


class Executor:
    """Runs batches for one worker process.

    ``worker`` names this worker in claims and outcomes; ``claim_ttl_s`` is how long a claim
    lives in Redis (the visibility timeout: a claim must outlast a redelivery).
    """

    def __init__(
        self,
        store: Store,
        registry: ToolRegistry,
        *,
        worker: str,
        claim_ttl_s: int = 3600,
        clock: Callable[[], float] = time.time,
        leases: LeaseManager | None = None,
        stale_s: float = 10.0,
        renew_s: float = 2.0,
        conflict_attempts: int = 5,
        inject_failure_rate: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.worker = worker
        self.claim_ttl_s = claim_ttl_s
        self.clock = clock
        self.leases = leases
        self.stale_s = stale_s
        self.renew_s = renew_s
        self.conflict_attempts = conflict_attempts
        self.inject_failure_rate = inject_failure_rate
        self.rng = rng or random.Random()
        self._live: dict[tuple[str, str], Claim] = {}
        self._live_lock = threading.Lock()
        self._renewer: threading.Thread | None = None

    def run_batch(
        self, campaign_id: str, wave: int, agent_id: str, specs: list[TaskSpec], *, delivery: str = ""
    ) -> BatchResult:
        """Run ``specs`` (tasks of one agent in one wave) and record their outcomes in Redis."""
        res = BatchResult()
        if not specs:
            return res
        ids = [s.task_id for s in specs]
        existing, claims, lock = self.store.begin_batch(campaign_id, ids)
        pending: list[Outcome] = []
        claimed: set[str] = set()
        runs: list[_Run] = []
        prepared_fail: list[_Run] = []
        early: dict[str, Claim] = {}

        for spec in specs:
            claim = claims.get(spec.task_id)
            if spec.task_id not in existing and claim is not None and claim.fresh(self.clock(), self.stale_s):
                # Another delivery of this task is running right now (Redis redelivered the
                # message after the visibility timeout, or a resumed campaign sent it again):
                # wait for its outcome instead of running the tool a second time.
                other, claim = self._await_other(campaign_id, spec.task_id)
                if other is not None:
                    existing[spec.task_id] = other
            if spec.task_id in existing:
                res.done.append((spec.task_id, existing[spec.task_id].status.value))
                continue
            run = self._prepare(campaign_id, wave, agent_id, spec, claim, lock)
            if run.outcome is not None:
                pending.append(run.outcome)
                prepared_fail.append(run)
                continue
            runs.append(run)
            if not run.effectful or (
                run.contract and run.args is not None and run.contract.is_idempotent(run.args)
            ):
                early[spec.task_id] = self._claim(run, delivery)
        # Claims for tasks that are safe to repeat go in one round trip; the others are
        # claimed one by one right before they run.
        self.store.set_claims(campaign_id, wave, early, self.claim_ttl_s)
        self._keep_alive(campaign_id, early)
        claimed.update(early)
        self.store.add_in_flight(agent_id, len(runs))
        retry_claims: dict[str, Claim] = {}
        retry_transitions: list[Transition] = []
        flushed_runs: list[_Run] = [r for r in prepared_fail]
        try:
            for run in runs:
                tid = run.spec.task_id
                if tid not in claimed:
                    one = {tid: self._claim(run, delivery)}
                    self.store.set_claims(campaign_id, wave, one, self.claim_ttl_s)
                    self._keep_alive(campaign_id, one)
                    claimed.add(tid)
                if run.state is not TaskStatus.RUNNING:
                    self._move(run, TaskStatus.RUNNING, f"attempt {run.attempt} on {self.worker}")
                with log_context(campaign_id=campaign_id, task_id=tid):
                    outcome, retry_after = self._execute(run)
                if outcome is None:
                    claim = self._claim(run, delivery)
                    claim.state = "retry_wait"
                    claim.errors = [e.model_dump(mode="json") for e in run.errors]
                    retry_claims[tid] = claim
                    self._let_go(campaign_id, [tid])
                    last = run.errors[-1]
                    self._move(
                        run, TaskStatus.QUEUED, f"retry in {retry_after:.2f} s after {last.error_type}"
                    )
                    retry_transitions.extend(run.transitions)
                    res.retry.append(run.spec)
                    res.retry_delay_s = max(res.retry_delay_s, retry_after)
                    continue
                pending.append(outcome)
                flushed_runs.append(run)
                if run.effectful and run.contract and not run.contract.is_idempotent(run.args):
                    self._flush(pending, flushed_runs, claimed, res)
        finally:
            self._flush(pending, flushed_runs, claimed, res)
            self.store.set_retry_claims(
                campaign_id, wave, retry_claims, self.claim_ttl_s, transitions=retry_transitions
            )
            self.store.add_in_flight(agent_id, -len(runs))
        return res

    # -- steps ---------------------------------------------------------------------------

    def _prepare(
        self, cid: str, wave: int, agent_id: str, spec: TaskSpec, claim: Claim | None, lock: str | None
    ) -> _Run:
        """The run of ``spec``; ``run.outcome`` is set when the task ends here without running."""
        errors: list[AttemptError] = []
        if lock and spec.mode is not Mode.MOCK:
            spec = spec.model_copy(update={"mode": Mode.MOCK, "mode_reason": f"system locked: {lock}"})
        run = _Run(cid=cid, wave=wave, agent_id=agent_id, spec=spec, attempt=1, errors=errors)
        try:
            run.contract = self.registry.get(spec.tool)
            run.args = run.contract.parse_args(spec.args)
        except (BuddyError, ValidationError) as e:
            etype = "UnknownTool" if run.contract is None else "InvalidArgs"
            run.outcome = self._outcome(run, TaskStatus.FAILED, error=(etype, str(e)))
            return run
        run.effectful = spec.mode is Mode.LIVE
        if claim is not None:
            errors.extend(AttemptError.model_validate(e) for e in claim.errors)
            run.attempt = claim.attempt + 1
            if claim.state == "running":
                run.state = TaskStatus.RUNNING
                died = AttemptError(
                    attempt=claim.attempt,
                    error_type="WorkerLost",
                    error_msg=f"attempt {claim.attempt} on {claim.worker} ended without an outcome",
                    at=utcnow(),
                )
                errors.append(died)
                safe = not run.effectful or run.contract.is_idempotent(run.args)
                if not safe and run.contract.reversible:
                    safe = self._rollback_orphan(cid, spec, run.contract, run.args)
                if not safe:
                    run.outcome = self._outcome(
                        run,
                        TaskStatus.NEEDS_REVIEW,
                        error=(
                            "WorkerLost",
                            f"{died.error_msg}; {spec.tool} is neither idempotent nor reversible, so it "
                            "was not run again: settle it with `buddy review`",
                        ),
                    )
        return run

    def _await_other(self, cid: str, task_id: str) -> tuple[Outcome | None, Claim | None]:
        """Wait while another attempt's claim stays fresh; return its outcome, or the claim as
        it is when it went stale (that attempt died) or vanished."""
        while True:
            got = self.store.outcomes(cid, [task_id]).get(task_id)
            if got is not None:
                return got, None
            claim = self.store.claim(cid, task_id)
            if claim is None or not claim.fresh(self.clock(), self.stale_s):
                return None, claim
            time.sleep(min(0.2, self.renew_s))

    def _rollback_orphan(self, cid: str, spec: TaskSpec, contract: ToolContract, args: Any) -> bool:
        """Undo a dead attempt's partial effect so the task can run again. True when that is
        done, or when the attempt never recorded undo data (it died before any effect)."""
        record = self.store.undo_data(cid, [spec.task_id]).get(spec.task_id)
        if record is None or contract.rollback is None:
            return record is None
        ctx = ToolContext(
            campaign_id=cid,
            task_id=spec.task_id,
            workdir=Path(spec.workdir),
            worker=self.worker,
            undo=record["undo"],
        )
        try:
            contract.rollback(args, record["undo"], ctx)
        except Exception:
            log.exception("could not roll back the dead attempt of task %s", spec.task_id)
            return False
        return True

    def _claim(self, run: _Run, delivery: str) -> Claim:
        now = self.clock()
        return Claim(
            worker=self.worker, attempt=run.attempt, started_at=now, heartbeat=now, delivery=delivery
        )

    # -- claim heartbeats ----------------------------------------------------------------

    def _keep_alive(self, cid: str, claims: dict[str, Claim]) -> None:
        """Renew these claims' heartbeats every ``renew_s`` until their outcome is recorded."""
        with self._live_lock:
            for tid, c in claims.items():
                self._live[(cid, tid)] = c
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._renew_loop, name="buddy-claims", daemon=True)
                self._renewer.start()

    def _let_go(self, cid: str, task_ids: Iterable[str]) -> None:
        with self._live_lock:
            for tid in task_ids:
                self._live.pop((cid, tid), None)

    def _renew_loop(self) -> None:
        while True:
            time.sleep(self.renew_s)
            with self._live_lock:
                items = list(self._live.items())
            by_cid: dict[str, dict[str, Claim]] = {}
            now = self.clock()
            for (cid, tid), claim in items:
                claim.heartbeat = now
                by_cid.setdefault(cid, {})[tid] = claim
            for cid, claims in by_cid.items():
                try:
                    self.store.touch_claims(cid, claims, self.claim_ttl_s)
                except Exception:  # a Redis blip: the next beat retries
                    log.warning("could not renew claims", exc_info=True)

    def _move(self, run: _Run, to: TaskStatus, reason: str | None = None) -> None:
        run.transitions.append(
            transition(run.cid, run.spec.task_id, run.state, to, by=f"worker {self.worker}", reason=reason)
        )
        run.state = to

    def _execute(self, run: _Run) -> tuple[Outcome | None, float]:
        """Run one attempt. Returns (outcome, 0) when final, (None, delay_s) to retry."""
        spec, contract, cid = run.spec, run.contract, run.cid
        assert contract is not None
        timeout_s = contract.timeout_for(run.args)
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
            record = {"tool": spec.tool, "args": spec.args, "workdir": spec.workdir, "agent_id": run.agent_id}
            ctx.on_undo = lambda data: self.store.save_undo(cid, spec.task_id, {**record, "undo": data})
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
                with self._leased(run, ctx), hard_timeout(timeout_s + HARD_TIMEOUT_GRACE_S, contract.name):
                    result = contract.execute(run.args, ctx)
        except ToolError as e:
            return self._failed(run, ctx, e, start, t0)
        except Exception as e:  # a tool's bug is the task's failure, not the worker's
            log.exception("tool %s raised an unexpected error in task %s", spec.tool, spec.task_id)
            wrapped = ToolError(f"{type(e).__name__}: {e}", error_type=type(e).__name__)
            return self._failed(run, ctx, wrapped, start, t0)
        return self._outcome(run, TaskStatus.SUCCEEDED, start=start, t0=t0, result=result), 0.0

    @contextmanager
    def _leased(self, run: _Run, ctx: ToolContext) -> Iterator[None]:
        """Hold the task's write leases (fenced) while its live effect runs."""
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
            yield

    def _failed(
        self, run: _Run, ctx: ToolContext, e: ToolError, start: datetime, t0: float
    ) -> tuple[Outcome | None, float]:
        contract = run.contract
        assert contract is not None
        run.errors.append(
            AttemptError(attempt=run.attempt, error_type=e.error_type, error_msg=str(e), at=utcnow())
        )
        rolled_back = False
        if run.effectful and contract.reversible and ctx.undo is not None and contract.rollback is not None:
            try:
                contract.rollback(run.args, ctx.undo, ctx)
                rolled_back = True
            except Exception as rb:  # the rollback's failure is reported, not raised
                log.exception("rollback of task %s failed", run.spec.task_id)
                run.errors.append(
                    AttemptError(
                        attempt=run.attempt, error_type="RollbackFailed", error_msg=str(rb), at=utcnow()
                    )
                )
        if isinstance(e, ToolDeniedError):
            status = TaskStatus.DENIED
        elif isinstance(e, ToolTimeoutError):
            status = TaskStatus.TIMED_OUT
        else:
            status = TaskStatus.FAILED
            # A tool raises RetryableToolError only where another try is safe (5xx, refused);
            # a lease conflict ran nothing, so it is retried even for a tool that never retries.
            if isinstance(e, LeaseConflictError):
                if run.attempt < self.conflict_attempts:
                    return None, max(contract.retry.delay_s(run.attempt), 0.2)
            elif contract.retry.should_retry(run.attempt, e.error_type, isinstance(e, RetryableToolError)):
                return None, contract.retry.delay_s(run.attempt)
        outcome = self._outcome(run, status, start=start, t0=t0, error=(e.error_type, str(e)))
        if rolled_back:
            self._move(run, TaskStatus.ROLLED_BACK, "the partial effect was undone")
            outcome.status = TaskStatus.ROLLED_BACK
            outcome.rolled_back = True
        return outcome, 0.0

    def _outcome(
        self,
        run: _Run,
        status: TaskStatus,
        *,
        start: datetime | None = None,
        t0: float | None = None,
        result: dict[str, Any] | None = None,
        error: tuple[str, str] | None = None,
    ) -> Outcome:
        spec = run.spec
        end = utcnow()
        self._move(run, status, f"{error[0]}: {error[1][:200]}" if error else spec.mode_reason)
        return Outcome(
            task_id=spec.task_id,
            campaign_id=run.cid,
            agent_id=run.agent_id,
            wave=run.wave,
            status=status,
            mode=spec.mode,
            mode_reason=spec.mode_reason,
            attempts=run.attempt if start is not None else len(run.errors),
            start_time=start or end,
            end_time=end,
            duration_ms=(time.perf_counter() - t0) * 1000.0 if t0 is not None else 0.0,
            result=result,
            error_type=error[0] if error else None,
            error_msg=error[1] if error else None,
            worker=self.worker,
            tool=spec.tool,
            errors=list(run.errors),
            fencing_token=run.fencing_token,
        )

    def _flush(self, pending: list[Outcome], runs: list[_Run], claimed: set[str], res: BatchResult) -> None:
        if not pending:
            return
        n_claimed = sum(1 for o in pending if o.task_id in claimed)
        transitions = [t for r in runs for t in r.transitions]
        self.store.record_outcomes(pending, running_delta=-n_claimed, transitions=transitions)
        self._let_go(pending[0].campaign_id, [o.task_id for o in pending])
        res.done.extend((o.task_id, o.status.value) for o in pending)
        pending.clear()
        runs.clear()

    # -- compensation ------------------------------------------------------------------------

    def compensate(self, campaign_id: str, task_id: str) -> RollbackEvent:
        """Undo the effect of a succeeded reversible task (``--rollback-on-abort``, ``buddy rollback``).

        Uses the undo data the tool recorded before its effect (``buddy:campaign:<cid>:undo``).
        On success the outcome becomes ``rolled_back``; the event is pushed to the campaign's
        rollback list either way. Never raises for a tool's failure: the event says it.
        """
        outcome = self.store.outcomes(campaign_id, [task_id]).get(task_id)
        record = self.store.undo_data(campaign_id, [task_id]).get(task_id)
        event = RollbackEvent(
            campaign_id=campaign_id,
            task_id=task_id,
            tool=outcome.tool if outcome else None,
            agent_id=outcome.agent_id if outcome else None,
            wave=outcome.wave if outcome else None,
            status="skipped",
            at=utcnow(),
            worker=self.worker,
        )
        if outcome is None or outcome.status is not TaskStatus.SUCCEEDED:
            event.reason = f"outcome is {outcome.status.value if outcome else 'missing'}, not succeeded"
        elif record is None:
            event.reason = "no undo data was recorded (not a live reversible effect)"
        else:
            try:
                contract = self.registry.get(record["tool"])
                args = contract.parse_args(record["args"])
                if contract.rollback is None:
                    raise ToolError(f"{contract.name} has no rollback", error_type="NotReversible")
                ctx = ToolContext(
                    campaign_id=campaign_id,
                    task_id=task_id,
                    workdir=Path(record.get("workdir") or "."),
                    worker=self.worker,
                    undo=record["undo"],
                )
                contract.rollback(args, record["undo"], ctx)
            except Exception as e:
                log.exception("compensation of task %s failed", task_id)
                event.status, event.error = "failed", f"{type(e).__name__}: {e}"
            else:
                event.status = "rolled_back"
                outcome.status = TaskStatus.ROLLED_BACK
                outcome.rolled_back = True
                move = transition(
                    campaign_id, task_id, TaskStatus.SUCCEEDED, TaskStatus.ROLLED_BACK,
                    by=f"worker {self.worker}", reason="compensated after an abort",
                )  # fmt: skip
                self.store.replace_outcome(outcome, move)
        self.store.push_rollback_event(event)
        return event


#: Seconds past a tool's timeout before the worker's alarm stops it (the tool's own timeout,
#: e.g. ``subprocess`` for ``shell``, gets the first chance to end it cleanly).
HARD_TIMEOUT_GRACE_S = 1.0


#: What the armed alarm of this process stops: (tool name, seconds). Set only in the main thread.
_alarm: list[tuple[str, float]] = []


def _on_alarm(signum: int, frame: Any) -> None:
    what, seconds = _alarm[-1] if _alarm else ("the tool", 0.0)
    raise ToolTimeoutError(f"{what} ran past its timeout and was stopped after {seconds:g} s")


@contextmanager
def hard_timeout(seconds: float, what: str) -> Iterator[None]:
    """Stop the enclosed call with :class:`ToolTimeoutError` after ``seconds`` (SIGALRM).

    Works where Celery runs tasks in a process's main thread (the ``prefork`` and ``solo``
    pools); in the ``threads`` pool it does nothing and a tool relies on its own timeout and
    ``ctx.deadline``, as Celery's own time limits do (they need prefork too). The handler is
    installed once per process (again only if someone replaced it); each call only arms and
    disarms the timer (``setitimer``).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    _alarm.append((what, seconds))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _alarm.pop()
