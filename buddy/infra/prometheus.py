"""Prometheus metrics: the fleet read from Redis at scrape time, and a campaign's progress.

:class:`FleetCollector` is a custom collector: every scrape reads Redis (one pipeline for
the queue lengths, two commands per agent, one pipeline for the dead letters), so the
numbers are never older than the scrape.
``buddy exporter`` serves it alone; the coordinator (``buddy run --metrics-port``) serves it
together with :class:`CampaignMetrics`, which the coordinator updates as waves finish.
Flower's own ``/metrics`` has no queue depth (flower#1173); ``buddy_queue_depth`` is it.

Metrics (``agent`` is the agent id, ``queue`` the Celery queue):

============================================ ======= =============================================
``buddy_queue_depth{queue,agent}``           gauge   messages waiting (LLEN of the list and of its
                                                     priority lists ``<queue>\\x06\\x16<n>``)
``buddy_unacked_messages``                   gauge   delivered to a worker, not yet acked (kombu)
``buddy_agent_live_workers{agent}``          gauge   workers with a fresh heartbeat
``buddy_agent_heartbeat_age_seconds{agent}`` gauge   since the agent's newest heartbeat
``buddy_agent_in_flight{agent}``             gauge   tasks running on the agent's workers
``buddy_agent_processed_total{agent}``       counter tasks the agent's workers finished
``buddy_agent_failed_total{agent}``          counter … that did not succeed
``buddy_redis_up``                           gauge   1 when the scrape could read Redis
``buddy_deadletter_total{reason}``           counter messages workers refused (``HGETALL
                                                     buddy:deadletter:counts``, :mod:`buddy.state.deadletter`)
``buddy_deadletter_messages``                gauge   dead letters kept (``LLEN buddy:deadletter``)
``buddy_tasks_total{status}``                counter final outcomes of the campaign, by status
``buddy_campaign_tasks_planned``             gauge   tasks in the campaign's plan
``buddy_campaign_info{campaign,mode}``       gauge   1 for the running campaign
``buddy_current_wave``                       gauge   the wave being run (0 before the first)
``buddy_wave_health{wave}``                  gauge   the monitor's health of a wave, 0–100
``buddy_error_budget_remaining``             gauge   fraction 0–1 of the allowed failures left
``buddy_lease_contention_total``             counter lease tries that found the resource held
============================================ ======= =============================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from buddy.models import COORDINATOR_QUEUE, FINAL_STATUSES, Outcome, agent_queue
from buddy.state import deadletter
from buddy.state.store import Store

log = logging.getLogger("buddy.metrics")

#: kombu's Redis transport: priority ``n`` of queue ``q`` is the list ``q + SEP + str(n)``
#: (``n`` 0 is ``q`` itself). Defaults of ``kombu.transport.redis`` (``sep``, ``priority_steps``).
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
#: kombu's hash of delivered, unacked messages (``unacked_key`` transport option).
UNACKED_KEY = "unacked"


def priority_lists(queue: str, steps: Iterable[int] = PRIORITY_STEPS, sep: str = PRIORITY_SEP) -> list[str]:
    """The Redis lists kombu keeps for ``queue``: the queue itself and one per nonzero priority."""
    return [queue if n == 0 else f"{queue}{sep}{n}" for n in steps]


def queue_depths(
    client: Any, queues: Sequence[str], steps: Iterable[int] = PRIORITY_STEPS, sep: str = PRIORITY_SEP
) -> dict[str, int]:
    """Messages waiting in each of ``queues``: the sum of LLEN over its priority lists (one round trip)."""
    steps = tuple(steps)
    pipe = client.pipeline(transaction=False)
    for q in queues:
        for name in priority_lists(q, steps, sep):
            pipe.llen(name)
    lengths = iter(pipe.execute())
    return {q: sum(int(next(lengths)) for _ in steps) for q in queues}


class FleetCollector(Collector):
    """Queue depth, heartbeats and counters of every agent, read from Redis at scrape time.

    ``store`` gives the agents (every agent that ever heartbeated, plus ``agents``) and their
    state; ``broker_redis`` is the broker's client when it is not the store's. ``coordinator``
    adds the depth of ``buddy.coordinator`` (chord bodies). ``clock`` is injectable for tests.
    A scrape that cannot reach Redis reports ``buddy_redis_up 0`` and nothing else.
    """

    def __init__(
        self,
        store: Store,
        broker_redis: Any = None,
        *,
        agents: Iterable[str] = (),
        coordinator: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.broker = broker_redis if broker_redis is not None else store.r
        self.agents = list(agents)
        self.coordinator = coordinator
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read Redis; names are checked at scrape time

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("buddy_redis_up", "1 when the last scrape could read Redis, else 0.")
        try:
            families = list(self._families())
        except Exception as e:  # a scrape must answer, also while Redis is down
            log.warning("metrics scrape could not read Redis: %s", e)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _families(self) -> Iterator[Metric]:
        now = self.clock()
        agents = sorted({*self.store.agent_ids(), *self.agents})
        queues = {agent_queue(a): a for a in agents}
        if self.coordinator:
            queues[COORDINATOR_QUEUE] = ""
        depth = GaugeMetricFamily(
            "buddy_queue_depth",
            "Messages waiting in a Celery queue (LLEN, summed over its priority lists).",
            labels=["queue", "agent"],
        )
        for q, n in queue_depths(self.broker, list(queues)).items():
            depth.add_metric([q, queues[q]], float(n))
        yield depth
        unacked = GaugeMetricFamily(
            "buddy_unacked_messages", "Messages delivered to a worker and not yet acknowledged (kombu)."
        )
        unacked.add_metric([], float(self.broker.hlen(UNACKED_KEY)))
        yield unacked

        # workers serve no /metrics: they count refused messages in Redis, read here
        by_reason, kept = deadletter.stats(self.store.r)
        refused = CounterMetricFamily(
            "buddy_deadletter",
            "Messages workers refused (undecodable, invalid...) and dead-lettered, by reason.",
            labels=["reason"],
        )
        for reason, n in sorted(by_reason.items()):
            refused.add_metric([reason], float(n))
        yield refused
        dead = GaugeMetricFamily(
            "buddy_deadletter_messages", "Dead letters kept in buddy:deadletter (buddy deadletter list)."
        )
        dead.add_metric([], float(kept))
        yield dead

        live = GaugeMetricFamily(
            "buddy_agent_live_workers", "Workers of the agent with a fresh heartbeat.", labels=["agent"]
        )
        age = GaugeMetricFamily(
            "buddy_agent_heartbeat_age_seconds",
            "Seconds since the newest heartbeat of any worker of the agent.",
            labels=["agent"],
        )
        in_flight = GaugeMetricFamily(
            "buddy_agent_in_flight", "Tasks running on the agent's workers.", labels=["agent"]
        )
        processed = CounterMetricFamily(
            "buddy_agent_processed", "Tasks the agent's workers finished.", labels=["agent"]
        )
        failed = CounterMetricFamily(
            "buddy_agent_failed", "Tasks of the agent's workers that did not succeed.", labels=["agent"]
        )
        for a in agents:
            info = self.store.agent_info(a, now)
            live.add_metric([a], float(len(info.live_workers)))
            if info.heartbeat_age_s is not None:
                age.add_metric([a], max(0.0, info.heartbeat_age_s))
            in_flight.add_metric([a], float(info.in_flight))
            processed.add_metric([a], float(info.processed))
            failed.add_metric([a], float(info.failed))
        yield from (live, age, in_flight, processed, failed)

        locked = GaugeMetricFamily(
            "buddy_system_locked",
            "1 while the system lock is set (buddy lock, or the monitor's unsafe_escalation): "
            "no task starts live and live campaigns are paused.",
        )
        locked.add_metric([], 1.0 if self.store.system_lock() is not None else 0.0)
        yield locked


def error_budget(failures: int, max_failures: int | None) -> float:
    """Fraction 0–1 of the allowed failures left: ``(max_failures - failures) / max_failures``.

    The campaign aborts when failures exceed ``max_failures``; with no limit the budget is 1,
    with a limit of 0 it is 1 until the first failure, then 0.
    """
    if max_failures is None:
        return 1.0
    if max_failures <= 0:
        return 1.0 if failures <= 0 else 0.0
    return min(1.0, max(0.0, (max_failures - failures) / max_failures))


class CampaignMetrics:
    """The coordinator's metrics, in a private registry (``registry``).

    ``fleet`` (a :class:`FleetCollector`) is registered in the same registry so that one
    endpoint serves both. Outcome counters start at 0 for every final status, so ``rate()``
    works from the first scrape.
    """

    def __init__(
        self, fleet: FleetCollector | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.tasks = Counter(
            "buddy_tasks", "Final outcomes of the campaign, by status.", ["status"], registry=r
        )
        for s in sorted(FINAL_STATUSES):
            self.tasks.labels(status=s.value)
        self.planned = Gauge("buddy_campaign_tasks_planned", "Tasks in the campaign's plan.", registry=r)
        self.info = Gauge(
            "buddy_campaign_info", "1 for the running campaign.", ["campaign", "mode"], registry=r
        )
        self.current_wave = Gauge(
            "buddy_current_wave", "The wave being run (0 before the first).", registry=r
        )
        self.wave_health = Gauge(
            "buddy_wave_health", "Health of a finished wave, 0-100.", ["wave"], registry=r
        )
        self.error_budget = Gauge(
            "buddy_error_budget_remaining", "Fraction 0-1 of the allowed failures still left.", registry=r
        )
        self.error_budget.set(1.0)
        self.lease_contention = Counter(
            "buddy_lease_contention", "Lease tries that found the resource held by another task.", registry=r
        )
        self.paused = Gauge(
            "buddy_campaign_paused",
            "1 while the campaign is paused, by why (lock: the system lock; operator: buddy pause).",
            ["kind"],
            registry=r,
        )
        for kind in ("lock", "operator"):
            self.paused.labels(kind=kind)
        self.paused_seconds = Counter(
            "buddy_campaign_paused_seconds", "Seconds the campaign spent paused (ended pauses).", registry=r
        )
        self.fleet = fleet
        if fleet is not None:
            r.register(fleet)

    def set_campaign(self, campaign_id: str, tasks: int, mode: str = "") -> None:
        """Name the running campaign and its size."""
        self.info.labels(campaign=campaign_id, mode=mode).set(1)
        self.planned.set(tasks)

    def observe_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        """Count final outcomes by status (call once per outcome, e.g. per finished wave)."""
        for o in outcomes:
            self.tasks.labels(status=o.status.value).inc()

    def set_current_wave(self, n: int) -> None:
        self.current_wave.set(n)

    def set_wave_health(self, wave: int, value: float) -> None:
        """The monitor's health score of ``wave``, 0–100 (clamped)."""
        self.wave_health.labels(wave=str(wave)).set(min(100.0, max(0.0, float(value))))

    def set_error_budget(self, fraction: float) -> None:
        """Fraction 0–1 of the allowed failures left (clamped); see :func:`error_budget`."""
        self.error_budget.set(min(1.0, max(0.0, float(fraction))))

    def set_paused(self, kind: str, paused: bool, seconds: float = 0.0) -> None:
        """The campaign paused (``paused``) or went on after ``seconds`` paused, for ``kind``
        (``lock`` or ``operator``)."""
        self.paused.labels(kind=kind).set(1.0 if paused else 0.0)
        if not paused and seconds > 0:
            self.paused_seconds.inc(seconds)

    def inc_lease_contention(self, n: int = 1) -> None:
        """Add ``n`` (≥ 0) lease tries that found their resource held."""
        if n > 0:
            self.lease_contention.inc(n)


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint (a daemon thread); :meth:`stop` ends it."""

    server: WSGIServer
    thread: threading.Thread
    address: str

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` on ``http://addr:port/metrics`` in a daemon thread (port 0: any free port).

    Raises OSError when the port is taken.
    """
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return MetricsServer(server=server, thread=thread, address=addr)
