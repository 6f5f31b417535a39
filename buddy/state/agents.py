"""The agents' state in Redis: worker heartbeats, live workers, capacity, parameters and counters.

Keys (:class:`~buddy.state.keys.Keys`): ``buddy:agent:<aid>`` (hash: ``heartbeat`` epoch
seconds, ``status``, ``params`` JSON, ``in_flight``, ``processed``, ``failed``, and per
worker ``pool:<worker>``, the number of processes or threads its pool ran at its last beat,
and ``queues:<worker>``, the queues it consumes, comma-separated: :func:`worker_fields`),
``buddy:agent:<aid>:workers`` (sorted set: worker name → last heartbeat, epoch seconds; a
worker is live while its score is within ``stale_s``) and ``buddy:agents`` (set: every agent
id that ever heartbeated). :class:`AgentState` is the part of :class:`~buddy.state.store.Store`
that reads and writes them.

An agent's *capacity* is the sum of its live workers' pool sizes (:attr:`AgentInfo.capacity`):
a worker whose heartbeat went stale drops out of it, and a ``pool_grow`` / ``pool_shrink`` or
an autoscale change shows up with the worker's next beat (:mod:`workers.heartbeat`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from buddy.state.keys import Keys, _s


def worker_fields(worker: str) -> tuple[str, str]:
    """The agent-hash fields of ``worker``'s pool report: ``pool:<worker>`` (processes or
    threads) and ``queues:<worker>`` (queue names, comma-separated)."""
    return f"pool:{worker}", f"queues:{worker}"


class AgentInfo(BaseModel):
    """One row of ``buddy agents``: an agent's state as its workers last reported it.

    ``beats``: live worker → its last heartbeat (epoch seconds); ``pools``: live worker → its
    pool size (processes or threads) at that beat, for the workers that report one;
    ``queues``: live worker → the queues it consumes; ``capacity``: Σ ``pools`` (execution
    slots), None when no live worker reports its pool (then campaign.yaml's ``concurrency``
    stands in: :func:`buddy.coordinator.fleet_view.live_capacity`).
    """

    agent_id: str
    status: str
    live_workers: list[str]
    heartbeat_age_s: float | None
    in_flight: int
    processed: int
    failed: int
    params: dict[str, Any] = Field(default_factory=dict)
    beats: dict[str, float] = Field(default_factory=dict)
    pools: dict[str, int] = Field(default_factory=dict)
    queues: dict[str, list[str]] = Field(default_factory=dict)

    @property
    def capacity(self) -> int | None:
        """Σ of the live workers' pool sizes (slots); None when none reports one."""
        return sum(self.pools.values()) if self.pools else None


