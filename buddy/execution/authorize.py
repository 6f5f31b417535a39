"""What a worker may run: only dispatched work, and live high-risk work only once approved.

:class:`Authorizer` is the part of :class:`buddy.execution.executor.Executor` that decides,
before anything is claimed, which tasks of a batch may run at all (README, "Execution"):

* the campaign must be recorded ``running`` (or ``paused``) in Redis and each task recorded
  as sent in this wave with this exact message (:meth:`buddy.state.store.Store.record_dispatch`, a digest of
  the task's spec); anything else is refused (``on_refused``: the worker dead-letters it) and
  gets no outcome;
* a HIGH or CRITICAL task that would run live also needs an ``approved`` record in
  ``buddy:approval:<cid>:<task>`` (the coordinator's gate decided; this checks it where the
  effect happens), else it ends ``denied``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from buddy.execution.attempt import AttemptRunner, Run
from buddy.models import Risk, TaskSpec, TaskStatus
from buddy.safety.gates import approval_key
from buddy.state.store import BatchState, Store, spec_digest

log = logging.getLogger("buddy.execution")

#: Called with ``(campaign_id, wave, agent_id, specs, reason)`` for tasks a worker refuses to run.
RefusedHook = Callable[[str, int, str, list[TaskSpec], str], None]


class Authorizer:
    """Checks a batch against the dispatch records and approvals in Redis.

    ``attempts`` builds the ``denied`` outcomes; ``on_refused`` receives the tasks that were
    not dispatched (default: logged only).
    """

    def __init__(
        self, store: Store, attempts: AttemptRunner, *, on_refused: RefusedHook | None = None
    ) -> None:
        self.store = store
        self.attempts = attempts
        self.on_refused = on_refused

    def dispatched(
        self,
        cid: str,
        wave: int,
        agent_id: str,
        specs: list[TaskSpec],
        batch: BatchState,
        digests: list[str] | None,
    ) -> tuple[list[TaskSpec], int]:
        """The specs the coordinator dispatched in this wave, as sent, and how many were
        refused (those go to ``on_refused``)."""
        if batch.campaign_status not in ("running", "paused"):
            why = (
                f"campaign {cid} does not exist"
                if batch.campaign_status is None
                else f"campaign {cid} is {batch.campaign_status}, not running"
            )
            # a held task's message coming back after its campaign ended it (cancelled at a
            # --lock-timeout): nothing to run, nothing to dead-letter
            ended = [s for s in specs if s.task_id in batch.outcomes]
            rest = [s for s in specs if s.task_id not in batch.outcomes]
            return ended, self.refuse(cid, wave, agent_id, rest, why) if rest else 0
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
        n_refused = 0
        if refused:
            why = (
                f"not dispatched in wave {wave} of {cid} as sent "
                "(no dispatch record, or another wave, tool, args or mode)"
            )
            n_refused = self.refuse(cid, wave, agent_id, refused, why)
        return kept, n_refused

    def refuse(self, cid: str, wave: int, agent_id: str, specs: list[TaskSpec], why: str) -> int:
        """Log ``specs`` as refused and hand them to ``on_refused``; how many there were."""
        log.warning("refused %d task(s) of %s wave %s for agent %s: %s", len(specs), cid, wave, agent_id, why)
        if self.on_refused is not None:
            self.on_refused(cid, wave, agent_id, specs, why)
        return len(specs)

    def check_approvals(self, cid: str, runs: list[Run], flushed: list[Run]) -> None:
        """A HIGH or CRITICAL task that would run live needs an ``approved`` approval record;
        the runs without one get a ``denied`` outcome and join ``flushed``. One round trip,
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
