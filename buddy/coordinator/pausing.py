"""Pauses of a campaign: the system lock holds a live campaign, ``buddy pause`` any campaign
(docs/architecture.md, "Pause, lock and cancel").

While a campaign is paused its coordinator sends nothing; workers hold the tasks they
receive (:mod:`buddy.execution.executor`, step 4) and tasks already running finish. The
coordinator checks before each wave and about once a second while a wave runs
(:meth:`PauseControl.hold`); a pause lasts until the lock is removed (``buddy unlock``) or
the request withdrawn (``buddy unpause``), an operator aborts, or — for the lock —
``lock_timeout_s`` passes (:class:`LockTimeout`: the campaign ends ``aborted`` and its
untouched tasks ``cancelled``). Each pause is recorded in the campaign hash while it lasts
(``status`` ``paused``, ``paused``), in the events (``campaign_paused``,
``campaign_resumed``), through the hooks (``on_pause``, ``on_resume``) and, once ended, in
``execution_summary.json``'s ``pauses`` and report.md.
"""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

from rich.console import Console

from buddy.coordinator.approvals import hint_redis_url
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.moves import TaskMoves
from buddy.coordinator.options import Clock
from buddy.errors import CampaignAborted, LockTimeout
from buddy.models import Mode, Outcome, Pause, TaskStatus, utcnow
from buddy.plan.model import CampaignPlan
from buddy.safety.gates import lock as lock_system
from buddy.state.store import Store

if TYPE_CHECKING:
    from buddy.analysis.wave import WaveReport


