"""Worker registration and heartbeats into ``buddy:agent:<id>`` (Celery worker signals).

On ``worker_ready`` the main worker process finds the agent queues it consumes
(``buddy.agent.<id>``) and starts a daemon thread that heartbeats every
``BUDDY_HEARTBEAT_INTERVAL_S`` seconds; on ``worker_shutdown`` it stops and removes the
worker from its agents' live sets. A worker killed with SIGKILL stops heartbeating and
counts as gone after ``BUDDY_HEARTBEAT_STALE_S``.

Each beat also takes a clock sample (:func:`clock_sample`) for ``buddy doctor``'s clock-skew
check: the agent hash gets ``clock:<worker>`` (this host's ``time.time()`` at the middle of a
``MULTI``/``TIME``/``EXEC`` round trip), ``redis_time:<worker>`` (the Redis server's ``TIME``
in that transaction) and ``clock_rtt:<worker>`` (the round trip, seconds; the sample's
uncertainty is half of it). The worker's skew is ``clock - redis_time``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from buddy.config import get_settings
from buddy.state.keys import Keys

log = logging.getLogger("buddy.worker")
AGENT_PREFIX = "buddy.agent."

_state: dict[str, Any] = {}


def _agents_of(consumer: Any) -> list[str]:
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or []
    return sorted({q.name[len(AGENT_PREFIX) :] for q in queues if q.name.startswith(AGENT_PREFIX)})


def clock_fields(worker: str) -> tuple[str, str, str]:
    """The agent-hash fields of ``worker``'s clock sample: clock, redis_time, clock_rtt."""
    return f"clock:{worker}", f"redis_time:{worker}", f"clock_rtt:{worker}"


def clock_sample(client: Any, worker: str, agents: Iterable[str]) -> tuple[float, float, float]:
    """Measure this host's clock against Redis and store it on each agent's hash.

    Returns ``(worker_time, redis_time, rtt_s)``: Redis ``TIME`` read in a ``MULTI`` and this
    host's ``time.time()`` halfway through that round trip (two round trips in all).
    """
    t0 = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.time()
    ((sec, usec),) = pipe.execute()
    t1 = time.time()
    worker_t, redis_t, rtt = (t0 + t1) / 2, float(sec) + float(usec) / 1e6, t1 - t0
    clock, rtime, crtt = clock_fields(worker)
    pipe = client.pipeline(transaction=False)
    for aid in agents:
        pipe.hset(Keys.agent(aid), mapping={clock: repr(worker_t), rtime: repr(redis_t), crtt: repr(rtt)})
    pipe.execute()
    return worker_t, redis_t, rtt


def _loop(worker: str, agents: list[str], stop: threading.Event) -> None:
    from workers.tasks import store

    interval = get_settings().heartbeat_interval_s
    while True:
        try:
            store().heartbeat(worker, agents, status="idle")
            clock_sample(store().r, worker, agents)
        except Exception:  # Redis blips must not kill the heartbeat; the next beat retries
            log.warning("heartbeat to Redis failed", exc_info=True)
        if stop.wait(interval):
            return


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    agents = _agents_of(sender)
    worker = str(getattr(sender, "hostname", None) or "worker")
    if not agents:
        return
    stop = threading.Event()
    thread = threading.Thread(target=_loop, args=(worker, agents, stop), name="buddy-heartbeat", daemon=True)
    thread.start()
    _state.update(worker=worker, agents=agents, stop=stop, thread=thread)
    log.info("worker %s serves agents %s", worker, ", ".join(agents))


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    stop = _state.get("stop")
    if stop is None:
        return
    stop.set()
    try:
        from workers.tasks import store

        st = store()
        st.worker_gone(_state["worker"], _state["agents"])
        pipe = st.r.pipeline(transaction=False)
        for aid in _state["agents"]:
            pipe.hdel(Keys.agent(aid), *clock_fields(_state["worker"]))
        pipe.execute()
    except Exception:
        log.warning("could not deregister worker", exc_info=True)
