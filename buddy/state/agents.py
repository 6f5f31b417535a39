"""The agents' state in Redis: worker heartbeats, live workers, parameters and counters.

Keys (:class:`~buddy.state.keys.Keys`): ``buddy:agent:<aid>`` (hash: ``heartbeat`` epoch
seconds, ``status``, ``params`` JSON, ``in_flight``, ``processed``, ``failed``),
``buddy:agent:<aid>:workers`` (sorted set: worker name → last heartbeat, epoch seconds; a
worker is live while its score is within ``stale_s``) and ``buddy:agents`` (set: every agent
id that ever heartbeated). :class:`AgentState` is the part of :class:`~buddy.state.store.Store`
that reads and writes them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from buddy.state.keys import Keys, _s


class AgentInfo(BaseModel):
    """One row of ``buddy agents``: an agent's state as its workers last reported it."""

    agent_id: str
    status: str
    live_workers: list[str]
    heartbeat_age_s: float | None
    in_flight: int
    processed: int
    failed: int
    params: dict[str, Any] = Field(default_factory=dict)


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
    ) -> None:
        """Record that ``worker`` is alive and serves ``agent_ids`` (ZADD + HSET, one round trip)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        for aid in agent_ids:
            pipe.sadd(self.keys.agents(), aid)
            pipe.zadd(self.keys.agent_workers(aid), {worker: now})
            fields: dict[str, str | float] = {"heartbeat": now, "status": status}
            if params is not None:
                fields["params"] = json.dumps(dict(params))
            pipe.hset(self.keys.agent(aid), mapping=fields)
        pipe.execute()

    def worker_gone(self, worker: str, agent_ids: Iterable[str]) -> None:
        """Remove ``worker`` from its agents' live sets (a clean shutdown)."""
        pipe = self.r.pipeline(transaction=False)
        for aid in agent_ids:
            pipe.zrem(self.keys.agent_workers(aid), worker)
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
            pipe.zrangebyscore(self.keys.agent_workers(aid), now - self.stale_s, "+inf")
        replies = pipe.execute()
        return {
            aid: self._agent_info(aid, replies[2 * i], replies[2 * i + 1], now) for i, aid in enumerate(ids)
        }

    def _agent_info(self, agent_id: str, hash_: Any, workers: Any, now: float) -> AgentInfo:
        raw = {_s(k) or "": _s(v) or "" for k, v in hash_.items()}
        live = sorted(_s(x) or "" for x in workers)
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
        )
