"""Execution claims: at most one live attempt of a task at a time.

README, "Exactly once, crashes, leases", says what an operator sees.

A claim ``buddy:campaign:<cid>:claim:<task>`` (string, one :class:`Claim` as JSON) names the
attempt that may run a task: its worker process, attempt number, Celery delivery and a
heartbeat the worker renews every few seconds. Every write of a claim is a compare-and-set
against the value its writer last read (the Lua scripts below), so:

- two deliveries of one batch (a visibility-timeout redelivery, a resumed campaign) cannot
  both start a task: the second one's :meth:`Claims.acquire` finds the value changed and
  waits for the first attempt's outcome instead;
- an attempt whose claim was taken over (its heartbeat went stale: the worker died or was
  paused) cannot renew it (:meth:`Claims.swap`) nor record its outcome
  (:meth:`Claims.commit`): the attempt that took over, or the coordinator, decides.

A claim's ``state`` is ``running`` while an attempt runs, ``retry_wait`` between a failed
attempt and its Celery retry, ``done`` once the outcome is recorded by :meth:`Claims.commit`
and ``closed`` when the coordinator recorded the outcome for an attempt that died.

Each script is idempotent for its own writer: a redis-py retry of a call whose first send
was executed finds its own new value and reports success.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from pydantic import BaseModel, Field

from buddy.state.keys import Keys

log = logging.getLogger("buddy.execution")

# KEYS[1] = claim, KEYS[2] = the campaign's outcomes hash, KEYS[3] = the wave hash
# ARGV[1] = task id, ARGV[2] = the claim value the caller read ('' = none),
# ARGV[3] = the new claim, ARGV[4] = TTL in seconds, ARGV[5] = 1 to count it as running
# Returns 1 when the claim is now ARGV[3] (or already was), 0 when it changed since the caller
# read it (another attempt claimed, renewed or settled it), -1 when the task has an outcome.
ACQUIRE = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return -1 end
local cur = redis.call('GET', KEYS[1]) or ''
if cur == ARGV[3] then return 1 end
if cur ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[3], 'running', 1) end
return 1
"""

# KEYS[1] = claim; ARGV[1] = expected value, ARGV[2] = new value, ARGV[3] = TTL in seconds
# Returns 1 when the claim is now ARGV[2], 0 when it was not ARGV[1] (no longer ours).
SWAP = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur == ARGV[2] then return 1 end
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# KEYS[1] = claim, KEYS[2] = the campaign's outcomes hash
# ARGV[1] = expected claim, ARGV[2] = task id, ARGV[3] = outcome JSON,
# ARGV[4] = the settled claim (state done or closed), ARGV[5] = TTL in seconds
# Returns 1 when the outcome is recorded under the expected claim, 0 when the claim is no
# longer the caller's (nothing written).
COMMIT = """
local cur = redis.call('GET', KEYS[1]) or ''
if cur == ARGV[4] then return 1 end
if cur ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[5])
return 1
"""

CLAIMED, CHANGED, HAS_OUTCOME = 1, 0, -1


class Claim(BaseModel):
    """An execution claim on ``(campaign, task)``: who runs which attempt, since when.

    ``delivery`` is ``<celery task id>:<retries>`` (``coordinator`` for a claim the coordinator
    settled); ``started_at`` and ``heartbeat`` are epoch seconds. A ``running`` claim with a
    heartbeat younger than the stale limit belongs to an attempt in progress; an older one to
    an attempt that died or is paused. ``errors`` carries the failed attempts' errors across a
    Celery retry.
    """

    worker: str
    attempt: int
    started_at: float
    state: str = "running"
    delivery: str = ""
    heartbeat: float = 0.0
    errors: list[dict[str, Any]] = Field(default_factory=list)

    def fresh(self, now: float, stale_s: float) -> bool:
        """True while this is a ``running`` claim whose heartbeat is under ``stale_s`` seconds old."""
        return self.state == "running" and now - (self.heartbeat or self.started_at) < stale_s

    def dump(self) -> bytes:
        """The stored value (the bytes the compare-and-set scripts compare)."""
        return self.model_dump_json().encode()


def parse(raw: bytes | str | None) -> Claim | None:
    """A stored claim value as a :class:`Claim` (None for no claim)."""
    return Claim.model_validate_json(raw) if raw else None


def _b(v: bytes | str) -> bytes:
    return v.encode() if isinstance(v, str) else v


