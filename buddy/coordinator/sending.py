"""Sending a wave and waiting for it (docs/architecture.md, "Data flow").

A wave goes out as one Celery chord: a header of ``buddy.execute_batch`` messages on
``buddy.agent.<id>`` (micro-batches of one agent's tasks, cut by
:func:`~buddy.coordinator.dispatch.slices`) and the body ``buddy.wave_complete`` on
``buddy.coordinator``. The coordinator waits on the wave's ``:done`` list (BLPOP, no result
polling) until every member reported, the body's summary came, or the deadline passed;
meanwhile it resends stalled tasks (:mod:`buddy.coordinator.stalls`), honours ``buddy
abort`` and notices a failed chord.
"""

from __future__ import annotations

import dataclasses
import secrets
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from celery import Celery, chord
from rich.console import Console

from buddy.config import Settings
from buddy.coordinator.dispatch import attempt_worst_s, batch_size, slices, wave_deadline_s
from buddy.coordinator.fleet_view import FleetView
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.options import CampaignOptions, Clock
from buddy.coordinator.stalls import Sent, StallWatch
from buddy.coordinator.stealing import WorkStealing
from buddy.errors import CampaignAborted
from buddy.infra.transport import EXECUTE_TASK, WAVE_COMPLETE_TASK
from buddy.models import COORDINATOR_QUEUE, TaskSpec, agent_queue
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.safety.gates import Gate
from buddy.state.claims import Claims
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry

#: Seconds the coordinator waits, once a wave's members have all reported, for the chord
#: body's analysis before it analyzes the wave itself (a revoked member or a lost chord
#: counter keeps Celery from running the body).
BODY_GRACE_S = 2.0


def shadow_name(wave: int, agent: str, tasks: int, resent: bool = False) -> str:
    """The name Flower and the worker logs show for a batch message (Celery's ``shadow``
    option; the task that runs stays ``buddy.execute_batch``): ``buddy wave 2 · a1 · 12 tasks``."""
    name = f"buddy wave {wave} · {agent} · {tasks} task{'' if tasks == 1 else 's'}"
    return name + " · resent" if resent else name


