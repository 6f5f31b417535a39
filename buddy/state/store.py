"""Campaign, wave, outcome, claim, agent and event state in Redis (docs/architecture.md, "Redis layout").

:class:`Store` wraps one redis-py client; every key it touches is built by
:class:`~buddy.state.keys.Keys` (prefix ``buddy:``); the agents' part of it (heartbeats, live
workers, ``buddy agents``) is :class:`~buddy.state.agents.AgentState`. Writes that belong
together go in one pipeline (one round trip). Outcomes in ``buddy:campaign:<cid>:outcomes``
are the truth for dedupe and resume.

Keys beyond the table in docs/architecture.md:

- ``buddy:agent:<aid>:workers`` and ``buddy:agents``: see :mod:`buddy.state.agents`.
- ``buddy:campaign:<cid>:wave:<n>:done`` (list): ``wave_complete`` pushes the wave summary
  here; the coordinator waits on it with BLPOP instead of polling results. The write that
  brings the wave hash's ``done`` counter up to its ``expect`` field (set at dispatch) pushes
  a wake-up (:data:`WAKE`) here too, so the coordinator closes the wave without waiting for
  the chord's join.
- ``buddy:campaigns`` (sorted set): campaign id → creation time.
- ``buddy:campaign:<cid>:undo`` (hash): task id → JSON undo record of a reversible tool's live
  effect (``tool``, ``args``, ``workdir``, ``agent_id`` and the tool's ``undo`` data), written
  before the effect.
- ``buddy:campaign:<cid>:transitions`` (list): workers' state transitions, drained by the
  coordinator into ``state_transitions.jsonl``.
- ``buddy:campaign:<cid>:rollbacks`` (list): compensation records (``rollback_events.jsonl``).
- ``buddy:campaign:<cid>:dispatched`` (hash): task id → ``<wave>:<spec digest>`` of what the
  coordinator sent; a worker runs a task only when its message matches (:meth:`Store.begin_batch`).
- ``buddy:campaign:<cid>:claim:<task>``: see :mod:`buddy.state.claims`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from buddy.models import Outcome, RollbackEvent, TaskStatus, WaveSummary, utcnow
from buddy.state.agents import AgentState
from buddy.state.control import CampaignControl, PauseRequest, SystemLock
from buddy.state.keys import Keys, _b, _s
from buddy.state.lifecycle import Transition

#: What a wave's ``:done`` list holds when its members have all reported (no dispatch token).
WAKE = "- complete"


def spec_digest(item: Mapping[str, Any]) -> str:
    """A 16-hex-digit digest of one task's message item (a ``TaskSpec`` dumped in JSON mode,
    keys sorted): the coordinator records it at dispatch and the worker compares it, so a
    message whose task, tool, args or mode differ from what was dispatched does not run."""
    return hashlib.blake2b(orjson.dumps(item, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


@dataclass
class BatchState:
    """What :meth:`Store.begin_batch` read for a batch, in one round trip.

    ``outcomes``: the tasks that already have one; ``claims``: their claim values as stored
    (:mod:`buddy.state.claims`); ``lock``: the system lock or None; ``pause``: the campaign's
    pause request or None; ``cancelled``: the batch's tasks an operator cancelled;
    ``campaign_status``: the campaign hash's ``status`` (None: no such campaign);
    ``dispatched``: task id → ``<wave>:<digest>`` for the tasks the coordinator recorded
    (:meth:`Store.record_dispatch`).
    """

    outcomes: dict[str, Outcome]
    claims: dict[str, bytes]
    lock: SystemLock | None
    campaign_status: str | None
    dispatched: dict[str, str]
    pause: PauseRequest | None = None
    cancelled: frozenset[str] = frozenset()


class Store(AgentState, CampaignControl):
    """Buddy's Redis state. ``client`` is any redis-py compatible client (fakeredis in unit tests).

    ``events_maxlen`` caps each campaign's event stream (``XADD MAXLEN ~``);
    ``stale_s`` is how old a heartbeat may be before its worker counts as gone (seconds).
    """

    def __init__(self, client: redis.Redis, *, events_maxlen: int = 10_000, stale_s: float = 10.0) -> None:
        # redis-py's stubs type every reply as a sync/async union; Store parses replies itself.
        self.r: Any = client
        self.keys = Keys
        self.events_maxlen = events_maxlen
        self.stale_s = stale_s

    # -- campaign ------------------------------------------------------------------------

    def create_campaign(self, cid: str, fields: Mapping[str, str]) -> None:
        """Write the campaign hash and index it; fails if the campaign exists."""
        pipe = self.r.pipeline()
        pipe.hsetnx(self.keys.campaign(cid), "created_at", utcnow().isoformat())
        pipe.hset(self.keys.campaign(cid), mapping=dict(fields))
        pipe.zadd(self.keys.campaigns(), {cid: time.time()})
        pipe.execute()

    def update_campaign(self, cid: str, **fields: str | int | float) -> None:
        self.r.hset(self.keys.campaign(cid), mapping={k: str(v) for k, v in fields.items()})

    def campaign(self, cid: str) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.campaign(cid))
        return {_s(k) or "": _s(v) or "" for k, v in raw.items()}

    def campaign_ids(self, limit: int = 20) -> list[str]:
        """Newest first."""
        return [_s(x) or "" for x in self.r.zrevrange(self.keys.campaigns(), 0, limit - 1)]

    # -- waves ---------------------------------------------------------------------------

    def start_wave(self, cid: str, n: int, dispatched: int, chord_id: str = "") -> None:
        pipe = self.r.pipeline()
        pipe.delete(self.keys.wave_done(cid, n))
        pipe.hset(
            self.keys.wave(cid, n),
            mapping={
                "dispatched": dispatched,
                "chord_id": chord_id,
                "started_at": utcnow().isoformat(),
            },
        )
        pipe.hdel(self.keys.wave(cid, n), "expect")  # a resumed wave's old dispatch
        pipe.hset(self.keys.campaign(cid), "current_wave", n)
        pipe.execute()

    def expect_done(self, cid: str, n: int, done: int) -> None:
        """Mark the ``done`` count at which wave ``n``'s dispatch is complete (HSET ``expect``):
        the outcome write that reaches it wakes the coordinator (:meth:`record_outcomes`)."""
        self.r.hset(self.keys.wave(cid, n), "expect", done)

    def missing_outcomes(self, cid: str, task_ids: list[str]) -> set[str]:
        """The ids among ``task_ids`` with no outcome yet (HMGET, nothing parsed)."""
        return set(task_ids) - self.outcomes_raw(cid, task_ids).keys()

    def wave_counters(self, cid: str, n: int) -> dict[str, str]:
        raw = self.r.hgetall(self.keys.wave(cid, n))
        return {_s(k) or "": _s(v) or "" for k, v in raw.items()}

    def finish_wave(self, cid: str, summary: WaveSummary, token: str = "") -> None:
        """Store the summary on the wave hash and wake the coordinator (RPUSH on ``:done``).

        ``token`` names the dispatch (chord) the summary belongs to, so a coordinator that
        sent a wave again (resume, lost members) ignores the summary of an older chord.
        """
        data = summary.model_dump_json()
        pipe = self.r.pipeline()
        pipe.hset(self.keys.wave(cid, summary.wave), mapping={"summary": data})
        pipe.rpush(self.keys.wave_done(cid, summary.wave), f"{token} {data}")
        pipe.execute()

    def wait_wave_done(self, cid: str, n: int, timeout_s: float, token: str = "") -> WaveSummary | None:
        """Block up to ``timeout_s`` seconds (BLPOP) for the summary of dispatch ``token``;
        None on timeout. Summaries of other dispatches are dropped."""
        got = self.r.blpop([self.keys.wave_done(cid, n)], timeout=max(timeout_s, 0.01))
        if got is None:
            return None
        raw = got[1].decode() if isinstance(got[1], bytes) else got[1]
        their, _, data = raw.partition(" ")
        if their != token:
            return None
        return WaveSummary.model_validate_json(data)

    def request_abort(self, cid: str, reason: str) -> None:
        """Ask the campaign's coordinator to stop (``buddy abort``): HSET ``abort_requested``."""
        self.r.hset(self.keys.campaign(cid), "abort_requested", reason)

    # -- outcomes and claims -------------------------------------------------------------

    def outcomes(self, cid: str, task_ids: Iterable[str] | None = None) -> dict[str, Outcome]:
        """Outcomes by task id (all of the campaign's when ``task_ids`` is None)."""
        key = self.keys.outcomes(cid)
        if task_ids is None:
            raw = self.r.hgetall(key)
            return {_s(k) or "": Outcome.model_validate_json(v) for k, v in raw.items()}
        return {t: Outcome.model_validate_json(v) for t, v in self.outcomes_raw(cid, list(task_ids)).items()}

    def outcomes_raw(self, cid: str, task_ids: list[str]) -> dict[str, bytes]:
        """The stored ``Outcome`` JSON of each of ``task_ids`` that has one (HMGET), unparsed:
        the coordinator parses each once and writes the bytes as they are."""
        if not task_ids:
            return {}
        vals = self.r.hmget(self.keys.outcomes(cid), task_ids)
        return {t: _b(v) for t, v in zip(task_ids, vals, strict=True) if v is not None}

    def has_outcomes(self, cid: str) -> bool:
        """Whether any outcome of ``cid`` is stored yet (HLEN): a new campaign has none."""
        return bool(self.r.hlen(self.keys.outcomes(cid)))

    def begin_batch(self, cid: str, task_ids: list[str]) -> BatchState:
        """One round trip: what a worker needs before it runs a batch of ``cid`` (:class:`BatchState`)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(self.keys.outcomes(cid), task_ids)
        pipe.mget([self.keys.claim(cid, t) for t in task_ids])
        pipe.get(self.keys.system_lock())
        pipe.hget(self.keys.campaign(cid), "status")
        pipe.hmget(self.keys.dispatched(cid), task_ids)
        pipe.hget(self.keys.campaign(cid), "pause_requested")
        pipe.hmget(self.keys.cancel(cid), task_ids)
        outs, claims, lock, status, sent, pause, cancel = pipe.execute()
        return BatchState(
            outcomes={
                t: Outcome.model_validate_json(v)
                for t, v in zip(task_ids, outs, strict=True)
                if v is not None
            },
            claims={t: _b(v) for t, v in zip(task_ids, claims, strict=True) if v is not None},
            lock=SystemLock.parse(lock),
            campaign_status=_s(status),
            dispatched={t: _s(v) or "" for t, v in zip(task_ids, sent, strict=True) if v is not None},
            pause=self.pause_state_of(pause),
            cancelled=frozenset(t for t, who in zip(task_ids, cancel, strict=True) if who is not None),
        )

    def record_dispatch(self, cid: str, wave: int, items: Iterable[Mapping[str, Any]]) -> None:
        """Record what the coordinator sends in wave ``wave`` (HSET ``:dispatched``, task id →
        ``<wave>:<spec digest>``): a worker runs only tasks recorded here (:func:`spec_digest`)."""
        mapping = {str(i["task_id"]): f"{wave}:{spec_digest(i)}" for i in items}
        if mapping:
            self.r.hset(self.keys.dispatched(cid), mapping=mapping)

    def save_undo(self, cid: str, task_id: str, data: dict[str, Any]) -> None:
        """Persist a reversible tool's undo data before its effect (HSET on ``:undo``)."""
        self.r.hset(self.keys.undo(cid), task_id, json.dumps(data))

    def retry_counts(self, cid: str, wave: int, n: int, transitions: list[Transition]) -> None:
        """Count ``n`` attempts of wave ``wave`` as waiting for a Celery retry (no longer running)
        and push their transitions, in one round trip."""
        if not n:
            return
        pipe = self.r.pipeline(transaction=False)
        self.push_transitions(cid, transitions, pipe)
        pipe.hincrby(self.keys.wave(cid, wave), "running", -n)
        pipe.hincrby(self.keys.wave(cid, wave), "retries", n)
        pipe.execute()

    def record_outcomes(
        self,
        outcomes: list[Outcome],
        *,
        running_delta: int = 0,
        transitions: list[Transition] | None = None,
        written: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """One round trip: outcomes into the hash, wave and agent counters, the tasks' state
        transitions, and one ``outcomes`` event listing ``[task_id, status, agent_id, wave]``
        per outcome.

        ``running_delta`` adjusts the wave's ``running`` counter (claims that end here);
        ``written`` names outcomes already in the hash (recorded under their claim by
        :meth:`buddy.state.claims.Claims.commit`): only their counters and event are added here.
        """
        if not outcomes:
            return
        pipe = self.r.pipeline(transaction=False)
        cid = outcomes[0].campaign_id
        self.push_transitions(cid, transitions or [], pipe)
        fresh = {o.task_id: o.model_dump_json() for o in outcomes if o.task_id not in written}
        if fresh:
            pipe.hset(self.keys.outcomes(cid), mapping=fresh)
        per_wave: dict[int, dict[str, int]] = {}
        per_agent: dict[str, dict[str, int]] = {}
        for o in outcomes:
            w = per_wave.setdefault(o.wave, {})
            w["done"] = w.get("done", 0) + 1
            w[f"status:{o.status.value}"] = w.get(f"status:{o.status.value}", 0) + 1
            if o.status is not TaskStatus.SUCCEEDED:
                w["failed"] = w.get("failed", 0) + 1
            if o.agent_id and o.worker:
                a = per_agent.setdefault(o.agent_id, {})
                a["processed"] = a.get("processed", 0) + 1
                if o.status is not TaskStatus.SUCCEEDED:
                    a["failed"] = a.get("failed", 0) + 1
        marks: list[tuple[int, int, int]] = []  # (wave, place of its done HINCRBY in the pipeline, added)
        for wave, counts in per_wave.items():
            for field, n in counts.items():
                if field == "done":
                    marks.append((wave, len(pipe), n))
                pipe.hincrby(self.keys.wave(cid, wave), field, n)
        expects = len(pipe)
        for wave, _, _ in marks:
            pipe.hget(self.keys.wave(cid, wave), "expect")
        if running_delta:
            pipe.hincrby(self.keys.wave(cid, outcomes[0].wave), "running", running_delta)
        for aid, counts in per_agent.items():
            for field, n in counts.items():
                pipe.hincrby(self.keys.agent(aid), field, n)
        pipe.xadd(
            self.keys.events(cid),
            {
                "type": "outcomes",
                "data": json.dumps([[o.task_id, o.status.value, o.agent_id, o.wave] for o in outcomes]),
            },
            maxlen=self.events_maxlen,
            approximate=True,
        )
        got = pipe.execute()
        for k, (wave, at, added) in enumerate(marks):
            done, expect = int(got[at]), got[expects + k]
            if expect is not None and done - added < int(expect) <= done:  # this write completed it
                self.r.rpush(self.keys.wave_done(cid, wave), WAKE)

    def undo_data(self, cid: str, task_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Undo records by task id (all of the campaign's when ``task_ids`` is None)."""
        if task_ids is None:
            raw = self.r.hgetall(self.keys.undo(cid))
            return {_s(k) or "": json.loads(v) for k, v in raw.items()}
        ids = list(task_ids)
        vals = self.r.hmget(self.keys.undo(cid), ids) if ids else []
        return {t: json.loads(v) for t, v in zip(ids, vals, strict=True) if v is not None}

    def replace_outcome(self, outcome: Outcome, move: Transition) -> None:
        """Overwrite a final outcome (a compensation turned it ``rolled_back``) with its
        transition, and move the wave's status counters with it (``buddy status`` counts it
        as what it is now)."""
        cid, wave = outcome.campaign_id, self.keys.wave(outcome.campaign_id, outcome.wave)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.keys.outcomes(cid), outcome.task_id, outcome.model_dump_json())
        self.push_transitions(cid, [move], pipe)
        if move.from_state is not move.to_state:
            pipe.hincrby(wave, f"status:{move.from_state.value}", -1)
            pipe.hincrby(wave, f"status:{move.to_state.value}", 1)
            if move.from_state is TaskStatus.SUCCEEDED:
                pipe.hincrby(wave, "failed", 1)
        pipe.execute()

    def forget_outcome(self, cid: str, task_id: str, move: Transition) -> None:
        """Remove a task's outcome and claim (``buddy review --mark retry``) so it runs again."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hdel(self.keys.outcomes(cid), task_id)
        pipe.delete(self.keys.claim(cid, task_id))
        self.push_transitions(cid, [move], pipe)
        pipe.execute()

    def push_rollback_event(self, event: RollbackEvent) -> None:
        """Append a compensation's record to ``buddy:campaign:<cid>:rollbacks`` (RPUSH)."""
        self.r.rpush(self.keys.rollbacks(event.campaign_id), event.model_dump_json())

    def rollback_events(self, cid: str, start: int = 0) -> list[RollbackEvent]:
        """Compensation records of ``cid`` from index ``start`` on (LRANGE)."""
        return [
            RollbackEvent.model_validate_json(x) for x in self.r.lrange(self.keys.rollbacks(cid), start, -1)
        ]

    # -- events --------------------------------------------------------------------------

    def event(self, cid: str, type_: str, **data: Any) -> None:
        """Append one event to the campaign's capped stream (XADD MAXLEN ~)."""
        self.r.xadd(
            self.keys.events(cid),
            {"type": type_, "data": json.dumps(data, default=str)},
            maxlen=self.events_maxlen,
            approximate=True,
        )

    def events(self, cid: str, count: int = 100) -> list[dict[str, Any]]:
        """The newest ``count`` events, oldest first: ``{"id", "type", "data"}``."""
        rows = self.r.xrevrange(self.keys.events(cid), count=count)
        out = []
        for eid, fields in reversed(rows):
            f = {_s(k): _s(v) for k, v in fields.items()}
            out.append({"id": _s(eid), "type": f.get("type"), "data": json.loads(f.get("data") or "null")})
        return out

    # -- state transitions ---------------------------------------------------------------

    def push_transitions(self, cid: str, rows: list[Transition], pipe: Any = None) -> None:
        """Append workers' transitions (RPUSH, one command); in ``pipe`` when given."""
        if not rows:
            return
        target = pipe if pipe is not None else self.r
        target.rpush(self.keys.transitions(cid), *(t.model_dump_json() for t in rows))

    def pop_transitions(self, cid: str) -> list[Transition]:
        """Take every queued transition of ``cid`` (LRANGE + DEL in one MULTI)."""
        return [Transition.model_validate_json(x) for x in self.pop_transitions_raw(cid)]

    def pop_transitions_raw(self, cid: str) -> list[bytes]:
        """:meth:`pop_transitions` as stored: one ``Transition`` JSON document each."""
        pipe = self.r.pipeline(transaction=True)
        pipe.lrange(self.keys.transitions(cid), 0, -1)
        pipe.delete(self.keys.transitions(cid))
        rows, _ = pipe.execute()
        return [_b(x) for x in rows]