class Claims:
    """Compare-and-set access to execution claims on one redis-py client (or fakeredis)."""

    def __init__(self, client: Any) -> None:
        self.r = client
        self._acquire = client.register_script(ACQUIRE)
        self._swap = client.register_script(SWAP)
        self._commit = client.register_script(COMMIT)

    def _evalshas(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run ``(script, keys, args)`` calls as plain ``EVALSHA`` in one pipelined round trip.

        redis-py's pipelined scripts send ``SCRIPT EXISTS`` before every pipeline (a second
        round trip); here a script is loaded only when Redis answers ``NOSCRIPT`` (first use,
        or a restarted Redis), then the pipeline is sent again: every script above is
        idempotent for its own caller."""
        for attempt in (1, 2):
            pipe = self.r.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            try:
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                for script in {id(c[0]): c[0] for c in calls}.values():
                    self.r.script_load(script.script)
        raise AssertionError("unreachable")

    def read(self, cid: str, task_ids: list[str]) -> dict[str, bytes]:
        """The stored claims of ``task_ids`` that have one, as stored (MGET)."""
        if not task_ids:
            return {}
        vals = self.r.mget([Keys.claim(cid, t) for t in task_ids])
        return {t: _b(v) for t, v in zip(task_ids, vals, strict=True) if v is not None}

    def acquire(
        self, cid: str, wave: int, entries: Mapping[str, tuple[bytes | None, Claim]], ttl_s: int
    ) -> dict[str, tuple[int, bytes]]:
        """Claim each task whose claim is still the value the caller read (one pipelined round
        trip of :data:`ACQUIRE`). ``entries``: task id → (value read or None, new claim).

        Returns task id → (:data:`CLAIMED` | :data:`CHANGED` | :data:`HAS_OUTCOME`, new value).
        A task newly claimed over no claim or a ``retry_wait`` one counts as running on the wave.
        """
        if not entries:
            return {}
        news: dict[str, bytes] = {}
        okeys, wkey = Keys.outcomes(cid), Keys.wave(cid, wave)
        calls = []
        for tid, (old, claim) in entries.items():
            news[tid] = new = claim.dump()
            was = parse(old)
            count = "0" if was is not None and was.state == "running" else "1"
            calls.append(
                (self._acquire, [Keys.claim(cid, tid), okeys, wkey], [tid, old or b"", new, ttl_s, count])
            )
        codes = self._evalshas(calls)
        return {tid: (int(code), news[tid]) for tid, code in zip(entries, codes, strict=True)}

    def swap(
        self, cid: str, entries: Mapping[str, tuple[bytes, Claim]], ttl_s: int
    ) -> dict[str, bytes | None]:
        """Replace each claim that still holds the expected value (renewal, ``retry_wait``).

        ``entries``: task id → (expected value, new claim). Returns task id → the new value,
        or None where the claim is no longer the caller's. One pipelined round trip.
        """
        if not entries:
            return {}
        news: dict[str, bytes] = {}
        calls = []
        for tid, (old, claim) in entries.items():
            news[tid] = new = claim.dump()
            calls.append((self._swap, [Keys.claim(cid, tid)], [old, new, ttl_s]))
        codes = self._evalshas(calls)
        return {tid: (news[tid] if int(c) else None) for tid, c in zip(entries, codes, strict=True)}

    def commit(
        self, cid: str, entries: Mapping[str, tuple[bytes, bytes, Claim]], ttl_s: int
    ) -> dict[str, bool]:
        """Record outcomes only where the claim is still the caller's (:data:`COMMIT`).

        ``entries``: task id → (expected claim value, outcome JSON, settled claim). Returns
        task id → whether the outcome was recorded. One pipelined round trip.
        """
        if not entries:
            return {}
        okeys = Keys.outcomes(cid)
        calls = [
            (self._commit, [Keys.claim(cid, tid), okeys], [old, tid, outcome, done.dump(), ttl_s])
            for tid, (old, outcome, done) in entries.items()
        ]
        codes = self._evalshas(calls)
        return {tid: bool(int(c)) for tid, c in zip(entries, codes, strict=True)}


def settled(claim: Claim, state: str, *, by: str | None = None, now: float | None = None) -> Claim:
    """``claim`` moved to ``state`` (``done``, ``closed``, ``retry_wait``) with a new heartbeat."""
    update: dict[str, Any] = {"state": state, "heartbeat": time.time() if now is None else now}
    if by is not None:
        update["worker"] = by
    return claim.model_copy(update=update)


class HeldClaims:
    """The claims one worker process holds, their heartbeats renewed by a daemon thread every
    ``renew_s`` seconds (compare-and-set on the value last written) until they are let go.

    Renewals and the writes that settle a claim (:meth:`commit`, :meth:`retry_wait`) take one
    lock, so a settle always compares against the value the last renewal wrote. A claim found
    changed on renewal was taken over by another attempt (this one's heartbeat went stale):
    it is no longer renewed, and its outcome is not recorded.
    """

    def __init__(self, claims: Claims, *, ttl_s: int, renew_s: float, clock: Callable[[], float]) -> None:
        self.claims = claims
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.clock = clock
        self._live: dict[tuple[str, str], tuple[bytes, Claim]] = {}
        self._lock = threading.Lock()  # guards _live
        self._io = threading.Lock()  # one claim write at a time: renewals vs. settles
        self._renewer: threading.Thread | None = None

    def hold(self, cid: str, claims: Mapping[str, tuple[bytes, Claim]]) -> None:
        """Start renewing ``claims`` (task id → (stored value, claim))."""
        if not claims:
            return
        with self._lock:
            for tid, held in claims.items():
                self._live[(cid, tid)] = held
            if self._renewer is None or not self._renewer.is_alive():
                self._renewer = threading.Thread(target=self._loop, name="buddy-claims", daemon=True)
                self._renewer.start()

    def value(self, cid: str, tid: str, fallback: bytes | None) -> bytes:
        """The stored value of a held claim as last written (``fallback`` when not held)."""
        with self._lock:
            held = self._live.get((cid, tid))
        return held[0] if held is not None else (fallback or b"")

    def let_go(self, cid: str, task_ids: list[str]) -> None:
        with self._lock:
            for tid in task_ids:
                self._live.pop((cid, tid), None)

    def commit(self, cid: str, outcomes: Mapping[str, tuple[bytes | None, bytes]]) -> dict[str, bool]:
        """Record outcomes under their held claims (:meth:`Claims.commit`, claim → ``done``) and
        let them go. ``outcomes``: task id → (claim value if not held, outcome JSON). Returns
        task id → whether it was recorded (False: the claim was taken over)."""
        with self._io:
            entries: dict[str, tuple[bytes, bytes, Claim]] = {}
            for tid, (fallback, outcome) in outcomes.items():
                raw = self.value(cid, tid, fallback)
                base = parse(raw)
                if base is not None:
                    entries[tid] = (raw, outcome, settled(base, "done"))
            ok = self.claims.commit(cid, entries, self.ttl_s)
            self.let_go(cid, list(outcomes))
        return {tid: ok.get(tid, False) for tid in outcomes}

    def retry_wait(self, cid: str, claims: Mapping[str, tuple[bytes | None, list[dict[str, Any]]]]) -> None:
        """Move held claims to ``retry_wait`` with the attempts' errors (task id → (claim value
        if not held, errors)) and let them go; a claim taken over meanwhile is left as it is."""
        with self._io:
            entries: dict[str, tuple[bytes, Claim]] = {}
            for tid, (fallback, errors) in claims.items():
                raw = self.value(cid, tid, fallback)
                base = parse(raw)
                if base is not None:
                    entries[tid] = (raw, base.model_copy(update={"state": "retry_wait", "errors": errors}))
            self.claims.swap(cid, entries, self.ttl_s)
            self.let_go(cid, list(claims))

    def _loop(self) -> None:
        while True:
            time.sleep(self.renew_s)
            try:
                self.renew()
            except Exception:  # a Redis blip: the next beat retries
                log.warning("could not renew claims", exc_info=True)

    def renew(self) -> None:
        """Move every held claim's heartbeat to now (one pipelined round trip per campaign)."""
        with self._io:
            with self._lock:
                items = list(self._live.items())
            now = self.clock()
            by_cid: dict[str, dict[str, tuple[bytes, Claim]]] = {}
            for (cid, tid), (raw, claim) in items:
                by_cid.setdefault(cid, {})[tid] = (raw, claim.model_copy(update={"heartbeat": now}))
            for cid, entries in by_cid.items():
                got = self.claims.swap(cid, entries, self.ttl_s)
                with self._lock:
                    for tid, new in got.items():
                        if (cid, tid) not in self._live:
                            continue
                        if new is None:
                            log.warning(
                                "the claim of task %s of %s was taken over by another attempt", tid, cid
                            )
                            del self._live[(cid, tid)]
                        else:
                            self._live[(cid, tid)] = (new, entries[tid][1])
