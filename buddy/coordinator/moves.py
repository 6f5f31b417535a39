"""The coordinator's side of the task state machine (:mod:`buddy.state.lifecycle`): each move
it makes is kept for ``state_transitions.jsonl``, and the outcomes it decides without
dispatching (skipped, denied, lost) are built here."""

from __future__ import annotations

from buddy.models import Mode, Outcome, TaskStatus, utcnow
from buddy.plan.model import PlannedTask
from buddy.state.lifecycle import TaskLifecycle, Transition


class TaskMoves:
    """Moves of one campaign's tasks by the coordinator (or on its behalf: an operator, an
    approver). ``mode``: the campaign's mode, the default of decided outcomes."""

    def __init__(self, campaign_id: str, task_ids: list[str], mode: Mode) -> None:
        self.cid = campaign_id
        self.mode = mode
        self.lifecycle = TaskLifecycle(campaign_id, task_ids)
        self.transitions: list[Transition] = []

    def move(
        self,
        task_id: str,
        to: TaskStatus,
        reason: str | None = None,
        extra: str | None = None,
        *,
        by: str = "coordinator",
    ) -> None:
        """Move ``task_id`` to ``to``; raises :class:`~buddy.errors.IllegalTransition`."""
        why = "; ".join(x for x in (reason, extra) if x) or None
        self.transitions.append(self.lifecycle.move(task_id, to, by=by, reason=why))

    def follow(self, task_id: str, status: TaskStatus) -> None:
        """Take a state a worker (or a stored outcome) moved the task to."""
        self.lifecycle.state[task_id] = status

    def closed(
        self,
        pt: PlannedTask,
        status: TaskStatus,
        error_type: str,
        reason: str,
        *,
        mode: Mode | None = None,
        by: str = "coordinator",
    ) -> Outcome:
        """Move ``pt`` to ``status`` and return the outcome the coordinator decides for it."""
        self.move(pt.task.task_id, status, reason, by=by)
        now = utcnow()
        return Outcome(
            task_id=pt.task.task_id,
            campaign_id=self.cid,
            agent_id=pt.agent,
            wave=pt.wave,
            status=status,
            mode=mode or self.mode,
            attempts=0,
            start_time=None,  # it never ran
            end_time=now,
            error_type=error_type,
            error_msg=reason,
            tool=pt.task.tool,
            phase21_plan_id=pt.task.phase21_plan_id,
            phase22_validation_id=pt.task.phase22_validation_id,
        )

    def take(self) -> list[Transition]:
        """The moves since the last call."""
        rows, self.transitions = self.transitions, []
        return rows
