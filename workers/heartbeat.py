"""Worker registration and heartbeats into ``buddy:agent:<id>`` (Celery worker signals).

On ``worker_ready`` the main worker process finds the agent queues it consumes
(``buddy.agent.<id>``) and starts a daemon thread that heartbeats every
``BUDDY_HEARTBEAT_INTERVAL_S`` seconds; on ``worker_shutdown`` it stops and removes the
worker from its agents' live sets. A worker killed with SIGKILL stops heartbeating and
counts as gone after ``BUDDY_HEARTBEAT_STALE_S``.

Each beat reports the worker's capacity (:meth:`buddy.state.agents.AgentState.heartbeat`):
its pool size read at that moment (:func:`pool_size`: the prefork pool's processes, the
threads pool's threads) and the queues it consumes (:func:`queues_of`; the agents it serves
are read again from them, so Celery's ``add_consumer`` / ``cancel_consumer`` show up too).
Between beats the thread looks at the pool every :data:`POLL_S` seconds and beats at once
when its size or its queues changed (``pool_grow`` / ``pool_shrink`` remote control, the
autoscaler), so the coordinator sees a change within :data:`POLL_S` of it, not a beat
interval later (a grown prefork pool changes when billiard starts the new processes).

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
#: Seconds between two looks at the pool's size and queues (a change beats at once).
POLL_S = 0.2

_state: dict[str, Any] = {}


def queues_of(consumer: Any) -> list[str]:
    """The names of the queues the worker's consumer consumes now (Celery
    ``consumer.task_consumer.queues``), sorted; empty before the consumer started."""
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or []
    return sorted({str(q.name) for q in queues})


def _agents_of(consumer: Any) -> list[str]:
    return sorted({q[len(AGENT_PREFIX) :] for q in queues_of(consumer) if q.startswith(AGENT_PREFIX)})


def pool_size(consumer: Any) -> int | None:
    """The worker pool's processes or threads running now (None when unknown).

    From Celery's ``consumer.pool`` (``celery.concurrency``): the threads pool's
    ``executor._max_workers`` (its ``ThreadPoolExecutor``; Celery 5.7's threads pool cannot
    grow); the prefork pool's processes that exist, ``len(_pool._pool)`` (billiard), at most
    its target ``_pool._processes`` (``num_processes``): ``pool_grow`` and the autoscaler
    raise the target at once but billiard starts the new processes at its next
    ``maintain_pool`` (a 5 s timer), and ``pool_shrink`` lowers it as the process is told to
    exit; the other pools' ``limit`` (solo: 1).
    """
    pool = getattr(consumer, "pool", None)
    if pool is None:
        return None
    executor = getattr(pool, "executor", None)
    n = getattr(executor, "_max_workers", None)
    inner = getattr(pool, "_pool", None)
    if n is None and inner is not None:
        target, procs = getattr(inner, "_processes", None), getattr(inner, "_pool", None)
        if isinstance(target, int) and isinstance(procs, list):
            n = min(target, len(procs))
    if n is None:
        n = getattr(pool, "limit", None)
    return int(n) if isinstance(n, int) and n > 0 else None


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


def _loop(consumer: Any, worker: str, stop: threading.Event) -> None:
    from workers.tasks import store

    interval = get_settings().heartbeat_interval_s
    last: tuple[int | None, list[str]] | None = None
    beat_at = float("-inf")
    while True:
        now = (pool_size(consumer), queues_of(consumer))
        due = last is None or time.monotonic() - beat_at >= interval
        if now != last or due:
            # no queue at all: the consumer is restarting (a broker reconnect); keep the agents
            agents = _agents_of(consumer) if now[1] else list(_state.get("agents", []))
            try:
                st = store()
                gone = [a for a in _state.get("agents", []) if a not in agents]
                if gone:  # cancel_consumer: this worker no longer serves them
                    st.worker_gone(worker, gone)
                _state["agents"] = agents
                st.heartbeat(worker, agents, status="idle", pool=now[0], queues=now[1] or None)
                if due:
                    clock_sample(st.r, worker, agents)
                if last is not None and now[0] != last[0]:
                    log.info("worker %s: pool size %s -> %s", worker, last[0], now[0])
            except Exception:  # Redis blips must not kill the heartbeat; the next beat retries
                log.warning("heartbeat to Redis failed", exc_info=True)
            last, beat_at = now, time.monotonic()
        if stop.wait(min(POLL_S, interval)):
            return


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    agents = _agents_of(sender)
    worker = str(getattr(sender, "hostname", None) or "worker")
    if not agents:
        return
    stop = threading.Event()
    _state.update(worker=worker, agents=agents, stop=stop)
    thread = threading.Thread(target=_loop, args=(sender, worker, stop), name="buddy-heartbeat", daemon=True)
    thread.start()
    _state["thread"] = thread
    log.info("worker %s serves agents %s (pool of %s)", worker, ", ".join(agents), pool_size(sender))


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    stop = _state.get("stop")
    if stop is None:
        return
    stop.set()
    thread = _state.get("thread")
    if thread is not None:
        thread.join(timeout=2.0)  # a beat in progress must not re-register the worker after this
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
