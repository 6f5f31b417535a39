"""A wave's deadline is read from the injected clock: members without an outcome when it passes
are returned as missing, the wave is marked failed (its chord body will not report) and the
event is recorded; a complete wave returns at once. On fakeredis and a real Redis."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery import Celery
from rich.console import Console

from buddy.config import get_settings
from buddy.coordinator.fleet_view import FleetView
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.options import CampaignOptions
from buddy.coordinator.sending import WaveDispatch, WaveSender
from buddy.models import AgentSpec, Mode, Outcome, Strategy, TaskStatus
from buddy.plan.model import CampaignPlan
from buddy.state.store import Store
from buddy.tools.registry import default_registry

CID = "c-deadline"


class TickingClock:
    """Every reading advances ``tick`` seconds: a loop that polls sees its deadline pass
    after a few readings, without anyone sleeping for it."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Progress:
    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_progress(self, ctx: Any, done: int, failed: int, running: int) -> None:
        self.seen.append((done, failed, running))


def _sender(store: Store, clock: TickingClock, hooks: list[Any]) -> WaveSender:
    plan = CampaignPlan(
        path=Path("<tasks>"),
        digest="d",
        tasks={},
        waves={1: []},
        agents=[AgentSpec(id="a1")],
        strategy=Strategy.ROUND_ROBIN,
    )
    ctx = CampaignContext(CID, plan, CampaignOptions(mode=Mode.MOCK), store)
    app = Celery("deadline-test", broker="memory://", backend="cache+memory://")
    console = Console(quiet=True)
    fleet = FleetView(plan, store, clock, console)
    return WaveSender(
        ctx, app, default_registry([]), fleet, HookRunner(hooks), clock, console, get_settings()
    )


def _outcome(tid: str) -> Outcome:
    now = datetime.now(UTC)
    return Outcome(
        task_id=tid,
        campaign_id=CID,
        agent_id="a1",
        wave=1,
        status=TaskStatus.SUCCEEDED,
        mode=Mode.MOCK,
        attempts=1,
        start_time=now,
        end_time=now,
        tool="file.sha256",
        worker="w1",
    )


def test_the_deadline_passes_by_the_clock_and_names_the_missing(store: Store) -> None:
    store.create_campaign(CID, {"status": "running"})
    store.start_wave(CID, 1, dispatched=2)
    store.record_outcomes([_outcome("t1")])
    progress = Progress()
    sender = _sender(store, TickingClock(tick=10.0), [progress])
    sending = WaveDispatch(
        token="tok", chord_id="no-such-chord", ids=["t1", "t2"], baseline=0, deadline_s=30.0
    )

    started = time.monotonic()
    missing = sender.wait(1, sending)

    assert missing == {"t2"}
    assert sending.failed is True and sending.reported is False
    assert progress.seen and progress.seen[-1][0] == 1  # one of two done when the deadline passed
    assert [e["type"] for e in store.events(CID)].count("wave_deadline") == 1
    assert time.monotonic() - started < 5.0  # 30 s of wave deadline, read from the clock


def test_a_complete_wave_returns_before_its_deadline(store: Store) -> None:
    store.create_campaign(CID, {"status": "running"})
    store.start_wave(CID, 1, dispatched=2)
    store.record_outcomes([_outcome("t1"), _outcome("t2")])
    clock = TickingClock(tick=0.001)
    sending = WaveDispatch(
        token="tok", chord_id="no-such-chord", ids=["t1", "t2"], baseline=0, deadline_s=30.0
    )

    assert _sender(store, clock, []).wait(1, sending) == set()
    assert set(sending.raw) == {"t1", "t2"}
    assert "wave_deadline" not in [e["type"] for e in store.events(CID)]


def test_a_batch_message_carries_a_readable_shadow_name(store: Store) -> None:
    """Flower and the worker logs show the shadow name; the task that runs is unchanged."""
    sender = _sender(store, TickingClock(tick=1.0), [])
    items = [{"task_id": f"t{i}"} for i in range(12)]

    sig = sender._signature(2, "a1", items, "m-1")
    again = sender._signature(2, "a1", items[:1], "m-2", resent=True)

    assert sig.name == "buddy.execute_batch" and sig.options["queue"] == "buddy.agent.a1"
    assert sig.options["shadow"] == "buddy wave 2 · a1 · 12 tasks"
    assert again.options["shadow"] == "buddy wave 2 · a1 · 1 task · resent"
