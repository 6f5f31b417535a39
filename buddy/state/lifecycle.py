"""The task state machine (issue: tool contracts, modes, approvals, rollback).

::

    pending → validated → awaiting_approval → approved | denied
    validated | approved → queued → running → succeeded | failed | timed_out → rolled_back
    plus skipped (upstream failed, deduplicated) and needs_review (an attempt died mid-way)

Transitions not in :data:`LEGAL` raise :class:`~buddy.errors.IllegalTransition`. Every transition is
recorded as a :class:`Transition` (one line of ``state_transitions.jsonl``): the coordinator
records its own (validated, awaiting approval, queued, skipped), workers push theirs to Redis
(``buddy:campaign:<cid>:transitions``) and the coordinator writes them out after each wave.

Edges beyond the happy path, and why:

- ``running → queued``: a retryable failure; Celery's ``retry`` sends the task again.
- ``running → denied``: a worker policy (allow-list) refused the call.
- ``running → needs_review``: an earlier attempt died mid-way and the tool is neither
  idempotent nor reversible.
- ``queued | running → lost``: the wave's deadline passed with no outcome for the task;
  ``lost → queued`` when it is sent once more (idempotent tools), ``lost → succeeded |
  failed`` when an operator settles it (``buddy review``).
- ``succeeded → rolled_back``: compensation after an abort (``--rollback-on-abort``).
- ``needs_review → succeeded | failed | queued``: an operator's ``buddy review`` decision.
- ``validated → succeeded | failed | timed_out | needs_review | lost``: a deduplicated task
  (``duplicate_irreversible`` resolved by ``deduplicate``) takes its twin's outcome; it never runs.
- ``validated | awaiting_approval | approved | queued → cancelled``: ``buddy cancel`` before
  the task started, or the campaign ended by ``--lock-timeout`` before it ran.
- ``running → running`` does not exist: a redelivered attempt keeps the state it had.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from buddy.errors import IllegalTransition
from buddy.models import TaskStatus, utcnow

S = TaskStatus

#: from-state → the states it may move to.
LEGAL: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.PENDING: frozenset({S.VALIDATED}),
    S.VALIDATED: frozenset(
        {
            S.AWAITING_APPROVAL,
            S.QUEUED,
            S.SKIPPED,
            S.DENIED,
            S.SUCCEEDED,
            S.FAILED,
            S.TIMED_OUT,
            S.NEEDS_REVIEW,
            S.LOST,
            S.CANCELLED,
        }
    ),
    S.AWAITING_APPROVAL: frozenset({S.APPROVED, S.DENIED, S.CANCELLED}),
    S.APPROVED: frozenset({S.QUEUED, S.SKIPPED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.SKIPPED, S.FAILED, S.NEEDS_REVIEW, S.DENIED, S.LOST, S.CANCELLED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.TIMED_OUT, S.DENIED, S.NEEDS_REVIEW, S.QUEUED, S.LOST}),
    S.SUCCEEDED: frozenset({S.ROLLED_BACK}),
    S.FAILED: frozenset({S.ROLLED_BACK}),
    S.TIMED_OUT: frozenset({S.ROLLED_BACK}),
    S.NEEDS_REVIEW: frozenset({S.SUCCEEDED, S.FAILED, S.QUEUED}),
    S.DENIED: frozenset(),
    S.SKIPPED: frozenset(),
    S.ROLLED_BACK: frozenset(),
    S.LOST: frozenset({S.QUEUED, S.SUCCEEDED, S.FAILED}),
    S.CANCELLED: frozenset(),
}


class Transition(BaseModel):
    """One line of ``state_transitions.jsonl``.

    ``by`` is ``coordinator``, ``worker <name>`` or ``operator <name>``.
    """

    campaign_id: str
    task_id: str
    from_state: TaskStatus = Field(serialization_alias="from", validation_alias="from")
    to_state: TaskStatus = Field(serialization_alias="to", validation_alias="to")
    at: datetime
    by: str
    reason: str | None = None

    model_config = {"populate_by_name": True, "serialize_by_alias": True}


def check(from_state: TaskStatus, to_state: TaskStatus) -> None:
    """Raise :class:`~buddy.errors.IllegalTransition` unless ``from_state → to_state`` is legal."""
    if to_state not in LEGAL[from_state]:
        allowed = ", ".join(sorted(s.value for s in LEGAL[from_state])) or "nothing (final)"
        raise IllegalTransition(
            f"illegal transition {from_state.value} → {to_state.value}; allowed: {allowed}"
        )


def transition(
    campaign_id: str,
    task_id: str,
    from_state: TaskStatus,
    to_state: TaskStatus,
    *,
    by: str,
    reason: str | None = None,
    at: datetime | None = None,
) -> Transition:
    """A checked :class:`Transition`; raises :class:`~buddy.errors.IllegalTransition` for an illegal one."""
    check(from_state, to_state)
    return Transition(
        campaign_id=campaign_id,
        task_id=task_id,
        from_state=from_state,
        to_state=to_state,
        at=at or utcnow(),
        by=by,
        reason=reason,
    )


class TaskLifecycle:
    """The current state of each task of a campaign, moved only along legal edges."""

    def __init__(self, campaign_id: str, task_ids: list[str] | None = None) -> None:
        self.campaign_id = campaign_id
        self.state: dict[str, TaskStatus] = dict.fromkeys(task_ids or [], S.PENDING)

    def move(self, task_id: str, to_state: TaskStatus, *, by: str, reason: str | None = None) -> Transition:
        """Move ``task_id`` to ``to_state``; raises :class:`~buddy.errors.IllegalTransition`
        (state unchanged)."""
        t = transition(
            self.campaign_id, task_id, self.state.get(task_id, S.PENDING), to_state, by=by, reason=reason
        )
        self.state[task_id] = to_state
        return t