class PauseControl:
    """Checks whether one campaign must pause, and holds it while it must.

    ``lock_timeout_s``: seconds a lock may hold the campaign before :class:`LockTimeout`
    (None: wait for ``buddy unlock``); ``auto_lock``: whether the monitor's ``unsafe_escalation``
    locks the system (:meth:`auto_lock`); ``poll_s``: seconds between checks while paused;
    ``hint``: appended to the console line (how to go on, e.g. the Redis URL to use)."""

    def __init__(
        self,
        ctx: CampaignContext,
        hooks: HookRunner,
        clock: Clock,
        console: Console,
        *,
        lock_timeout_s: float | None = None,
        auto_lock: bool = True,
        poll_s: float = 0.5,
        hint: str = "",
    ) -> None:
        self.ctx, self.hooks, self.clock, self.console = ctx, hooks, clock, console
        self.store, self.cid = ctx.store, ctx.campaign_id
        self.live = ctx.options.mode is Mode.LIVE
        self.lock_timeout_s = lock_timeout_s
        self.auto_locks = auto_lock
        self.poll_s = poll_s
        self.hint = hint
        self.pauses: list[Pause] = []  # ended ones, oldest first

    def why(self, wave: int | None = None) -> Pause | None:
        """The pause the campaign must take now, or None: a ``buddy pause`` request first, else
        the system lock when the campaign runs live (one round trip)."""
        lock, request = self.store.pause_state(self.cid)
        if request is not None:
            return Pause(kind="operator", reason=request.reason, by=request.by, since=request.at, wave=wave)
        if lock is not None and self.live:
            return Pause(kind="lock", reason=lock.reason, by=lock.by, since=lock.since, wave=wave)
        return None

    def hold(self, wave: int | None) -> float:
        """Pause while the campaign must (see :meth:`why`); returns the seconds it was paused
        (0.0 when it was not). Raises :class:`LockTimeout` past ``lock_timeout_s`` of a lock,
        :class:`CampaignAborted` on ``buddy abort``."""
        pause = self.why(wave)
        if pause is None:
            return 0.0
        start = began = self.clock.monotonic()
        self._begin(pause)
        try:
            while True:
                if abort := self.store.campaign(self.cid).get("abort_requested"):
                    raise CampaignAborted(f"aborted by an operator while paused: {abort}")
                held_s = self.clock.monotonic() - began
                if pause.kind == "lock" and self.lock_timeout_s is not None and held_s >= self.lock_timeout_s:
                    raise LockTimeout(
                        f"the system stayed locked for more than --lock-timeout {self.lock_timeout_s:g} s "
                        f"({pause.reason}, by {pause.by})"
                    )
                self.clock.sleep(self.poll_s)
                now = self.why(wave)
                if now is None:
                    break
                if (now.kind, now.reason, now.by) != (pause.kind, pause.reason, pause.by):
                    self._end(pause, began, resumed=True)  # e.g. unpaused while the system is locked
                    pause, began = now, self.clock.monotonic()
                    self._begin(pause)
        except BaseException:
            self._end(pause, began, resumed=False)  # the campaign ends while paused: still reported
            raise
        self._end(pause, began, resumed=True)
        return self.clock.monotonic() - start

    def auto_lock(self, n: int, report: WaveReport | None) -> None:
        """Lock the system for the first anomaly of wave ``n`` whose action is ``lock`` (the
        monitor's ``unsafe_escalation``), with its evidence, unless ``auto_lock`` is off; the
        next :meth:`hold` pauses this campaign, and every live one."""
        if report is None:
            return
        for a in report.anomalies:
            if a.action != "lock":
                continue
            if not self.auto_locks:
                self.console.print(
                    f"[red]{a.type}[/] in wave {n}: {a.message} (auto_lock is off: not locked)"
                )
                return
            reason = f"{a.type} in wave {n} of {self.cid}: {a.message}"
            got = lock_system(self.store, reason, by=f"buddy monitor ({self.cid})", evidence=a.evidence)
            self.store.event(self.cid, "system_locked", wave=n, anomaly=a.type, reason=got.reason, by=got.by)
            self.console.print(f"[red]system locked[/] by the monitor: {got.describe()}", highlight=False)
            return

    def _begin(self, pause: Pause) -> None:
        self.store.set_paused(self.cid, pause)
        self.store.event(self.cid, "campaign_paused", **pause.model_dump(mode="json"))
        url, _ = hint_redis_url(self.ctx.options, self.store)  # a command that works when pasted
        where = self.hint or (f" --redis-url {shlex.quote(url)}" if url else "")
        go_on = "buddy unlock" if pause.kind == "lock" else f"buddy unpause {shlex.quote(self.cid)}"
        limit = (
            f"; ends the campaign after --lock-timeout {self.lock_timeout_s:g} s"
            if pause.kind == "lock" and self.lock_timeout_s is not None
            else ""
        )
        where = "before wave" if self.ctx.wave != pause.wave else "in wave"
        self.console.print(
            f"[yellow]paused[/] {where} {pause.wave} ({pause.describe()}): nothing starts until "
            f"`{go_on}{where}`{limit}",
            highlight=False,
        )
        self.hooks.emit("on_pause", self.ctx, pause)

    def _end(self, pause: Pause, began: float, *, resumed: bool) -> None:
        pause.until = utcnow()
        pause.seconds = round(self.clock.monotonic() - began, 3)
        self.pauses.append(pause)
        if not resumed:
            return
        self.store.set_paused(self.cid, None)
        self.store.event(self.cid, "campaign_resumed", **pause.model_dump(mode="json"))
        self.console.print(f"resumed after {pause.seconds:.1f} s ({pause.describe()})", highlight=False)
        self.hooks.emit("on_resume", self.ctx, pause)


def cancel_untouched(
    store: Store, cid: str, plan: CampaignPlan, moves: TaskMoves, why: str
) -> dict[str, Outcome]:
    """End ``cancelled`` every task of ``plan`` with no outcome and no attempt running (no
    claim), recorded in Redis; returns the new outcomes by task id (``--lock-timeout``)."""
    have = store.outcomes_raw(cid, list(plan.tasks))
    todo = [t for t in plan.tasks if t not in have]
    claims = store.r.mget([store.keys.claim(cid, t) for t in todo]) if todo else []
    closed = [
        moves.closed(plan.tasks[t], TaskStatus.CANCELLED, "cancelled", f"not started: {why}")
        for t, raw in zip(todo, claims, strict=True)
        if raw is None
    ]
    store.record_outcomes(closed)
    return {o.task_id: o for o in closed}
