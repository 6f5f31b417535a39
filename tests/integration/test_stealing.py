"""Work stealing on real workers: an agent that finished its share takes tasks still queued
for a busy agent; each task runs exactly once, pinned ones never move."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

import buddy
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.state.store import Store
from tests.integration.test_campaign import plan

pytestmark = pytest.mark.integration


def test_an_idle_agent_takes_the_queued_tail_of_a_busy_one(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger.txt"

    def line(tid: str, seconds: float, **extra: object) -> dict[str, object]:
        code = f"import time; time.sleep({seconds}); open({str(ledger)!r}, 'a').write({tid!r} + '\\n')"
        return {"task_id": tid, "tool": "shell", "args": {"argv": [sys.executable, "-c", code]}, **extra}

    # round robin: the even tasks (short) to a1, the odd ones (long) to a2; the shell tool states
    # no duration, so nothing at plan time knows a2's share is the long one
    lines = [line(f"t{i}", 0.05 if i % 2 == 0 else 1.5) for i in range(12)]
    lines.append(line("pinned", 1.5, agent="a2"))
    result = buddy.Campaign(
        plan(lines), mode="live", redis_url=fleet_redis.url, agents=["a1", "a2"], strategy="round_robin",
        out_dir=tmp_path / "out", auto_approve="HIGH",  # shell is HIGH risk
    ).run()  # fmt: skip
    assert result.exit_code == 0, result.summary
    ran = Counter(ledger.read_text().split())
    assert ran == Counter({o: 1 for o in result.outcomes}), ran  # every task ran exactly once
    stolen = [
        e["data"] for e in Store(redis_client(fleet_redis.url)).events(result.campaign_id, 1000)
        if e["type"] == "tasks_stolen"
    ]  # fmt: skip
    assert stolen and all(s["agent"] == "a1" and s["from_agents"] == ["a2"] for s in stolen), stolen
    moved = {t for s in stolen for t in s["tasks"]}
    assert "pinned" not in moved and result.outcomes["pinned"].agent_id == "a2"
    assert any(result.outcomes[t].agent_id == "a1" for t in moved)  # a stolen task ran where it was sent
