"""Worker registration and heartbeats into ``buddy:agent:<id>`` (Celery worker signals).

On ``worker_ready`` the main worker process finds the agent queues it consumes
(``buddy.agent.<id>``) and starts a daemon thread that heartbeats every
``BUDDY_HEARTBEAT_INTERVAL_S`` seconds; on ``worker_shutdown`` it stops and removes the
worker from its agents' live sets. A worker killed with SIGKILL stops heartbeating and
counts as gone after ``BUDDY_HEARTBEAT_STALE_S``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from buddy.config import get_settings

log = logging.getLogger("buddy.worker")
AGENT_PREFIX = "buddy.agent."

_state: dict[str, Any] = {}


def _agents_of(consumer: Any) -> list[str]:
    queues = getattr(getattr(consumer, "task_consumer", None), "queues", None) or []
    return sorted({q.name[len(AGENT_PREFIX) :] for q in queues if q.name.startswith(AGENT_PREFIX)})


def _loop(worker: str, agents: list[str], stop: threading.Event) -> None:
    from workers.tasks import store

    interval = get_settings().heartbeat_interval_s
    while True:
        try:
            store().heartbeat(worker, agents, status="idle")
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

        store().worker_gone(_state["worker"], _state["agents"])
    except Exception:
        log.warning("could not deregister worker", exc_info=True)
