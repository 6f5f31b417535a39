"""A worker's claims on the tasks it runs: read, take, wait on, hand back for a retry.

:class:`ClaimKeeper` is the part of :class:`buddy.execution.executor.Executor` that deals with
:mod:`buddy.state.claims` (README, "Execution"). A task is claimed with a compare-and-set right
before it runs (tasks that are safe to repeat: all of a batch's in one round trip first). A
claim held by another live attempt (fresh heartbeat) is waited on, and its outcome taken; a
claim whose attempt died (``running``, stale) is taken over, and the run marked an orphan
(:mod:`buddy.execution.takeover` decides whether it may run again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from buddy.execution.attempt import Run
from buddy.models import AttemptError, Outcome, TaskStatus, utcnow
from buddy.state.claims import CLAIMED, HAS_OUTCOME, Claim, Claims, HeldClaims, parse
from buddy.state.store import Store


def held(raw: bytes | None, now: float, stale_s: float) -> bool:
    """Whether a stored claim belongs to an attempt in progress (``running``, fresh heartbeat)."""
    claim = parse(raw)
    return claim is not None and claim.fresh(now, stale_s)


class ClaimKeeper:
    """Takes and settles claims for one worker process.

    ``worker`` names it in claims; ``claim_ttl_s`` is how long a claim lives in Redis;
    ``stale_s`` is how old a claim's heartbeat may be before its attempt counts as dead, and
    ``renew_s`` bounds how often another attempt's claim is polled while waiting on it
    (seconds). ``held_claims`` renews the heartbeats of the claims taken here.
    """

    def __init__(
        self,
        store: Store,
        claims: Claims,
        held_claims: HeldClaims,
        *,
        worker: str,
        claim_ttl_s: int,
        clock: Callable[[], float],
        stale_s: float,
        renew_s: float,
    ) -> None:
        self.store = store
        self.claims = claims
        self.held = held_claims
        self.worker = worker
        self.claim_ttl_s = claim_ttl_s
        self.clock = clock
        self.stale_s = stale_s
        self.renew_s = renew_s

    def from_claim(self, run: Run, raw: bytes | None) -> None:
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
                    # what the claim knows: when it started, and its last sign of life
                    start_time=datetime.fromtimestamp(claim.started_at, UTC),
                    duration_ms=max(0.0, (claim.heartbeat - claim.started_at) * 1000.0),
                )
            )

    def _new_claim(self, run: Run, delivery: str) -> Claim:
        now = self.clock()
        return Claim(
            worker=self.worker, attempt=run.attempt, started_at=now, heartbeat=now, delivery=delivery
        )

    def acquire_many(self, cid: str, wave: int, runs: list[Run], delivery: str) -> None:
        """Claim ``runs`` in one round trip; the ones whose claim changed meanwhile stay unclaimed
        (:meth:`acquire` settles them one by one)."""
        entries = {r.spec.task_id: (r.claim_raw, self._new_claim(r, delivery)) for r in runs}
        got = self.claims.acquire(cid, wave, entries, self.claim_ttl_s)
        mine: dict[str, tuple[bytes, Claim]] = {}
        for r in runs:
            code, raw = got[r.spec.task_id]
            if code == CLAIMED:
                r.claimed, r.claim_raw = True, raw
                mine[r.spec.task_id] = (raw, entries[r.spec.task_id][1])
        self.held.hold(cid, mine)

    def acquire(self, run: Run, delivery: str) -> Outcome | None:
        """Claim ``run``'s task right before it runs. Returns the outcome another attempt
        recorded instead (after waiting while that attempt is alive), or None once the claim
        is ours."""
        cid, tid = run.cid, run.spec.task_id
        while True:
            if held(run.claim_raw, self.clock(), self.stale_s):
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
            self.from_claim(run, self.claims.read(cid, [tid]).get(tid))

    def _await_other(self, cid: str, task_id: str) -> Outcome | None:
        """Wait while another attempt's claim stays fresh; its outcome, or None when the claim
        went stale (that attempt died) or changed hands."""
        while True:
            got = self.store.outcomes(cid, [task_id]).get(task_id)
            if got is not None:
                return got
            if not held(self.claims.read(cid, [task_id]).get(task_id), self.clock(), self.stale_s):
                return None
            time.sleep(min(0.2, self.renew_s))

    def to_retry_wait(self, cid: str, wave: int, runs: list[Run]) -> None:
        """Mark the claims of runs that go back for a Celery retry ``retry_wait`` (with their
        errors, for the next attempt), count them, and stop renewing them."""
        if not runs:
            return
        self.held.retry_wait(
            cid, {r.spec.task_id: (r.claim_raw, [e.model_dump(mode="json") for e in r.errors]) for r in runs}
        )
        self.store.retry_counts(cid, wave, len(runs), [t for r in runs for t in r.transitions])