def _even_batch(n: int, slots: int, tuned: int | None) -> int | None:
    """Tasks per message for ``n`` tasks on ``slots`` slots with the tuner's ``tuned`` batch
    size (None: not tuned): at most ``tuned``, in a number of messages that is a multiple of
    ``slots`` with equal sizes, so no slot runs a partial round more than the others (50
    tasks, 4 slots, tuned 12: 8 messages of 7, not 5 messages of 12)."""
    if not tuned or n <= 0:
        return None
    rounds = -(-n // (slots * tuned))  # ceil
    return max(1, -(-n // (slots * rounds)))


@dataclasses.dataclass
class WaveDispatch:
    """One dispatch of a wave: its token, chord id, the sent task ids, the wave's ``done``
    counter before it, its deadline in seconds, whether the chord body reported or will
    not run (the chord failed, or the wave closed at its deadline), the outcomes (stored
    JSON) read when the wave closed, and where each task went (for the stall watch)."""

    token: str
    chord_id: str
    ids: list[str]
    baseline: int
    deadline_s: float
    reported: bool = False
    failed: bool = False
    raw: dict[str, bytes] = dataclasses.field(default_factory=dict)
    sent: dict[str, Sent] = dataclasses.field(default_factory=dict)


class WaveSender:
    """Sends waves of one campaign as chords and waits for them."""

    def __init__(
        self,
        ctx: CampaignContext,
        app: Celery,
        registry: ToolRegistry,
        fleet: FleetView,
        hooks: HookRunner,
        clock: Clock,
        console: Console,
        settings: Settings,
        *,
        pause: Callable[[int], float] | None = None,
    ) -> None:
        self.ctx = ctx
        self.cid = ctx.campaign_id
        self.plan: CampaignPlan = ctx.plan
        self.store: Store = ctx.store
        self.opts: CampaignOptions = ctx.options
        self.app = app
        self.registry = registry
        self.fleet = fleet
        self.hooks = hooks
        self.clock = clock
        self.console = console
        self.settings = settings
        self.pause = pause  # holds while the campaign must pause; returns the seconds paused
        # agent → (attempts, timeout s) the agent tuner set for it: the coordinator's learner
        self.limits: Mapping[str, tuple[int | None, float | None]] = {}
        self.stealing = WorkStealing(self.plan, self.store)
        broker = settings.broker_url
        self.stalls = StallWatch(
            Claims(self.store.r),
            stale_s=self.store.stale_s,
            redis_broker=broker is None or broker.startswith(("redis", "rediss", "unix")),
        )

    def spec(self, pt: PlannedTask, gate: Gate) -> TaskSpec:
        """The message item of one task; the plan line's seed ids (``phase21_plan_id``,
        ``phase22_validation_id``) go along, and the agent tuner's attempts and timeout for
        the task's agent (:attr:`limits`); each is left out of the item while None."""
        attempts, timeout_s = self.limits.get(pt.agent, (None, None))
        return TaskSpec(
            task_id=pt.task.task_id,
            tool=pt.task.tool,
            args=pt.task.args,
            mode=gate.mode,
            mode_reason=gate.reason,
            claims=pt.claims,
            workdir=str(self.opts.workdir),
            planned_agent=pt.agent,
            planned_wave=pt.wave,
            phase21_plan_id=pt.task.phase21_plan_id,
            phase22_validation_id=pt.task.phase22_validation_id,
            max_attempts=attempts,
            timeout_s=timeout_s,
        )

    def dispatch(
        self,
        n: int,
        to_send: dict[str, list[PlannedTask]],
        gates: dict[str, Gate],
        tuned_batch: Mapping[str, int] | None = None,
    ) -> WaveDispatch:
        """Send ``to_send`` as one chord and record what was sent (workers run only what
        ``buddy:campaign:<id>:dispatched`` holds).

        Tasks per message: ``--batch-size`` when given; else the agent tuner's batch size for
        the agent (``tuned_batch``, agent id → tasks; :mod:`buddy.optimizer.tuner`), evened
        out so every slot gets the same number of messages (:func:`_even_batch`); else
        :func:`~buddy.coordinator.dispatch.batch_size`. Either way cut so one message's worst
        case fits the visibility timeout (:func:`~buddy.coordinator.dispatch.slices`)."""
        token = secrets.token_hex(8)
        header = []
        sent_items: list[dict[str, Any]] = []
        where: dict[str, Sent] = {}
        for agent, pts in sorted(to_send.items()):
            slots = max(1, self.fleet.capacity().get(agent, 1))  # Σ live workers' pool sizes (heartbeats)
            known = [pt.expected_s for pt in pts if pt.expected_s is not None]
            fixed = self.opts.batch_size or _even_batch(len(pts), slots, (tuned_batch or {}).get(agent))
            size = batch_size(len(pts), slots, max(known) if known else None, fixed)
            worst = attempt_worst_s(pts, self.registry, self.settings.lease_wait_s)
            for i, j in slices(worst, size, self.settings.visibility_timeout_s):
                items = [self.spec(pt, gates[pt.task.task_id]).model_dump(mode="json") for pt in pts[i:j]]
                sent_items.extend(items)
                message_id = str(uuid.uuid4())
                for item in items:
                    where[item["task_id"]] = Sent(agent, message_id, item)
                header.append(self._signature(n, agent, items, message_id))
        body = self.app.signature(
            WAVE_COMPLETE_TASK,
            kwargs={"campaign_id": self.cid, "wave": n, "token": token},
            queue=COORDINATOR_QUEUE,
        )
        sent_ids = [pt.task.task_id for pts in to_send.values() for pt in pts]
        self.store.record_dispatch(self.cid, n, sent_items)
        baseline = int(self.store.wave_counters(self.cid, n).get("done", 0))
        self.store.expect_done(self.cid, n, baseline + len(sent_ids))
        result = chord(header, app=self.app)(body)
        deadline_s = self.opts.wave_timeout_s or wave_deadline_s(to_send, self.plan.agents, self.registry)
        self.store.update_campaign(self.cid, current_wave=n, chord_id=result.id)
        self.store.event(self.cid, "wave_dispatched", wave=n, messages=len(header), chord_id=result.id)
        return WaveDispatch(token, result.id, sent_ids, baseline, deadline_s, sent=where)

    def _signature(
        self, n: int, agent: str, items: list[dict[str, Any]], message_id: str, resent: bool = False
    ) -> Any:
        return self.app.signature(
            EXECUTE_TASK,
            kwargs={"campaign_id": self.cid, "wave": n, "agent_id": agent, "items": items},
            queue=agent_queue(agent),
            task_id=message_id,
            # what Flower and the logs show: a readable name (Celery's shadow name) and no
            # saferepr of every item
            shadow=shadow_name(n, agent, len(items), resent),
            argsrepr="()",
            kwargsrepr=f"{{wave: {n}, agent: {agent}, items: {len(items)}"
            + (", resent: true}" if resent else "}"),
        )

    def wait(self, n: int, sending: WaveDispatch) -> set[str]:
        """Wait for a dispatch. Returns the ids of sent tasks that have no outcome when the wave
        closed (every member reported, or the body's summary came, or the deadline passed);
        empty when complete.

        Raises :class:`CampaignAborted` on an abort request (``buddy abort``). A failed chord
        (its body will not run) is not fatal: the wave closes from the outcomes in Redis.
        While the campaign is paused (``pause``) the deadline stands still."""
        deadline = self.clock.monotonic() + sending.deadline_s
        last_check = float("-inf")
        while True:
            summary = self.store.wait_wave_done(self.cid, n, 0.2, sending.token)
            c = self.store.wave_counters(self.cid, n)
            done = int(c.get("done", 0))
            self.hooks.emit("on_progress", self.ctx, done, int(c.get("failed", 0)), int(c.get("running", 0)))
            if summary is not None or done - sending.baseline >= len(sending.ids):
                # Every member reported (the last outcome write pushed a wake-up, or the body
                # its summary). A member whose outcome write was lost (a Redis restart) would
                # still be missing: check, never assume. The body's analysis is awaited later.
                sending.reported = summary is not None
                sending.raw = self.store.outcomes_raw(self.cid, sending.ids)
                missing = set(sending.ids) - sending.raw.keys()
                if not missing:
                    return set()
                if summary is not None:
                    return missing
            now = self.clock.monotonic()
            if now - last_check < 1.0:
                continue
            last_check = now
            if self.pause is not None and (paused_s := self.pause(n)):
                deadline += paused_s
                last_check = self.clock.monotonic()
                continue
            if self.stalls.due():
                self.resend_stalled(n, sending)
            if self.opts.optimize:
                self.steal(n, sending)
            abort = self.store.campaign(self.cid).get("abort_requested")
            if abort:
                raise CampaignAborted(f"aborted by an operator: {abort}")
            if (
                not sending.failed
                and self.app.backend.get_task_meta(sending.chord_id).get("status") == "FAILURE"
            ):
                # The body will not run (a member raised, or the chord's join hit a Redis
                # restart). The outcomes in Redis are the truth: close the wave from them.
                sending.failed = True
                self.console.print(
                    f"[yellow]wave {n}: the chord failed; closing the wave from its outcomes[/]"
                )
                self.store.event(self.cid, "chord_failed", wave=n, chord_id=sending.chord_id)
            if now >= deadline:
                missing = self.store.missing_outcomes(self.cid, sending.ids)
                self.console.print(
                    f"[yellow]wave {n}: deadline of {sending.deadline_s:.0f} s passed with "
                    f"{len(missing)} task(s) without an outcome[/]"
                )
                self.store.event(self.cid, "wave_deadline", wave=n, missing=len(missing))
                sending.failed = True  # its members are not all back: the body will not report
                return missing

    def resend_stalled(self, n: int, sending: WaveDispatch) -> None:
        """Send again the tasks the stall watch finds stalled (a dead attempt, a lost message),
        to their agent or, when it has no live worker, to a healthy agent that offers the
        tool; the delivery that gets one decides whether it may run again."""
        missing = self.store.missing_outcomes(self.cid, sending.ids)
        due = self.stalls.check(self.cid, {t: sending.sent[t] for t in missing if t in sending.sent})
        if not due:
            return
        healthy = self.fleet.healthy(fresh=True)
        specs = {a.id: a for a in self.plan.agents}
        by_agent: dict[str, list[str]] = defaultdict(list)
        for tid in sorted(due):
            was = sending.sent[tid]
            tool = str(was.item.get("tool"))
            agents = (
                [was.agent] if was.agent in healthy else sorted(a for a in healthy if specs[a].offers(tool))
            )
            if agents:
                by_agent[agents[0]].append(tid)
        for agent, tids in by_agent.items():
            message_id = str(uuid.uuid4())
            items = [dict(sending.sent[t].item) for t in tids]
            self._signature(n, agent, items, message_id, resent=True).apply_async()
            for t, item in zip(tids, items, strict=True):
                sending.sent[t] = Sent(agent, message_id, item)
        resent = sorted(t for tids in by_agent.values() for t in tids)
        reasons = sorted(set(due.values()))
        self.console.print(
            f"[yellow]wave {n}: sent {len(resent)} stalled task(s) again[/] ({'; '.join(reasons)})",
            highlight=False,
        )
        self.store.event(self.cid, "tasks_resent", wave=n, tasks=resent, reasons=due)

    def steal(self, n: int, sending: WaveDispatch) -> None:
        """Send agents that finished their share of the wave tasks still queued for busy ones
        (:mod:`buddy.coordinator.stealing`); the first delivery that claims a task runs it."""
        moves = self.stealing.check(
            self.cid, sending.ids, sending.sent, self.fleet.healthy(), self.fleet.capacity()
        )
        for agent, tids in sorted(moves.items()):
            message_id = str(uuid.uuid4())
            items = [dict(sending.sent[t].item) for t in tids]
            self._signature(n, agent, items, message_id, resent=True).apply_async()
            froms = sorted({sending.sent[t].agent for t in tids})
            for t, item in zip(tids, items, strict=True):
                sending.sent[t] = Sent(agent, message_id, item)
            self.store.event(self.cid, "tasks_stolen", wave=n, agent=agent, tasks=tids, from_agents=froms)

    def await_body(self, n: int, body: WaveDispatch | None) -> None:
        """Give the wave's chord body (its analysis) up to :data:`BODY_GRACE_S` seconds to
        report once the wave closed; the learner analyzes the wave itself when the body is
        late or will not run. Either way one report wins (SET NX in
        :func:`buddy.analysis.wave.analyze`)."""
        if body is None or body.reported or body.failed:
            return
        end = self.clock.monotonic() + BODY_GRACE_S
        while (left := end - self.clock.monotonic()) > 0:
            if self.store.wait_wave_done(self.cid, n, min(left, 0.5), body.token) is not None:
                return
        self.store.event(self.cid, "chord_body_late", wave=n, chord_id=body.chord_id, waited_s=BODY_GRACE_S)
