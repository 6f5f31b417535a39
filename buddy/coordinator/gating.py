"""Before a wave is sent: which of its tasks are skipped, which wait for their deduplicated
twin, and which pass their safety gate — HIGH/CRITICAL tasks that would run live wait for
approval (docs/architecture.md, "Execution modes")."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console

from buddy.coordinator.approvals import ApprovalWaiter, approval_commands, approval_item, hint_redis_url
from buddy.coordinator.hooks import CampaignContext
from buddy.coordinator.moves import TaskMoves
from buddy.models import Mode, Outcome, Risk, TaskStatus
from buddy.plan.model import PlannedTask
from buddy.safety.gates import Gate, escalate
from buddy.tools.registry import ToolRegistry


def upstream_failure(pt: PlannedTask, outcomes: Mapping[str, Outcome]) -> str | None:
    """Why ``pt`` cannot run because of its dependencies (``trigger_rule`` ``all_success``),
    or None."""
    if pt.task.trigger_rule == "all_done":
        return None
    for dep in pt.task.depends_on:
        o = outcomes.get(dep)
        if o is None:
            return f"dependency {dep!r} has no outcome"
        if o.status is not TaskStatus.SUCCEEDED:
            return f"dependency {dep!r} ended {o.status.value}"
    return None


class WaveGating:
    """Gates the tasks of each wave of one campaign."""

    def __init__(
        self,
        ctx: CampaignContext,
        registry: ToolRegistry,
        moves: TaskMoves,
        waiter: ApprovalWaiter,
        console: Console,
    ) -> None:
        self.ctx, self.registry, self.moves, self.waiter, self.console = ctx, registry, moves, waiter, console
        self.approvals = waiter.approvals

    def gate(
        self, n: int, outcomes: Mapping[str, Outcome], weight: Mapping[str, float]
    ) -> tuple[list[Outcome], dict[str, Gate]]:
        """Each task of wave ``n`` without an outcome in ``outcomes``: skipped (a conflict, an
        upstream failure), left for its twin, or gated with its confidence times its agent's
        ``weight`` (0–1); tasks an operator cancelled (``buddy cancel``) end ``cancelled``.
        Returns the outcomes decided here (skipped, denied, cancelled) and the gates."""
        plan, opts, store, cid = self.ctx.plan, self.ctx.options, self.ctx.store, self.ctx.campaign_id
        cancelled = store.cancel_requested(cid, [pt.task.task_id for pt in plan.waves[n]])
        pre: list[Outcome] = []
        gates: dict[str, Gate] = {}
        waiting: list[tuple[PlannedTask, Risk, float]] = []
        for pt in plan.waves[n]:
            tid = pt.task.task_id
            if tid in outcomes or tid in plan.reuse:
                continue  # final already; or takes its twin's outcome once the twin has one
            if tid in cancelled:
                why = "cancelled by an operator before it was sent"
                by = f"operator {cancelled[tid]}"
                pre.append(self.moves.closed(pt, TaskStatus.CANCELLED, "cancelled", why, by=by))
                continue
            if tid in plan.skip:
                pre.append(self.moves.closed(pt, TaskStatus.SKIPPED, "conflict", plan.skip[tid]))
                continue
            reason = upstream_failure(pt, outcomes)
            if reason is not None:
                pre.append(self.moves.closed(pt, TaskStatus.SKIPPED, "upstream_failed", reason))
                continue
            contract = self.registry.get(pt.task.tool)
            risk = contract.risk_for(contract.parse_args(pt.task.args))
            confidence = pt.task.confidence * weight.get(pt.agent, 1.0)  # the agent's calibration
            gate = escalate(opts.mode, risk, confidence, opts.escalation)
            gates[tid] = gate
            if not gate.needs_approval:
                continue
            self.moves.move(tid, TaskStatus.AWAITING_APPROVAL, f"{risk.value} task would run live")
            if opts.escalation.auto_approves(risk):
                self.approvals.request(cid, [approval_item(pt, risk)])
                self.approvals.decide(
                    cid, [tid], "approved", by="auto-approve", reason=f"--auto-approve {risk.value}"
                )
                self.moves.move(tid, TaskStatus.APPROVED, f"--auto-approve {opts.escalation.auto_approve}")
            else:
                waiting.append((pt, risk, confidence))
        if waiting:
            pre += self._approve(n, waiting)
        return pre, gates

    def reuse_outcomes(self, tasks: list[PlannedTask], outcomes: Mapping[str, Outcome]) -> None:
        """Deduplicated tasks (``duplicate_irreversible``) take their twin's outcome, never running."""
        twins = [
            pt for pt in tasks if pt.task.task_id in self.ctx.plan.reuse and pt.task.task_id not in outcomes
        ]
        if not twins:
            return
        sources = self.ctx.store.outcomes(
            self.ctx.campaign_id, [self.ctx.plan.reuse[pt.task.task_id] for pt in twins]
        )
        copies = []
        for pt in twins:
            src_id = self.ctx.plan.reuse[pt.task.task_id]
            src = sources.get(src_id)
            if src is None:
                copies.append(
                    self.moves.closed(pt, TaskStatus.SKIPPED, "conflict", f"its twin {src_id} has no outcome")
                )
                continue
            why = f"deduplicated: takes the outcome of {src_id}, which ran the same call"
            self.moves.move(pt.task.task_id, src.status, why)
            update = {"task_id": pt.task.task_id, "agent_id": pt.agent, "wave": pt.wave, "mode_reason": why}
            copies.append(src.model_copy(update=update))
        self.ctx.store.record_outcomes(copies)

    def _approve(self, n: int, waiting: list[tuple[PlannedTask, Risk, float]]) -> list[Outcome]:
        """Wait for the decisions on wave ``n``'s ``waiting`` tasks; returns the denied ones'
        outcomes. Without an approver, prints the commands that decide, each on a line of its
        own and never wrapped, so that it works when pasted (:func:`approval_commands`)."""
        cid, opts = self.ctx.campaign_id, self.ctx.options
        self.console.print(
            f"wave {n}: {len(waiting)} task(s) wait for approval (timeout {opts.approval_timeout_s:g} s)"
            + ("" if self.waiter.approver else "; to see and approve them:"),
            highlight=False,
        )
        if not self.waiter.approver:
            url, note = hint_redis_url(opts, self.ctx.store)
            for command in approval_commands(cid, n, url):
                self.console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
            if note:
                self.console.print(f"  ({note})", markup=False, highlight=False, soft_wrap=True)
        self.ctx.store.event(
            cid, "approvals_requested", wave=n, tasks=sorted(p.task.task_id for p, _, _ in waiting)
        )
        denied = self.waiter.wait(
            self.ctx, waiting, lambda t, why, by: self.moves.move(t, TaskStatus.APPROVED, why, by=by)
        )
        return [
            self.moves.closed(pt, TaskStatus.DENIED, "approval_denied", why, mode=Mode.LIVE, by=by)
            for pt, why, by in denied
        ]