class AgentState:
    """Agent and worker state, a base of :class:`~buddy.state.store.Store` (which sets ``r``, the
    redis-py client, and ``stale_s``, the age in seconds past which a heartbeat is stale)."""

    r: Any
    keys: type[Keys]
    stale_s: float

    def heartbeat(
        self,
        worker: str,
        agent_ids: Iterable[str],
        *,
        status: str = "idle",
        params: Mapping[str, Any] | None = None,
        pool: int | None = None,
        queues: Sequence[str] | None = None,
    ) -> None:
        """Record that ``worker`` is alive and serves ``agent_ids`` (ZADD + HSET, one round
        trip); ``pool``: its pool's processes or threads now, ``queues``: the queues it
        consumes (each stored when given: :func:`worker_fields`)."""
        now = time.time()
        pool_f, queues_f = worker_fields(worker)
        pipe = self.r.pipeline(transaction=False)
        for aid in agent_ids:
            pipe.sadd(self.keys.agents(), aid)
            pipe.zadd(self.keys.agent_workers(aid), {worker: now})
            fields: dict[str, str | float | int] = {"heartbeat": now, "status": status}
            if params is not None:
                fields["params"] = json.dumps(dict(params))
            if pool is not None:
                fields[pool_f] = int(pool)
            if queues is not None:
                fields[queues_f] = ",".join(queues)
            pipe.hset(self.keys.agent(aid), mapping=fields)
        pipe.execute()

    def worker_gone(self, worker: str, agent_ids: Iterable[str]) -> None:
        """Remove ``worker`` from its agents' live sets and drop its pool report (a clean
        shutdown: its slots leave the agents' capacity at once)."""
        pipe = self.r.pipeline(transaction=False)
        for aid in agent_ids:
            pipe.zrem(self.keys.agent_workers(aid), worker)
            pipe.hdel(self.keys.agent(aid), *worker_fields(worker))
        pipe.execute()

    def live_workers(self, agent_id: str, now: float | None = None) -> list[str]:
        """Workers of ``agent_id`` whose last heartbeat is at most ``stale_s`` seconds old."""
        now = time.time() if now is None else now
        rows = self.r.zrangebyscore(self.keys.agent_workers(agent_id), now - self.stale_s, "+inf")
        return sorted(_s(x) or "" for x in rows)

    def set_agent_params(self, params: Mapping[str, Mapping[str, Any]]) -> None:
        """Record each agent's tuned parameters (``buddy agents`` shows them)."""
        pipe = self.r.pipeline(transaction=False)
        for aid, p in params.items():
            pipe.hset(self.keys.agent(aid), "params", json.dumps(dict(p)))
        pipe.execute()

    def add_in_flight(self, agent_id: str, n: int) -> None:
        """Add ``n`` (may be negative) to the agent's ``in_flight`` counter."""
        self.r.hincrby(self.keys.agent(agent_id), "in_flight", n)

    def agent_ids(self) -> list[str]:
        """Every agent id that ever heartbeated, sorted."""
        return sorted(_s(x) or "" for x in self.r.smembers(self.keys.agents()))

    def agent_info(self, agent_id: str, now: float | None = None) -> AgentInfo:
        """The agent's state; ``status`` is ``offline`` when no worker heartbeated recently."""
        return self.agents_info([agent_id], now)[agent_id]

    def agents_info(self, agent_ids: Iterable[str], now: float | None = None) -> dict[str, AgentInfo]:
        """:meth:`agent_info` of several agents in one round trip (a pipeline)."""
        now = time.time() if now is None else now
        ids = list(agent_ids)
        pipe = self.r.pipeline(transaction=False)
        for aid in ids:
            pipe.hgetall(self.keys.agent(aid))
            pipe.zrangebyscore(self.keys.agent_workers(aid), now - self.stale_s, "+inf", withscores=True)
        replies = pipe.execute()
        return {
            aid: self._agent_info(aid, replies[2 * i], replies[2 * i + 1], now) for i, aid in enumerate(ids)
        }

    def _agent_info(self, agent_id: str, hash_: Any, workers: Any, now: float) -> AgentInfo:
        raw = {_s(k) or "": _s(v) or "" for k, v in hash_.items()}
        beats = {_s(w) or "": float(score) for w, score in workers}
        live = sorted(beats)
        pools: dict[str, int] = {}
        queues: dict[str, list[str]] = {}
        for w in live:
            pool_f, queues_f = worker_fields(w)
            if raw.get(pool_f, "").isdigit():
                pools[w] = int(raw[pool_f])
            if queues_f in raw:
                queues[w] = [q for q in raw[queues_f].split(",") if q]
        hb = float(raw["heartbeat"]) if raw.get("heartbeat") else None
        in_flight = max(0, int(raw.get("in_flight") or 0))
        status = raw.get("status") or "offline"
        if not live:
            status = "offline"
        elif status not in ("degraded",):
            status = "busy" if in_flight > 0 else "idle"
        return AgentInfo(
            agent_id=agent_id,
            status=status,
            live_workers=live,
            heartbeat_age_s=(now - hb) if hb else None,
            in_flight=in_flight,
            processed=int(raw.get("processed") or 0),
            failed=int(raw.get("failed") or 0),
            params=json.loads(raw["params"]) if raw.get("params") else {},
            beats=dict(sorted(beats.items())),
            pools=pools,
            queues=queues,
        )
