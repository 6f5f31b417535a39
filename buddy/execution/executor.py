"""Running a batch of tasks on a worker: check, claim, gate, tool, rollback, outcome (README, "Execution").

:class:`Executor` holds no Celery code; ``workers.tasks.execute_batch`` calls
:meth:`Executor.run_batch` and turns its ``retry`` list into a Celery retry.

For each batch, then each of its tasks, in order:

1. Only dispatched work runs: the campaign must be recorded ``running`` in Redis and each
   task recorded as sent in this wave with this exact message (:meth:`Store.record_dispatch`,
   a digest of the task's spec); anything else is refused (``on_refused``: the worker
   dead-letters it) and gets no outcome. A HIGH or CRITICAL task that would run live also
   needs an ``approved`` record in ``buddy:approval:<cid>:<task>``, else it ends ``denied``.
2. An outcome already in Redis is returned unchanged (a redelivered message).
3. The task is claimed with a compare-and-set (:mod:`buddy.state.claims`) right before it runs
   (tasks that are safe to repeat: all of a batch's in one round trip first). A claim held by
   another live attempt (fresh heartbeat) is waited on, and its outcome taken; a claim whose
   attempt died (``running``, stale) is taken over: the task runs again only if that is safe
   (mock/dry run, an idempotent tool, or a reversible one whose partial effect is rolled back
   first, under its leases), else it ends ``needs_review``.
4. A task an operator cancelled (``buddy cancel``) ends ``cancelled`` without running. A
   task of a paused campaign (``buddy pause``), or a live one while the system is locked
   (``buddy lock``), does not start: it is *held* — no claim, no outcome, sent back through
   the broker as a Celery retry every :data:`HOLD_RETRY_S` seconds until the pause ends (so
   the wave's chord does not complete without it). Live tasks are checked again right
   before each starts; nothing ever runs ``mock`` in a live one's place.
5. The tool runs in the task's mode, a live one under its fenced write leases; tool errors
   become outcomes: ``ToolDeniedError`` → ``denied``, ``ToolTimeoutError`` → ``timed_out``, a
   retryable error with attempts left → retried (Celery ``retry`` with the policy's backoff),
   a lease found lost after the commit (``stale_commit``) → ``needs_review``, anything else →
   ``failed``. A reversible tool that fails after recording undo data is rolled back while its
   leases are held; a rollback refused by a lost lease ends ``needs_review`` with both tokens.
6. Outcomes are written in one pipeline at the end of the batch, except a non-idempotent live
   effect's: it is recorded at once, and only while this attempt still holds the claim
   (:meth:`Claims.commit`), so a crash cannot hide that it happened and an attempt that was
   taken over cannot overwrite what the attempt that took over decided.

Step 1 is :class:`~buddy.execution.authorize.Authorizer`, step 3
:class:`~buddy.execution.claiming.ClaimKeeper` and :mod:`buddy.execution.takeover`, step 5
:class:`~buddy.execution.attempt.AttemptRunner`; this module orders them and writes outcomes.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from buddy.errors import BuddyError
from buddy.execution.attempt import AttemptRunner, Run
from buddy.execution.authorize import Authorizer, RefusedHook
from buddy.execution.claiming import ClaimKeeper, held
from buddy.execution.takeover import settle_orphan
from buddy.infra.logs import log_context
from buddy.models import Mode, Outcome, TaskSpec, TaskStatus
from buddy.state.claims import Claims, HeldClaims
from buddy.state.leases import LeaseManager
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry

__all__ = ["BatchResult", "Executor", "RefusedHook"]

log = logging.getLogger("buddy.execution")

#: Seconds before a held task (its campaign paused) is delivered again (Celery ``countdown``).
HOLD_RETRY_S = 1.0


@dataclass
class BatchResult:
    """What :meth:`Executor.run_batch` did.

    ``done`` pairs each finished task id with its final status; ``retry`` holds the specs to
    run again after ``retry_delay_s`` seconds (the longest backoff among them); ``refused``
    counts the tasks that were not run because nobody dispatched them; ``held`` names the ones
    not started because their campaign is paused (they are in ``retry`` too).
    """

    done: list[tuple[str, str]] = field(default_factory=list)
    retry: list[TaskSpec] = field(default_factory=list)
    retry_delay_s: float = 0.0
    refused: int = 0
    held: list[str] = field(default_factory=list)


class Executor:
    """Runs batches for one worker process.

    ``worker`` names this worker in claims and outcomes; ``claim_ttl_s`` is how long a claim
    lives in Redis (it must outlast every redelivery of its message); ``stale_s`` is how old
    a claim's heartbeat may be before its attempt counts as dead, ``renew_s`` how often this
    process renews the heartbeats of the claims it holds (seconds); ``on_refused`` receives
    the tasks it refuses to run (not dispatched), default: logged.
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
        on_refused: RefusedHook | None = None,
    ) -> None:
        self.store = store
        self.claims = Claims(store.r)
        self.registry = registry
        self.worker = worker
        self.claim_ttl_s = claim_ttl_s
        self.clock = clock
        self.stale_s = stale_s
        self.renew_s = renew_s
        self.attempts = AttemptRunner(
            store,
            worker=worker,
            leases=leases,
            conflict_attempts=conflict_attempts,
            inject_failure_rate=inject_failure_rate,
            rng=rng,
        )
        self.held = HeldClaims(self.claims, ttl_s=claim_ttl_s, renew_s=renew_s, clock=clock)
        self.authorizer = Authorizer(store, self.attempts, on_refused=on_refused)
        self.keeper = ClaimKeeper(
            store,
            self.claims,
            self.held,
            worker=worker,
            claim_ttl_s=claim_ttl_s,
            clock=clock,
            stale_s=stale_s,
            renew_s=renew_s,
        )

    @property
    def on_refused(self) -> RefusedHook | None:
        """Receives the tasks this worker refuses to run (None: they are only logged)."""
        return self.authorizer.on_refused

    @on_refused.setter
    def on_refused(self, hook: RefusedHook | None) -> None:
        self.authorizer.on_refused = hook

    def run_batch(
        self,
        campaign_id: str,
        wave: int,
        agent_id: str,
        specs: list[TaskSpec],
        *,
        delivery: str = "",
        digests: list[str] | None = None,
    ) -> BatchResult:
        """Run ``specs`` (tasks of one agent in one wave) and record their outcomes in Redis.

        ``digests``: :func:`~buddy.state.store.spec_digest` of each spec's item as the message
        carried it (computed from ``specs`` when not given). Retried specs come back in
        ``res.retry`` as they were sent, so their retry matches the dispatch record too."""
        res = BatchResult()
        if not specs:
            return res
        sent = {s.task_id: s for s in specs}
        batch = self.store.begin_batch(campaign_id, list(sent))
        specs, refused = self.authorizer.dispatched(campaign_id, wave, agent_id, specs, batch, digests)
        res.refused += refused
        pending: list[Outcome] = []
        flushed: list[Run] = []
        runs: list[Run] = []
        for spec in specs:
            have = batch.outcomes.get(spec.task_id)
            if have is not None:
                res.done.append((spec.task_id, have.status.value))
                continue
            if spec.task_id in batch.cancelled:
                flushed.append(self._cancel(Run(cid=campaign_id, wave=wave, agent_id=agent_id, spec=spec)))
                continue
            if batch.pause is not None or (batch.lock is not None and spec.mode is Mode.LIVE):
                res.held.append(spec.task_id)
                continue
            run = self._prepare(campaign_id, wave, agent_id, spec, batch.claims.get(spec.task_id))
            (flushed if run.outcome is not None else runs).append(run)
        self.authorizer.check_approvals(campaign_id, runs, flushed)
        runs = [r for r in runs if r.outcome is None]
        pending.extend(r.outcome for r in flushed if r.outcome is not None)
        now, stale = self.clock(), self.stale_s
        self.keeper.acquire_many(
            campaign_id,
            wave,
            # live ones are claimed one by one, each right after its pause check
            [r for r in runs if r.repeatable and not r.effectful and not held(r.claim_raw, now, stale)],
            delivery,
        )
        self.store.add_in_flight(agent_id, len(runs))
        retries: list[Run] = []
        try:
            for run in runs:
                tid = run.spec.task_id
                if run.effectful and not run.claimed:
                    lock, pause, cancelled = self.store.task_gate(campaign_id, tid)
                    if cancelled:
                        self._cancel(run)
                    elif lock is not None or pause is not None:
                        res.held.append(tid)
                        continue
                if run.outcome is not None:
                    pending.append(run.outcome)
                    flushed.append(run)
                    continue
                if not run.claimed:
                    other = self.keeper.acquire(run, delivery)
                    if other is not None:
                        res.done.append((tid, other.status.value))
                        continue
                if run.orphan:
                    settle_orphan(run, self.store, self.attempts, self.worker)
                outcome, retry_after = run.outcome, 0.0
                if outcome is None:
                    if run.state is not TaskStatus.RUNNING:
                        self.attempts.move(run, TaskStatus.RUNNING, f"attempt {run.attempt} on {self.worker}")
                    with log_context(campaign_id=campaign_id, task_id=tid):
                        outcome, retry_after = self.attempts.execute(run)
                if outcome is None:
                    last = run.errors[-1]
                    self.attempts.move(
                        run, TaskStatus.QUEUED, f"retry in {retry_after:.2f} s after {last.error_type}"
                    )
                    retries.append(run)
                    res.retry.append(sent[tid])
                    res.retry_delay_s = max(res.retry_delay_s, retry_after)
                    continue
                run.outcome = outcome
                pending.append(outcome)
                flushed.append(run)
                if run.guarded:
                    self._flush(pending, flushed, res)
        finally:
            self._flush(pending, flushed, res)
            self.keeper.to_retry_wait(campaign_id, wave, retries)
            self.store.add_in_flight(agent_id, -len(runs))
        if res.held:  # back to the broker, as sent, until the pause ends
            res.retry.extend(sent[t] for t in res.held)
            res.retry_delay_s = max(res.retry_delay_s, HOLD_RETRY_S)
        return res

    def _cancel(self, run: Run) -> Run:
        """End ``run`` ``cancelled``: an operator cancelled it before it started (``buddy cancel``)."""
        run.outcome = self.attempts.outcome(
            run, TaskStatus.CANCELLED, error=("cancelled", "cancelled by an operator before it started")
        )
        return run

    def _prepare(self, cid: str, wave: int, agent_id: str, spec: TaskSpec, claim_raw: bytes | None) -> Run:
        """The run of ``spec``; ``run.outcome`` is set when the task ends here without running."""
        run = Run(cid=cid, wave=wave, agent_id=agent_id, spec=spec)
        try:
            run.contract = self.registry.get(spec.tool)
            run.args = run.contract.parse_args(spec.args)
        except (BuddyError, ValidationError) as e:
            etype = "UnknownTool" if run.contract is None else "InvalidArgs"
            run.outcome = self.attempts.outcome(run, TaskStatus.FAILED, error=(etype, str(e)))
            return run
        run.effectful = spec.mode is Mode.LIVE
        self.keeper.from_claim(run, claim_raw)
        return run

    def _flush(self, pending: list[Outcome], runs: list[Run], res: BatchResult) -> None:
        """Record ``pending``: guarded outcomes under their claim first (one round trip); one whose
        claim was taken over is not recorded (the attempt that took over decides), then the rest
        with every counter, transition and event in one pipeline."""
        if not pending:
            return
        cid = pending[0].campaign_id
        by_id = {r.spec.task_id: r for r in runs}
        guarded = [o for o in pending if by_id[o.task_id].guarded and by_id[o.task_id].claimed]
        written: set[str] = set()
        if guarded:
            ok = self.held.commit(
                cid, {o.task_id: (by_id[o.task_id].claim_raw, o.model_dump_json().encode()) for o in guarded}
            )
            written = {t for t, good in ok.items() if good}
            for t in sorted(set(ok) - written):
                ended = by_id[t].state.value
                log.warning(
                    "task %s of %s: this attempt's claim was taken over before its outcome was recorded; "
                    "the attempt that took over decides (this one ended %s)",
                    t, cid, ended,
                )  # fmt: skip
                self.store.event(cid, "stale_attempt", task_id=t, worker=self.worker, status=ended)
            lost = set(ok) - written
            pending[:] = [o for o in pending if o.task_id not in lost]
            runs[:] = [r for r in runs if r.spec.task_id not in lost]
        if pending:
            n_claimed = sum(1 for o in pending if by_id[o.task_id].claimed)
            transitions = [t for r in runs for t in r.transitions]
            self.store.record_outcomes(
                pending, running_delta=-n_claimed, transitions=transitions, written=written
            )
            self.held.let_go(cid, [o.task_id for o in pending])
            res.done.extend((o.task_id, o.status.value) for o in pending)
        pending.clear()
        runs.clear()
