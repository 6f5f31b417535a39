"""Fixtures of the coordinator tests: a fake clock, a recording hook, plans built in memory,
and a real Celery worker in a thread (Celery's ``start_worker``) on the session's private Redis.

The in-thread worker runs :mod:`workers`' tasks with the solo pool. It does not fire
``worker_ready`` (only the CLI worker does), so :mod:`workers.heartbeat` never beats for
it: the fixtures write the agents' heartbeats themselves through :meth:`Store.heartbeat`,
which is what :class:`~buddy.coordinator.fleet_view.FleetView` reads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from buddy.config import get_settings
from buddy.coordinator.loop import Coordinator
from buddy.coordinator.options import CampaignOptions
from buddy.coordinator.result import CampaignResult
from buddy.infra.transport import celery_url, make_dispatcher, redis_client
from buddy.models import AgentSpec
from buddy.outputs import report_html
from buddy.plan.build import CampaignPlan, build_plan
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry, default_registry

AGENTS = ("a1", "a2")
#: The queues the in-thread worker consumes: every agent's and the chord bodies'.
QUEUES = [*(f"buddy.agent.{a}" for a in AGENTS), "buddy.coordinator"]
WORKER = "inthread@test"


class FakeClock:
    """A :class:`~buddy.coordinator.options.Clock` whose time moves only when slept.

    ``sleep`` records the seconds, advances ``now`` by them and then calls each of
    ``on_sleep`` with the new time (an "operator" acting while the coordinator waits)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[float], None]] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        for call in self.on_sleep:
            call(self.now)


class Recorder:
    """A hook that records each call as ``(name, wave)``, ``on_*`` calls apart."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self.approvals: list[tuple[int, int, int]] = []
        self.reports: list[Any] = []
        self.results: list[CampaignResult] = []

    def before_campaign(self, ctx: Any) -> None:
        self.calls.append(("before_campaign", ctx.wave))

    def before_wave(self, ctx: Any) -> None:
        self.calls.append(("before_wave", ctx.wave))

    def on_approvals(self, ctx: Any, waiting: int, approved: int, denied: int) -> None:
        self.approvals.append((waiting, approved, denied))

    def after_wave(self, ctx: Any, report: Any) -> None:
        self.calls.append(("after_wave", ctx.wave))
        self.reports.append(report)

    def after_campaign(self, ctx: Any, result: CampaignResult) -> None:
        self.calls.append(("after_campaign", ctx.wave))
        self.results.append(result)


@dataclasses.dataclass
class Fleet:
    """What a coordinator test runs against: the private Redis, a store on it, the
    coordinator's Celery app and the tool registry."""

    url: str
    store: Store
    dispatcher: Celery
    registry: ToolRegistry

    def beat(self, agents: tuple[str, ...] = AGENTS) -> None:
        """Heartbeat ``agents`` as served by the in-thread worker."""
        self.store.heartbeat(WORKER, agents)

    def plan(self, lines: list[dict[str, Any]], workdir: Path) -> CampaignPlan:
        """A plan of ``lines`` on agents a1 and a2 (round robin), written as a JSONL file."""
        path = workdir / "plan.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return build_plan(path, self.registry, [AgentSpec(id=a) for a in AGENTS], workdir=workdir)

    def run(
        self, plan: CampaignPlan, options: CampaignOptions, **kw: Any
    ) -> tuple[Coordinator, CampaignResult]:
        c = Coordinator(plan, self.store, self.dispatcher, self.registry, options, **kw)
        return c, c.run()


def options(tmp_path: Path, **kw: Any) -> CampaignOptions:
    """Options of a test campaign: outputs in ``tmp_path/out``, no progress bar, a short worker
    wait, and no optimizer (it may move wave 2's tasks by wave 1's timings: not deterministic)."""
    base: dict[str, Any] = {
        "workdir": tmp_path,
        "out_dir": tmp_path / "out",
        "progress": False,
        "worker_wait_s": 2.0,
        "optimize": False,
    }
    return CampaignOptions(**(base | kw))


@pytest.fixture
def fleet(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """The private Redis as ``BUDDY_REDIS_URL`` (set before any store or app reads settings),
    a store and a dispatcher on it. No worker: see :func:`worker`.

    ``report.html`` is written without its charts: drawing them with matplotlib takes seconds
    and is the report's own tests' business."""
    for chart in ("health_chart", "throughput_chart", "_latency_uri"):
        monkeypatch.setattr(report_html, chart, lambda *a, **k: None)
    monkeypatch.setenv("BUDDY_REDIS_URL", redis_url)
    get_settings.cache_clear()
    store = Store(redis_client(redis_url), events_maxlen=1000, stale_s=10.0)
    yield Fleet(redis_url, store, make_dispatcher(redis_url), default_registry([]))


@pytest.fixture
def worker(fleet: Fleet) -> Iterator[Fleet]:
    """:func:`fleet` with a real worker of :mod:`workers` in a thread, consuming a1, a2 and
    the coordinator's queue, and its heartbeats written for a1 and a2."""
    from celery.contrib.testing.worker import start_worker

    import workers  # registers the tasks and signal handlers
    from workers import tasks
    from workers.app import app

    # workers.app built its app at import, from whatever settings the process had then:
    # point it at this test's Redis, and drop the per-process store and executors.
    url = celery_url(fleet.url)
    app.conf.broker_url = url
    app.conf.result_backend = url
    app._pool = None  # a pool of an earlier broker URL, if any
    vars(app._local).pop("backend", None)  # likewise this thread's result backend
    tasks.store.cache_clear()
    tasks.executor.cache_clear()
    assert workers.app is app
    try:
        with start_worker(
            app, pool="solo", perform_ping_check=False, queues=QUEUES, hostname=WORKER, shutdown_timeout=20
        ):
            fleet.beat()
            yield fleet
    finally:
        tasks.store.cache_clear()
        tasks.executor.cache_clear()
