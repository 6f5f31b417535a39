"""Worker side of compensation: undo one succeeded reversible task (``buddy.rollback``).

The coordinator's side (which tasks, in which order) is :mod:`buddy.coordinator.rollback`. A compensation
is an effect like any other: it runs holding the task's write leases, and a rollback fenced off
by a lost lease leaves the task ``needs_review`` with both tokens instead of undoing a newer
holder's effect.
"""

from __future__ import annotations

import logging
from pathlib import Path

from buddy.errors import LeaseLostError, StaleCommitError, ToolError
from buddy.execution.attempt import Run
from buddy.execution.executor import Executor
from buddy.models import Mode, RollbackEvent, TaskSpec, TaskStatus, utcnow
from buddy.state.lifecycle import Transition, transition
from buddy.tools.contract import ToolContext

log = logging.getLogger("buddy.execution")


def compensate(ex: Executor, campaign_id: str, task_id: str) -> RollbackEvent:
    """Undo the effect of a succeeded reversible task (``--rollback-on-abort``, ``buddy rollback``).

    Uses the undo data the tool recorded before its effect (``buddy:campaign:<cid>:undo``).
    On success the outcome becomes ``rolled_back``; the event is pushed to the campaign's
    rollback list either way. Never raises for a tool's failure: the event says it.
    """
    outcome = ex.store.outcomes(campaign_id, [task_id]).get(task_id)
    record = ex.store.undo_data(campaign_id, [task_id]).get(task_id)
    event = RollbackEvent(
        campaign_id=campaign_id,
        task_id=task_id,
        tool=outcome.tool if outcome else None,
        agent_id=outcome.agent_id if outcome else None,
        wave=outcome.wave if outcome else None,
        status="skipped",
        at=utcnow(),
        worker=ex.worker,
    )
    if outcome is None or outcome.status is not TaskStatus.SUCCEEDED:
        event.reason = f"outcome is {outcome.status.value if outcome else 'missing'}, not succeeded"
    elif record is None:
        event.reason = "no undo data was recorded (not a live reversible effect)"
    else:
        move: Transition | None = None
        try:
            contract = ex.registry.get(record["tool"])
            args = contract.parse_args(record["args"])
            if contract.rollback is None:
                raise ToolError(f"{contract.name} has no rollback", error_type="NotReversible")
            workdir = record.get("workdir") or "."
            claims = record.get("claims")
            spec = TaskSpec(
                task_id=task_id,
                tool=contract.name,
                args=record["args"],
                mode=Mode.LIVE,
                workdir=workdir,
                claims=claims if claims is not None else contract.claims(args, Path(workdir)),
            )
            run = Run(cid=campaign_id, wave=outcome.wave, agent_id=outcome.agent_id or "", spec=spec)
            run.attempt = outcome.attempts + 1  # a lease owner of its own
            ctx = ToolContext(
                campaign_id=campaign_id, task_id=task_id, workdir=Path(workdir), worker=ex.worker,
                undo=record["undo"],
            )  # fmt: skip
            with ex.attempts.leased(run, ctx):  # a compensation is an effect: fenced like one
                contract.rollback(args, record["undo"], ctx)
        except (LeaseLostError, StaleCommitError) as e:
            event.status, event.error = "failed", f"{type(e).__name__}: {e}"
            outcome.status = TaskStatus.NEEDS_REVIEW
            outcome.current_fencing_token = e.current_token
            outcome.error_type, outcome.error_msg = e.error_type, f"compensation fenced off: {e}"
            move = transition(
                campaign_id, task_id, TaskStatus.SUCCEEDED, TaskStatus.NEEDS_REVIEW,
                by=f"worker {ex.worker}", reason=f"compensation fenced off: {e.error_type}",
            )  # fmt: skip
        except Exception as e:
            log.exception("compensation of task %s failed", task_id)
            event.status, event.error = "failed", f"{type(e).__name__}: {e}"
        else:
            event.status = "rolled_back"
            outcome.status = TaskStatus.ROLLED_BACK
            outcome.rolled_back = True
            move = transition(
                campaign_id, task_id, TaskStatus.SUCCEEDED, TaskStatus.ROLLED_BACK,
                by=f"worker {ex.worker}", reason="compensated after an abort",
            )  # fmt: skip
        if move is not None:
            ex.store.replace_outcome(outcome, move)
    ex.store.push_rollback_event(event)
    return event
