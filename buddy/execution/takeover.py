"""Taking over the task of an attempt that died: run it again only if that is safe.

When a worker finds a task's claim ``running`` with a stale heartbeat and no outcome, that
attempt died, possibly half-way through its effect (README, "Execution"). The task runs again
only if that is safe: a mock or dry run, an idempotent tool, or a reversible one whose partial
effect is rolled back first, under its fenced leases. Otherwise it ends ``needs_review``, its
outcome recorded under the claim (:meth:`buddy.state.claims.HeldClaims.commit`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from buddy.errors import LeaseLostError, StaleCommitError
from buddy.execution.attempt import AttemptRunner, Run
from buddy.models import TaskStatus
from buddy.state.store import Store
from buddy.tools.contract import ToolContext

log = logging.getLogger("buddy.execution")


def settle_orphan(run: Run, store: Store, attempts: AttemptRunner, worker: str) -> None:
    """The claim of an attempt that died is ours now: run again only if safe (repeatable, or
    its partial effect rolled back), else end ``needs_review`` (``run.outcome`` set, guarded)."""
    assert run.contract is not None
    why = ""
    safe = run.repeatable
    if not safe and run.contract.reversible:
        safe, why = rollback_orphan(run, store, attempts, worker)
    if not safe:
        died = run.errors[-1].error_msg if run.errors else "an earlier attempt ended without an outcome"
        what = (
            f"its partial effect could not be undone ({why})"
            if why
            else f"{run.spec.tool} is neither idempotent nor reversible"
        )
        run.outcome = attempts.outcome(
            run,
            TaskStatus.NEEDS_REVIEW,
            error=(
                "WorkerLost",
                f"{died}; {what}, so it was not run again: settle it with `buddy review`",
            ),
        )
        run.guarded = True


def rollback_orphan(run: Run, store: Store, attempts: AttemptRunner, worker: str) -> tuple[bool, str]:
    """Undo a dead attempt's partial effect, holding the task's leases (fenced), so the task
    can run again. (True, "") when done, or when the attempt recorded no undo data (it died
    before any effect); (False, why) otherwise."""
    cid, spec, contract = run.cid, run.spec, run.contract
    assert contract is not None
    record = store.undo_data(cid, [spec.task_id]).get(spec.task_id)
    if record is None:
        return True, ""
    if contract.rollback is None:
        return False, f"{contract.name} has no rollback"
    ctx = ToolContext(
        campaign_id=cid,
        task_id=spec.task_id,
        workdir=Path(spec.workdir),
        worker=worker,
        undo=record["undo"],
    )
    try:
        with attempts.leased(run, ctx):
            contract.rollback(run.args, record["undo"], ctx)
    except (LeaseLostError, StaleCommitError) as e:
        run.current_token = e.current_token
        return False, str(e)
    except Exception as e:
        log.exception("could not roll back the dead attempt of task %s", spec.task_id)
        return False, f"{type(e).__name__}: {e}"
    return True, ""
