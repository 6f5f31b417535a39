"""Safety gates: execution modes, escalation thresholds, approvals and the system lock.

docs/architecture.md, "Execution modes and safety gates". A campaign started with ``--mode live`` runs a
task live only if

1. the system is not locked (``buddy lock``, or the monitor's ``unsafe_escalation``): while it
   is, a live campaign pauses — nothing of it starts, nothing runs ``mock`` in its place —
   and goes on where it stopped after ``buddy unlock`` (:mod:`buddy.coordinator.pausing`);
   mock and dry-run campaigns are not affected,
2. its confidence is at least the threshold for its tool's risk (:class:`EscalationPolicy`;
   defaults LOW 0.0, MEDIUM 0.6, HIGH 0.8; CRITICAL only with ``--allow-critical``), and
3. for HIGH and CRITICAL, an operator approved it (``buddy approvals approve``), or
   ``--auto-approve`` covers its risk (never CRITICAL).

A task that fails (2) is degraded to ``dry_run``; one whose
approval is denied, or not given within ``--approval-timeout``, ends ``denied`` and nothing
of it runs. The outcome's ``mode`` and ``mode_reason`` say which gate applied.

Approval requests live in ``buddy:approval:<cid>:<task>`` (hash: status, risk, tool, wave,
summary, requested_at, decided_at, by, reason) and the set ``buddy:approvals:<cid>`` indexes
them; decisions are made with ``HSET`` guarded by a Lua compare (pending → decided), so two
operators racing cannot both decide.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from buddy.models import Mode, Risk, utcnow
from buddy.state.control import SystemLock
from buddy.state.keys import PREFIX, _s
from buddy.state.store import Store

RISK_ORDER = [Risk.LOW, Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL]


class EscalationPolicy(BaseModel):
    """Minimum confidence (0–1) per risk level for a task to run live.

    ``allow_critical`` lifts the rule that CRITICAL tools never run live; even then they
    need their threshold and an approval. ``auto_approve`` approves requests up to that
    risk without an operator (HIGH at most; written into the report).
    """

    model_config = ConfigDict(extra="forbid")

    low: float = Field(default=0.0, ge=0, le=1)
    medium: float = Field(default=0.6, ge=0, le=1)
    high: float = Field(default=0.8, ge=0, le=1)
    critical: float = Field(default=0.95, ge=0, le=1)
    allow_critical: bool = False
    auto_approve: Literal["LOW", "MEDIUM", "HIGH"] | None = None

    def threshold(self, risk: Risk) -> float:
        return float(getattr(self, risk.value.lower()))

    def needs_approval(self, risk: Risk) -> bool:
        return risk in (Risk.HIGH, Risk.CRITICAL)

    def auto_approves(self, risk: Risk) -> bool:
        if self.auto_approve is None or risk is Risk.CRITICAL:
            return False
        return RISK_ORDER.index(risk) <= RISK_ORDER.index(Risk(self.auto_approve))


@dataclass(frozen=True)
class Gate:
    """The escalation decision for one task: the mode it may run in and why.

    ``needs_approval`` is true when the task may run live only once approved.
    """

    mode: Mode
    reason: str | None
    needs_approval: bool = False


def escalate(
    campaign_mode: Mode,
    risk: Risk,
    confidence: float,
    policy: EscalationPolicy,
) -> Gate:
    """Apply gate 2 (confidence/risk) to a task; gate 1, the lock, pauses the whole campaign
    instead, and gate 3 is the approval wait."""
    if campaign_mode is not Mode.LIVE:
        return Gate(campaign_mode, None)
    if risk is Risk.CRITICAL and not policy.allow_critical:
        return Gate(Mode.DRY_RUN, "CRITICAL tools never run live without --allow-critical")
    need = policy.threshold(risk)
    if confidence < need:
        return Gate(Mode.DRY_RUN, f"confidence {confidence:.2f} < {need:.2f} required for {risk.value}")
    return Gate(Mode.LIVE, None, needs_approval=policy.needs_approval(risk))


# -- the system lock ---------------------------------------------------------------------------


def lock(
    store: Store, reason: str, by: str | None = None, evidence: dict[str, Any] | None = None
) -> SystemLock:
    """Lock the system: no task starts live and live campaigns pause until :func:`unlock`
    (``SET buddy:lock:system NX``, JSON :class:`~buddy.state.control.SystemLock`). ``by``
    defaults to this process's OS user (:func:`operator`). Returns the lock in force: an
    earlier one is kept (its reason stays until someone unlocks)."""
    new = SystemLock(reason=reason, by=by or operator(), evidence=evidence or {})
    if store.set_system_lock(new):
        return new
    return store.system_lock() or new


def unlock(store: Store) -> SystemLock | None:
    """Remove the lock; returns the lock that was set, None when there was none."""
    return store.clear_system_lock()


def operator() -> str:
    """``user@host`` of the person running this process (who approved, denied or locked):
    the OS account of the process's real uid (``pwd``), not ``$USER`` / ``$LOGNAME``, which
    anyone can set; ``uid<N>`` for a uid without an account. Where there is no ``pwd``
    (Windows) the login name from :func:`getpass.getuser`."""
    try:
        import pwd

        uid = os.getuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = f"uid{uid}"
    except ImportError:
        try:
            user = getpass.getuser()
        except Exception:
            user = "unknown"
    return f"{user}@{socket.gethostname()}"


# -- approvals ---------------------------------------------------------------------------------


class Approval(BaseModel):
    """An approval request and its decision (``buddy approvals list`` shows these).

    ``by`` is who decided, never free text: ``user@host`` of the OS account that ran ``buddy
    approvals approve|deny`` (:func:`operator`), ``approver <qualname>`` (the Python API's
    callable), ``auto-approve`` or ``coordinator`` (the timeout); ``reason`` is the
    operator's ``--comment`` (or the approver's, the timeout's).
    """

    campaign_id: str
    task_id: str
    status: Literal["pending", "approved", "denied"]
    risk: Risk
    tool: str
    wave: int
    summary: str = ""
    requested_at: str
    decided_at: str | None = None
    by: str | None = None
    reason: str | None = None


def approval_key(cid: str, task_id: str) -> str:
    return f"{PREFIX}approval:{cid}:{task_id}"


def approvals_index(cid: str) -> str:
    return f"{PREFIX}approvals:{cid}"


def approvals_campaigns() -> str:
    return f"{PREFIX}approvals"


# KEYS[1] approval hash; ARGV[1] new status, ARGV[2] decided_at, ARGV[3] by, ARGV[4] reason.
# Returns 1 when the request was pending and is now decided, 0 when it was already decided,
# -1 when there is no such request.
_DECIDE = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
if cur ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_at', ARGV[2], 'by', ARGV[3], 'reason', ARGV[4])
return 1
"""


