"""Approvals in the coordinator: tasks that would run live with a HIGH or CRITICAL tool wait
for a decision before their wave is sent (docs/architecture.md, "Execution modes").

A decision comes from an ``approver`` callable when the campaign has one (the Python API's
``approver=``), else from an operator through Redis (``buddy approvals approve|deny``).
Either way it is written to ``buddy:approval:<campaign>:<task>`` with the Lua
compare-and-set of :class:`~buddy.safety.gates.Approvals`: a worker runs a HIGH/CRITICAL
live task only with an ``approved`` record there, and ``buddy approvals list`` and the
report show who decided.

While a wave's tasks wait, the campaign hash holds ``approval_wait`` (:class:`ApprovalWait`;
``buddy status`` shows it) and the hook ``on_approval_request`` is called once. The commands
an operator pastes to decide (:func:`approval_commands`) name the campaign's Redis with
``--redis-url`` unless it is the configured ``BUDDY_REDIS_URL`` or holds a password
(:func:`hint_redis_url`).
"""

from __future__ import annotations

import json
import logging
import shlex
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from buddy.config import get_settings
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.options import CampaignOptions, Clock
from buddy.infra.transport import redact_url
from buddy.models import Risk, utcnow
from buddy.plan.model import PlannedTask
from buddy.safety.gates import Approvals
from buddy.state.store import Store

log = logging.getLogger("buddy.approvals")

#: The campaign hash's field that holds an :class:`ApprovalWait` while tasks wait.
APPROVAL_WAIT_FIELD = "approval_wait"
#: Task ids an :class:`ApprovalWait` lists at most (``tasks`` counts them all).
APPROVAL_WAIT_IDS = 20


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


class ApprovalWait(BaseModel):
    """Tasks of wave ``wave`` waiting for a decision: ``tasks`` of them, the first
    :data:`APPROVAL_WAIT_IDS` ids in ``task_ids``; undecided at ``timeout_at`` (UTC) they are
    denied. Stored as JSON in the campaign hash's ``approval_wait`` field while they wait."""

    wave: int
    tasks: int
    task_ids: list[str]
    timeout_at: datetime

    def describe(self) -> str:
        """``waiting for approval (3 tasks, wave 2, times out at 2025-01-31 12:00:00 UTC)``."""
        at = self.timeout_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        tasks = f"{self.tasks} task{'s' * (self.tasks != 1)}"
        return f"waiting for approval ({tasks}, wave {self.wave}, times out at {at})"


def hint_redis_url(options: CampaignOptions, store: Store) -> tuple[str | None, str]:
    """The Redis URL a pasted command needs, and a note: ``(url, "")`` for the embedded Redis
    (its unix socket, read from ``store``'s client) and for a Redis other than the configured
    ``BUDDY_REDIS_URL``; ``(None, "")`` for that configured one (a command finds it) and when
    unknown; ``(None, note)`` for a URL with a password, which is never printed."""
    if options.embedded:
        kwargs = getattr(getattr(store.r, "connection_pool", None), "connection_kwargs", {})
        path, db = kwargs.get("path"), kwargs.get("db") or 0
        if not path or kwargs.get("password"):
            return None, ""
        return f"unix://{path}" + (f"?db={db}" if db else ""), ""
    shown = options.redis_display
    configured = get_settings().redis_url
    if not shown or (configured and redact_url(configured) == shown):
        return None, ""
    if urlsplit(shown).password is not None:  # redis_display has it as ***
        return None, (
            f"add --redis-url with this campaign's Redis ({shown}) or set BUDDY_REDIS_URL: "
            "its password is not printed"
        )
    return shown, ""


def approval_commands(campaign_id: str, wave: int, redis_url: str | None) -> tuple[str, str]:
    """``(list, approve)``: the ``buddy approvals list`` and ``buddy approvals approve --wave``
    command lines for ``wave``, shell-quoted, with ``--redis-url`` when ``redis_url`` is given
    (:func:`hint_redis_url`)."""
    cid = shlex.quote(campaign_id)
    where = f" --redis-url {shlex.quote(redis_url)}" if redis_url else ""
    return f"buddy approvals list {cid}{where}", f"buddy approvals approve {cid} --wave {wave}{where}"


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
        """Request a decision for each ``(task, risk, confidence)``; return the denied ones.

        While they wait, the campaign hash holds ``approval_wait`` (:class:`ApprovalWait`,
        removed on return); the hook ``on_approval_request`` is called once, first. The
        approver is asked about one task after the other, each answer bounded by the timeout,
        so with an approver ``timeout_at`` is the timeout times the tasks."""
        cid = ctx.campaign_id
        self.approvals.request(cid, [approval_item(pt, risk) for pt, risk, _ in waiting])
        requests = [
            ApprovalRequest(
                campaign_id=cid,
                task_id=pt.task.task_id,
                wave=pt.wave,
                tool=pt.task.tool,
                risk=risk,
                confidence=confidence,
                args=dict(pt.task.args),
                agent=pt.agent,
            )
            for pt, risk, confidence in waiting
        ]
        budget_s = self.timeout_s * (len(waiting) if self.approver is not None else 1)
        timeout_at = utcnow() + timedelta(seconds=budget_s)
        ids = [r.task_id for r in requests]
        record = ApprovalWait(
            wave=min(r.wave for r in requests),
            tasks=len(ids),
            task_ids=ids[:APPROVAL_WAIT_IDS],
            timeout_at=timeout_at,
        )
        ctx.store.update_campaign(cid, **{APPROVAL_WAIT_FIELD: record.model_dump_json()})
        try:
            self.hooks.emit("on_approval_request", ctx, requests, timeout_at)
            if self.approver is not None:
                return self._ask(
                    ctx, list(zip([pt for pt, _, _ in waiting], requests, strict=True)), on_approved
                )
            return self._poll(ctx, {pt.task.task_id: pt for pt, _, _ in waiting}, on_approved)
        finally:
            ctx.store.r.hdel(ctx.store.keys.campaign(cid), APPROVAL_WAIT_FIELD)

    def _ask(
        self,
        ctx: CampaignContext,
        waiting: list[tuple[PlannedTask, ApprovalRequest]],
        on_approved: Callable[[str, str, str], None],
    ) -> Denied:
        """Ask the approver about each request; a decision an operator recorded first (the
        compare-and-set refused the approver's) is the one that counts."""
        assert self.approver is not None
        name = getattr(self.approver, "__qualname__", type(self.approver).__qualname__)
        denied: Denied = []
        for i, (pt, request) in enumerate(waiting):
            tid = request.task_id
            ok, reason = self._call(request)
            decision: Literal["approved", "denied"] = "approved" if ok else "denied"
            by, shown = f"approver {name}", f"approver {name}"
            if (
                self.approvals.decide(ctx.campaign_id, [tid], decision, by=by, reason=reason)[tid]
                != "decided"
            ):
                recorded = self.approvals.get(ctx.campaign_id, [tid])
                if recorded and recorded[0].status != "pending":
                    first = recorded[0]
                    ok, reason = first.status == "approved", first.reason or ""
                    decision = "approved" if ok else "denied"
                    by, shown = f"operator {first.by}", first.by or "?"
            why = f"{decision} by {shown}" + (f": {reason}" if reason else "")
            if ok:
                on_approved(tid, why, by)
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
