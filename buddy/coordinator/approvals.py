"""Approvals in the coordinator: tasks that would run live with a HIGH or CRITICAL tool wait
for a decision before their wave is sent (docs/architecture.md, "Execution modes").

A decision comes from an ``approver`` callable when the campaign has one (the Python API's
``approver=``), else from an operator through Redis (``buddy approvals approve|deny``).
Either way it is written to ``buddy:approval:<campaign>:<task>`` with the Lua
compare-and-set of :class:`~buddy.safety.gates.Approvals`: a worker runs a HIGH/CRITICAL
live task only with an ``approved`` record there, and ``buddy approvals list`` and the
report show who decided.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel

from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.options import Clock
from buddy.models import Risk
from buddy.plan.model import PlannedTask
from buddy.safety.gates import Approvals

log = logging.getLogger("buddy.approvals")


class ApprovalRequest(BaseModel):
    """What an approver is asked about one task: ``risk`` is the contract's risk for these
    ``args``; ``confidence`` (0–1) is the plan's confidence times the agent's learned weight."""

    campaign_id: str
    task_id: str
    wave: int
    tool: str
    risk: Risk
    confidence: float
    args: dict[str, Any]
    agent: str


#: An approver: ``True`` approves, ``False`` denies. An exception, a non-bool answer or a
#: call longer than the approval timeout denies.
Approver = Callable[[ApprovalRequest], bool]

#: (task, reason, who) for each denied task.
Denied = list[tuple[PlannedTask, str, str]]


def approval_item(pt: PlannedTask, risk: Risk) -> tuple[str, Risk, str, int, str]:
    """A task's request as :meth:`Approvals.request` stores it (args as sorted JSON)."""
    return (pt.task.task_id, risk, pt.task.tool, pt.wave, json.dumps(pt.task.args, sort_keys=True))


class ApprovalWaiter:
    """Requests approvals for a wave's waiting tasks and collects the decisions.

    ``timeout_s``: seconds a request may stay pending (``approval_timeout``), then denied.
    ``on_approved(task_id, why, by)`` is called for each approval as it comes.
    """

    def __init__(
        self,
        approvals: Approvals,
        clock: Clock,
        hooks: HookRunner,
        *,
        timeout_s: float,
        approver: Approver | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.approvals = approvals
        self.clock = clock
        self.hooks = hooks
        self.timeout_s = timeout_s
        self.approver = approver
        self.poll_s = poll_s

    def wait(
        self,
        ctx: CampaignContext,
        waiting: list[tuple[PlannedTask, Risk, float]],
        on_approved: Callable[[str, str, str], None],
    ) -> Denied:
        """Request a decision for each ``(task, risk, confidence)``; return the denied ones."""
        cid = ctx.campaign_id
        self.approvals.request(cid, [approval_item(pt, risk) for pt, risk, _ in waiting])
        if self.approver is not None:
            return self._ask(ctx, waiting, on_approved)
        return self._poll(ctx, {pt.task.task_id: pt for pt, _, _ in waiting}, on_approved)

    def _ask(
        self,
        ctx: CampaignContext,
        waiting: list[tuple[PlannedTask, Risk, float]],
        on_approved: Callable[[str, str, str], None],
    ) -> Denied:
        assert self.approver is not None
        name = getattr(self.approver, "__qualname__", type(self.approver).__qualname__)
        by = f"approver {name}"
        denied: Denied = []
        for i, (pt, risk, confidence) in enumerate(waiting):
            request = ApprovalRequest(
                campaign_id=ctx.campaign_id,
                task_id=pt.task.task_id,
                wave=pt.wave,
                tool=pt.task.tool,
                risk=risk,
                confidence=confidence,
                args=dict(pt.task.args),
                agent=pt.agent,
            )
            ok, reason = self._call(request)
            status: Literal["approved", "denied"] = "approved" if ok else "denied"
            self.approvals.decide(ctx.campaign_id, [pt.task.task_id], status, by=by, reason=reason)
            why = f"{status} by {by}" + (f": {reason}" if reason else "")
            if ok:
                on_approved(pt.task.task_id, why, by)
            else:
                denied.append((pt, f"approval {why}", by))
            approved = i + 1 - len(denied)
            self.hooks.emit("on_approvals", ctx, len(waiting) - i - 1, approved, len(denied))
        return denied

    def _call(self, request: ApprovalRequest) -> tuple[bool, str]:
        """Run the approver in a daemon thread bounded by the timeout: (approved, reason)."""
        answer: list[Any] = []
        error: list[BaseException] = []

        def call() -> None:
            try:
                answer.append(self.approver(request))  # type: ignore[misc]
            except BaseException as e:  # reported as the reason for the denial
                error.append(e)

        thread = threading.Thread(target=call, name=f"approver-{request.task_id}", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():
            log.warning("approver gave no answer for %s within %g s: denied", request.task_id, self.timeout_s)
            return False, f"no answer within {self.timeout_s:g} s"
        if error:
            e = error[0]
            log.warning("approver raised for %s: %s: %s (denied)", request.task_id, type(e).__name__, e)
            return False, f"the approver raised {type(e).__name__}: {e}"
        if not isinstance(answer[0], bool):
            return False, f"the approver returned {answer[0]!r}, not True or False"
        return answer[0], ""

    def _poll(
        self,
        ctx: CampaignContext,
        by_id: dict[str, PlannedTask],
        on_approved: Callable[[str, str, str], None],
    ) -> Denied:
        """Wait for operators' decisions in Redis, at most ``timeout_s`` (by the clock)."""
        cid = ctx.campaign_id
        deadline = self.clock.monotonic() + self.timeout_s
        pending = set(by_id)
        denied: Denied = []
        approved = 0
        while True:  # after the timeout, one more pass reads a decision that raced it
            for a in self.approvals.get(cid, sorted(pending)):
                if a.status == "pending":
                    continue
                pending.discard(a.task_id)
                why = f"{a.status} by {a.by}" + (f": {a.reason}" if a.reason else "")
                if a.status == "approved":
                    approved += 1
                    on_approved(a.task_id, why, f"operator {a.by}")
                else:
                    denied.append((by_id[a.task_id], f"approval {why}", f"operator {a.by}"))
            self.hooks.emit("on_approvals", ctx, len(pending), approved, len(denied))
            if not pending:
                break
            if self.clock.monotonic() >= deadline:
                for tid in self.approvals.expire(cid, sorted(pending), self.timeout_s):
                    why = f"no decision within {self.timeout_s:g} s"
                    denied.append((by_id[tid], f"approval timed out: {why}", "coordinator"))
                    pending.discard(tid)
                continue  # a decision that raced the timeout is read on the next pass
            self.clock.sleep(self.poll_s)
        return denied
