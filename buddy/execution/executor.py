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
3. The task is claimed with a compare-and-set (:mod:`buddy.claims`) right before it runs
   (tasks that are safe to repeat: all of a batch's in one round trip first). A claim held by
   another live attempt (fresh heartbeat) is waited on, and its outcome taken; a claim whose
   attempt died (``running``, stale) is taken over: the task runs again only if that is safe
   (mock/dry run, an idempotent tool, or a reversible one whose partial effect is rolled back
   first, under its leases), else it ends ``needs_review``.
4. The system lock (``buddy lock``) degrades a live task to ``mock``.
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
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from buddy.errors import (
    BuddyError,
)
from buddy.execution.attempt import AttemptRunner, Run
from buddy.infra.logs import log_context
from buddy.models import AttemptError, Mode, Outcome, Risk, TaskSpec, TaskStatus, utcnow
from buddy.safety.gates import approval_key
from buddy.state.claims import CLAIMED, HAS_OUTCOME, Claim, Claims, HeldClaims, parse
from buddy.state.leases import LeaseLostError, LeaseManager, StaleCommitError
from buddy.state.store import BatchState, Store, spec_digest
from buddy.tools.contract import ToolContext
from buddy.tools.registry import ToolRegistry

log = logging.getLogger("buddy.execution")

#: Called with ``(campaign_id, wave, agent_id, specs, reason)`` for tasks a worker refuses to run.
RefusedHook = Callable[[str, int, str, list[TaskSpec], str], None]


@dataclass
class BatchResult:
    """What :meth:`Executor.run_batch` did.

    ``done`` pairs each finished task id with its final status; ``retry`` holds the specs to
    run again after ``retry_delay_s`` seconds (the longest backoff among them); ``refused``
    counts the tasks that were not run because nobody dispatched them.
    """

    done: list[tuple[str, str]] = field(default_factory=list)
    retry: list[TaskSpec] = field(default_factory=list)
    retry_delay_s: float = 0.0
    refused: int = 0


def _held(raw: bytes | None, now: float, stale_s: float) -> bool:
    """Whether a stored claim belongs to an attempt in progress (``running``, fresh heartbeat)."""
    claim = parse(raw)
    return claim is not None and claim.fresh(now, stale_s)


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
        self.on_refused = on_refused
        self.attempts = AttemptRunner(
            store,
            worker=worker,
            leases=leases,
            conflict_attempts=conflict_attempts,
            inject_failure_rate=inject_failure_rate,
            rng=rng,
        )
        self.held = HeldClaims(self.claims, ttl_s=claim_ttl_s, renew_s=renew_s, clock=clock)

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

        ``digests``: :func:`~buddy.state.spec_digest` of each spec's item as the message carried
        it (computed from ``specs`` when not given). Retried specs come back in ``res.retry``
        as they were sent, so their retry matches the dispatch record too."""
        res = BatchResult()
        if not specs:
            return res
        sent = {s.task_id: s for s in specs}
        batch = self.store.begin_batch(campaign_id, list(sent))
        specs = self._authorized(campaign_id, wave, agent_id, specs, batch, res, digests)
        pending: list[Outcome] = []
        flushed: list[Run] = []
        runs: list[Run] = []
        for spec in specs:
            have = batch.outcomes.get(spec.task_id)
            if have is not None:
                res.done.append((spec.task_id, have.status.value))
                continue
            run = self._prepare(campaign_id, wave, agent_id, spec, batch.claims.get(spec.task_id), batch.lock)
            (flushed if run.outcome is not None else runs).append(run)
        self._check_approvals(campaign_id, runs, flushed)
        runs = [r for r in runs if r.outcome is None]
        pending.extend(r.outcome for r in flushed if r.outcome is not None)
        now = self.clock()
        self._acquire_many(
            campaign_id,
            wave,
            [r for r in runs if r.repeatable and not _held(r.claim_raw, now, self.stale_s)],
            delivery,
        )
        self.store.add_in_flight(agent_id, len(runs))
        retries: list[Run] = []
        try:
            for run in runs:
                tid = run.spec.task_id
                if not run.claimed:
                    other = self._acquire(run, delivery)
                    if other is not None:
                        res.done.append((tid, other.status.value))
                        continue
                if run.orphan:
                    self._settle_orphan(run)
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
                    res.retry.append(sent[tid])  # as sent: a lock's mock copy would not match
                    res.retry_delay_s = max(res.retry_delay_s, retry_after)
                    continue
                run.outcome = outcome
                pending.append(outcome)
                flushed.append(run)
                if run.guarded:
                    self._flush(pending, flushed, res)
        finally:
            self._flush(pending, flushed, res)
            self._to_retry_wait(campaign_id, wave, retries)
            self.store.add_in_flight(agent_id, -len(runs))
        return res

    # -- what may run ----------------------------------------------------------------------

    def _authorized(
        self,
        cid: str,
        wave: int,
        agent_id: str,
        specs: list[TaskSpec],
        batch: BatchState,
        res: BatchResult,
        digests: list[str] | None,
    ) -> list[TaskSpec]:
        """The specs the coordinator dispatched in this wave, as sent; the rest go to ``on_refused``."""
        if batch.campaign_status != "running":
            why = (
                f"campaign {cid} does not exist"
                if batch.campaign_status is None
                else f"campaign {cid} is {batch.campaign_status}, not running"
            )
            self._refuse(cid, wave, agent_id, specs, why, res)
            return []
        kept: list[TaskSpec] = []
        refused: list[TaskSpec] = []
        if digests is None or len(digests) != len(specs):
            digests = [""] * len(specs)
        for spec, digest in zip(specs, digests, strict=True):
            want = batch.dispatched.get(spec.task_id)
            # the message's own item first (what the coordinator sent: no dump needed), else
            # the spec in its JSON form (an item that left its defaults out)
            ok = want is not None and (
                want == f"{wave}:{digest}" or want == f"{wave}:{spec_digest(spec.model_dump(mode='json'))}"
            )
            (kept if ok else refused).append(spec)
        if refused:
            why = (
                f"not dispatched in wave {wave} of {cid} as sent "
                "(no dispatch record, or another wave, tool, args or mode)"
            )
            self._refuse(cid, wave, agent_id, refused, why, res)
        return kept

    def _refuse(
        self, cid: str, wave: int, agent_id: str, specs: list[TaskSpec], why: str, res: BatchResult
    ) -> None:
        res.refused += len(specs)
        log.warning("refused %d task(s) of %s wave %s for agent %s: %s", len(specs), cid, wave, agent_id, why)
        if self.on_refused is not None:
            self.on_refused(cid, wave, agent_id, specs, why)

    def _check_approvals(self, cid: str, runs: list[Run], flushed: list[Run]) -> None:
        """A HIGH or CRITICAL task that would run live needs an ``approved`` approval record (the
        coordinator's gate decided; this checks it where the effect happens). One round trip,
        only when the batch has such a task."""
        gated = [
            r
            for r in runs
            if r.effectful
            and r.contract is not None
            and r.contract.risk_for(r.args) in (Risk.HIGH, Risk.CRITICAL)
        ]
        if not gated:
            return
        pipe = self.store.r.pipeline(transaction=False)
        for r in gated:
            pipe.hget(approval_key(cid, r.spec.task_id), "status")
        for r, status in zip(gated, pipe.execute(), strict=True):
            got = status.decode() if isinstance(status, bytes) else status
            if got != "approved":
                risk = r.contract.risk_for(r.args).value  # type: ignore[union-attr]
                why = f"no approved approval record for this {risk} live task ({got or 'none'})"
                r.outcome = self.attempts.outcome(r, TaskStatus.DENIED, error=("approval_missing", why))
                flushed.append(r)

    # -- claims --------------------------------------------------------------------------

    def _prepare(
        self, cid: str, wave: int, agent_id: str, spec: TaskSpec, claim_raw: bytes | None, lock: str | None
    ) -> Run:
        """The run of ``spec``; ``run.outcome`` is set when the task ends here without running."""
        if lock and spec.mode is not Mode.MOCK:
            spec = spec.model_copy(update={"mode": Mode.MOCK, "mode_reason": f"system locked: {lock}"})
        run = Run(cid=cid, wave=wave, agent_id=agent_id, spec=spec)
        try:
            run.contract = self.registry.get(spec.tool)
            run.args = run.contract.parse_args(spec.args)
        except (BuddyError, ValidationError) as e:
            etype = "UnknownTool" if run.contract is None else "InvalidArgs"
            run.outcome = self.attempts.outcome(run, TaskStatus.FAILED, error=(etype, str(e)))
            return run
        run.effectful = spec.mode is Mode.LIVE
        self._from_claim(run, claim_raw)
        return run

    def _from_claim(self, run: Run, raw: bytes | None) -> None:
        """Set the attempt number, earlier errors and whether an attempt died, from the claim."""
        run.claim_raw, run.attempt, run.orphan, run.errors = raw, 1, False, []
        claim = parse(raw)
        if claim is None:
            return
        run.errors.extend(AttemptError.model_validate(e) for e in claim.errors)
        run.attempt = claim.attempt + 1
        if claim.state != "retry_wait":  # running (or settled) with no outcome: that attempt died
            run.state, run.orphan = TaskStatus.RUNNING, True
            run.errors.append(
                AttemptError(
                    attempt=claim.attempt,
                    error_type="WorkerLost",
                    error_msg=f"attempt {claim.attempt} on {claim.worker} ended without an outcome",
                    at=utcnow(),
                )
            )

    def _new_claim(self, run: Run, delivery: str) -> Claim:
        now = self.clock()
        return Claim(
            worker=self.worker, attempt=run.attempt, started_at=now, heartbeat=now, delivery=delivery
        )

    def _acquire_many(self, cid: str, wave: int, runs: list[Run], delivery: str) -> None:
        """Claim ``runs`` in one round trip; the ones whose claim changed meanwhile stay unclaimed
        (:meth:`_acquire` settles them one by one)."""
        entries = {r.spec.task_id: (r.claim_raw, self._new_claim(r, delivery)) for r in runs}
        got = self.claims.acquire(cid, wave, entries, self.claim_ttl_s)
        mine: dict[str, tuple[bytes, Claim]] = {}
        for r in runs:
            code, raw = got[r.spec.task_id]
            if code == CLAIMED:
                r.claimed, r.claim_raw = True, raw
                mine[r.spec.task_id] = (raw, entries[r.spec.task_id][1])
        self.held.hold(cid, mine)

    def _acquire(self, run: Run, delivery: str) -> Outcome | None:
        """Claim ``run``'s task right before it runs. Returns the outcome another attempt
        recorded instead (after waiting while that attempt is alive), or None once the claim
        is ours."""
        cid, tid = run.cid, run.spec.task_id
        while True:
            if _held(run.claim_raw, self.clock(), self.stale_s):
                other = self._await_other(cid, tid)
                if other is not None:
                    return other
            else:
                new = self._new_claim(run, delivery)
                code, raw = self.claims.acquire(cid, run.wave, {tid: (run.claim_raw, new)}, self.claim_ttl_s)[
                    tid
                ]
                if code == CLAIMED:
                    run.claimed, run.claim_raw = True, raw
                    self.held.hold(cid, {tid: (raw, new)})
                    return None
                if code == HAS_OUTCOME:
                    got = self.store.outcomes(cid, [tid]).get(tid)
                    if got is not None:
                        return got
            # the claim changed under us: read it again and decide anew
            self._from_claim(run, self.claims.read(cid, [tid]).get(tid))

    def _await_other(self, cid: str, task_id: str) -> Outcome | None:
        """Wait while another attempt's claim stays fresh; its outcome, or None when the claim
        went stale (that attempt died) or changed hands."""
        while True:
            got = self.store.outcomes(cid, [task_id]).get(task_id)
            if got is not None:
                return got
            if not _held(self.claims.read(cid, [task_id]).get(task_id), self.clock(), self.stale_s):
                return None
            time.sleep(min(0.2, self.renew_s))

    def _settle_orphan(self, run: Run) -> None:
        """The claim of an attempt that died is ours now: run again only if safe (repeatable, or
        its partial effect rolled back), else end ``needs_review``."""
        assert run.contract is not None
        why = ""
        safe = run.repeatable
        if not safe and run.contract.reversible:
            safe, why = self._rollback_orphan(run)
        if not safe:
            died = run.errors[-1].error_msg if run.errors else "an earlier attempt ended without an outcome"
            what = (
                f"its partial effect could not be undone ({why})"
                if why
                else f"{run.spec.tool} is neither idempotent nor reversible"
            )
            run.outcome = self.attempts.outcome(
                run,
                TaskStatus.NEEDS_REVIEW,
                error=(
                    "WorkerLost",
                    f"{died}; {what}, so it was not run again: settle it with `buddy review`",
                ),
            )
            run.guarded = True

    def _rollback_orphan(self, run: Run) -> tuple[bool, str]:
        """Undo a dead attempt's partial effect, holding the task's leases (fenced), so the task
        can run again. (True, "") when done, or when the attempt recorded no undo data (it died
        before any effect); (False, why) otherwise."""
        cid, spec, contract = run.cid, run.spec, run.contract
        assert contract is not None
        record = self.store.undo_data(cid, [spec.task_id]).get(spec.task_id)
        if record is None:
            return True, ""
        if contract.rollback is None:
            return False, f"{contract.name} has no rollback"
        ctx = ToolContext(
            campaign_id=cid,
            task_id=spec.task_id,
            workdir=Path(spec.workdir),
            worker=self.worker,
            undo=record["undo"],
        )
        try:
            with self.attempts.leased(run, ctx):
                contract.rollback(run.args, record["undo"], ctx)
        except (LeaseLostError, StaleCommitError) as e:
            run.current_token = e.current_token
            return False, str(e)
        except Exception as e:
            log.exception("could not roll back the dead attempt of task %s", spec.task_id)
            return False, f"{type(e).__name__}: {e}"
        return True, ""

    def _to_retry_wait(self, cid: str, wave: int, runs: list[Run]) -> None:
        """Mark the claims of runs that go back for a Celery retry ``retry_wait`` (with their
        errors, for the next attempt), count them, and stop renewing them."""
        if not runs:
            return
        self.held.retry_wait(
            cid, {r.spec.task_id: (r.claim_raw, [e.model_dump(mode="json") for e in r.errors]) for r in runs}
        )
        self.store.retry_counts(cid, wave, len(runs), [t for r in runs for t in r.transitions])

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
