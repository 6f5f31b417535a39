"""Stall detection: tasks of a wave that no live attempt will finish.

README, "Exactly once, crashes, leases", says what an operator sees.

A wave waits for every dispatched task's outcome. Two faults would hold it until the wave's
computed deadline (hours for long tools) instead of seconds:

- **a dead attempt**: the task's claim (:mod:`buddy.state.claims`) is ``running`` but its heartbeat
  stopped. When only a pool child died, Celery's ``task_reject_on_worker_lost`` requeues the
  message and the next delivery takes the claim over; when the whole worker died, kombu's
  Redis transport keeps the message "unacked" until the visibility timeout;
- **a dead batch**: the tasks of that attempt's message that were not claimed yet (tasks
  are claimed right before each runs) are as stalled as the one that was running;
- **a lost message**: kombu's Redis transport pops a message (``BRPOP``) and records it as
  unacked in a separate step, so a worker killed between the two drops it. The task then has
  no claim, its queue is empty and no worker holds its message unacked.

:meth:`StallWatch.check` finds both from Redis (claims by ``MGET``; for unclaimed tasks the
agent queue's ``LLEN`` and kombu's ``unacked`` hash, read only while some task looks lost)
and returns the tasks to send again. Sending again is always safe: the delivery that gets
the task takes the dead attempt's claim over with a compare-and-set and reruns it only when
that is safe (idempotent, or rolled back first), else records ``needs_review``; a task with
no claim never started. A task is reported after it looked stalled on two checks at least
``stale_s`` apart, so a heartbeat late by a beat or a message between ``BRPOP`` and its
unacked record is not mistaken for a fault.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from buddy.state.claims import Claims, parse

log = logging.getLogger("buddy.coordinator")

#: kombu's Redis transport: the hash of unacked messages and the priority-queue key separator.
UNACKED_KEY = "unacked"
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)


@dataclass(frozen=True)
class Sent:
    """Where one task went: its agent, its message's Celery task id and the item it carried."""

    agent: str
    message_id: str
    item: Mapping[str, Any]


@dataclass
class StallWatch:
    """Checks a wave's pending tasks for dead attempts and lost messages.

    ``stale_s``: heartbeat age (seconds) after which an attempt counts as dead (the workers'
    ``BUDDY_HEARTBEAT_STALE_S``); ``redis_broker``: whether messages travel on the state Redis
    (kombu's Redis transport; the lost-message check needs it); ``every_s``: seconds between
    checks; ``clock``: epoch seconds (injected in tests).
    """

    claims: Claims
    stale_s: float = 10.0
    redis_broker: bool = True
    every_s: float = 5.0
    clock: Callable[[], float] = time.time
    _suspect: dict[str, tuple[float, str]] = field(default_factory=dict)  # task → (first seen, why)
    _last: float = 0.0

    def due(self) -> bool:
        """True when ``every_s`` seconds passed since the last :meth:`check`."""
        return self.clock() - self._last >= self.every_s

    def check(self, cid: str, pending: Mapping[str, Sent]) -> dict[str, str]:
        """The tasks among ``pending`` (still without an outcome) to send again, with why."""
        self._last = now = self.clock()
        ids = list(pending)
        raw = self.claims.read(cid, ids) if ids else {}
        seen: dict[str, str] = {}
        unclaimed: list[str] = []
        for tid in ids:
            claim = parse(raw.get(tid))
            if claim is None:
                unclaimed.append(tid)
            elif claim.state == "running" and now - (claim.heartbeat or claim.started_at) >= self.stale_s:
                seen[tid] = f"its attempt on {claim.worker} stopped heartbeating"
        # a batch whose running attempt died died whole: its tasks not yet claimed (tasks are
        # claimed one by one, right before each runs) will not run from that delivery either
        dead = {pending[t].message_id: seen[t] for t in seen}
        for tid in unclaimed:
            if pending[tid].message_id in dead:
                seen[tid] = f"its batch's worker died ({dead[pending[tid].message_id]})"
        unclaimed = [t for t in unclaimed if t not in seen]
        if unclaimed and self.redis_broker:
            held = self._held_messages(pending, unclaimed)
            for tid in unclaimed:
                if tid not in held:
                    seen[tid] = "its message is neither queued nor held by a worker (lost in transit)"
        due: dict[str, str] = {}
        for tid, why in seen.items():
            first, _ = self._suspect.setdefault(tid, (now, why))
            if now - first >= self.stale_s:
                due[tid] = why
        for tid in list(self._suspect):
            if tid not in seen or tid in due:
                del self._suspect[tid]
        return due

    def _held_messages(self, pending: Mapping[str, Sent], unclaimed: list[str]) -> set[str]:
        """The unclaimed tasks whose message may still run: its queue is not empty, or a worker
        holds it unacked (reserved, or an earlier task of its batch is running)."""
        r = self.claims.r
        agents = sorted({pending[t].agent for t in unclaimed})
        pipe = r.pipeline(transaction=False)
        for a in agents:
            for step in PRIORITY_STEPS:
                pipe.llen(_queue_key(a, step))
        lens = pipe.execute()
        busy = {
            a
            for i, a in enumerate(agents)
            if any(lens[i * len(PRIORITY_STEPS) : (i + 1) * len(PRIORITY_STEPS)])
        }
        held = {t for t in unclaimed if pending[t].agent in busy}
        rest = [t for t in unclaimed if t not in held]
        if not rest:
            return held
        unacked = set()
        for value in r.hvals(UNACKED_KEY):
            try:
                unacked.add(json.loads(value)[0]["headers"]["id"])
            except (ValueError, KeyError, IndexError, TypeError):
                continue
        return held | {t for t in rest if pending[t].message_id in unacked}


def _queue_key(agent: str, step: int) -> str:
    """kombu's Redis list for ``buddy.agent.<agent>`` at priority ``step`` (0: the plain name)."""
    name = f"buddy.agent.{agent}"
    return name if step == 0 else f"{name}{PRIORITY_SEP}{step}"