class Approvals:
    """Approval requests of campaigns in Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._decide = store.r.register_script(_DECIDE)

    def request(self, cid: str, items: Iterable[tuple[str, Risk, str, int, str]]) -> list[str]:
        """Create pending requests for ``(task_id, risk, tool, wave, summary)``; existing ones stay.

        Returns the task ids that now have a request.
        """
        now = utcnow().isoformat()
        pipe = self.store.r.pipeline(transaction=False)
        ids = []
        for task_id, risk, tool, wave, summary in items:
            key = approval_key(cid, task_id)
            for field, value in (
                ("status", "pending"),
                ("risk", risk.value),
                ("tool", tool),
                ("wave", str(wave)),
                ("summary", summary[:500]),
                ("requested_at", now),
            ):
                pipe.hsetnx(key, field, value)
            pipe.sadd(approvals_index(cid), task_id)
            ids.append(task_id)
        pipe.zadd(approvals_campaigns(), {cid: time.time()})
        pipe.execute()
        return ids

    def get(self, cid: str, task_ids: Iterable[str] | None = None) -> list[Approval]:
        """Requests of ``cid`` (all when ``task_ids`` is None), sorted by wave and task."""
        ids = (
            sorted(_s(x) or "" for x in self.store.r.smembers(approvals_index(cid)))
            if task_ids is None
            else list(task_ids)
        )
        pipe = self.store.r.pipeline(transaction=False)
        for t in ids:
            pipe.hgetall(approval_key(cid, t))
        out = []
        for t, raw in zip(ids, pipe.execute(), strict=True):
            if not raw:
                continue
            d: dict[str, Any] = {_s(k) or "": _s(v) for k, v in raw.items()}
            out.append(Approval(campaign_id=cid, task_id=t, **{k: v for k, v in d.items() if v}))
        return sorted(out, key=lambda a: (a.wave, a.task_id))

    def campaigns(self, limit: int = 20) -> list[str]:
        return [_s(x) or "" for x in self.store.r.zrevrange(approvals_campaigns(), 0, limit - 1)]

    def decide(
        self,
        cid: str,
        task_ids: Iterable[str],
        status: Literal["approved", "denied"],
        *,
        by: str,
        reason: str = "",
    ) -> dict[str, str]:
        """Decide pending requests. Returns task id → ``decided`` | ``already decided`` | ``no request``."""
        now = utcnow().isoformat()
        result = {}
        for t in task_ids:
            r = int(self._decide(keys=[approval_key(cid, t)], args=[status, now, by, reason]))
            result[t] = {1: "decided", 0: "already decided", -1: "no request"}[r]
        return result

    def expire(self, cid: str, task_ids: Iterable[str], timeout_s: float) -> list[str]:
        """Deny still-pending requests of ``task_ids`` (the approval timeout). Returns those denied."""
        denied = []
        for t, outcome in self.decide(
            cid, task_ids, "denied", by="coordinator", reason=f"no decision within {timeout_s:g} s"
        ).items():
            if outcome == "decided":
                denied.append(t)
        return denied
