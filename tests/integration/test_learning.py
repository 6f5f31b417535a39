"""Learning between waves with real workers, through the Python API: an agent whose only
worker dies gets none of the next wave's tasks, every learning output is written, and
``min_health`` aborts."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import buddy
from buddy.config import get_settings
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.models import AgentSpec
from tests.helpers import private_redis, wait_for_workers
from tests.integration.test_campaign import assert_matches_files, executed, in_background, plan

pytestmark = pytest.mark.integration

QUICK = {"BUDDY_HEARTBEAT_STALE_S": "3"}


def test_next_wave_avoids_an_agent_whose_only_worker_died(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        # longer than the stale window (3 s): a2's death is known before wave 2 is planned
        {"task_id": f"w1-{i}", "tool": "sleep", "wave": 1, "agent": "a1", "args": {"seconds": 4.0}}
        for i in range(2)
    ]
    lines += [{"task_id": f"w2-{i}", "tool": "noop", "wave": 2} for i in range(6)]
    out = tmp_path / "out"
    for k, v in QUICK.items():  # the coordinator's settings too
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    with private_redis() as redis_server:
        a1 = LocalFleet(redis_server.url, [AgentSpec(id="a1")], env=QUICK, log_dir=tmp_path / "l1").start()
        a2 = LocalFleet(redis_server.url, [AgentSpec(id="a2")], env=QUICK, log_dir=tmp_path / "l2").start()
        try:
            wait_for_workers(redis_server.url, ["a1", "a2"])
            campaign = buddy.Campaign(
                plan(lines), agents=["a1", "a2"], mode="live", redis_url=redis_server.url, out_dir=out,
                local_workers=0,
            )  # fmt: skip
            with in_background(campaign) as running:
                deadline = time.monotonic() + 30
                while not (out / "wave_1").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
                os.killpg(a2.procs[0].pid, signal.SIGKILL)  # a2's only worker dies during wave 1
                result = running.result(timeout=120)
        finally:
            a1.stop()
            a2.stop()
    assert result.status == "succeeded" and result.exit_code == 0, result.summary
    rows = assert_matches_files(result)
    assert {o.agent_id for t, o in result.outcomes.items() if t.startswith("w2-")} == {"a1"}
    wave2 = [r for t, r in rows.items() if t.startswith("w2-")]
    assert len(wave2) == 6 and {r["agent_id"] for r in wave2} == {"a1"}
    moved = [
        json.loads(x)
        for f in (out / "wave_2").glob("agent_*/adjusted_schedule.jsonl")
        for x in f.read_text().splitlines()
    ]
    assert moved and all(m["to_agent"] == "a1" for m in moved)
    # every learning output of the issue is there
    for name in (
        "metrics.jsonl",
        "anomalies.jsonl",
        "system_health.json",
        "learning_signals.jsonl",
        "report.html",
    ):
        assert (out / name).exists(), name
    for f in ("phase16/heuristic_feedback.jsonl", "phase18/coordination_feedback.jsonl",
              "phase20/prediction_validation_feedback.jsonl"):  # fmt: skip
        assert (out / "feedback" / f).exists(), f
    assert (out / "wave_1" / "agent_a1" / "agent_metrics.jsonl").exists()
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["wave"] for m in metrics] == [1, 2]
    assert [w.summary.wave for w in result.waves] == [1, 2]
    health = json.loads((out / "system_health.json").read_text())
    assert 0 <= health["health"]["score"] <= 100
    assert result.health is not None and result.health.score == pytest.approx(health["health"]["score"])
    assert health["health"]["status"] in ("EXCELLENT", "GOOD", "FAIR", "POOR")
    html = (out / "report.html").read_text()
    assert "<img" in html and "http://" not in html and "https://" not in html
    assert "What the optimizer changed and why" in (out / "report.md").read_text()


def test_min_health_aborts_with_exit_3(fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path) -> None:
    lines = [
        {"task_id": f"bad{i}", "tool": "file.sha256", "args": {"path": str(tmp_path / "missing")}}
        for i in range(4)
    ]
    lines.append({"task_id": "later", "tool": "noop", "wave": 2})
    out = tmp_path / "out"
    result = buddy.Campaign(
        plan(lines), redis_url=fleet_redis.url, out_dir=out, mode="live", min_health=90
    ).run()
    assert result.status == "aborted" and result.exit_code == 3, result.summary
    assert result.abort_reason and result.abort_reason.startswith("min_health: wave 1")
    assert "later" not in result.outcomes and len(result.outcomes) == 4
    assert result.health is not None and result.health.score < 90
    summary = json.loads((out / "execution_summary.json").read_text())
    assert summary["status"] == "aborted" and summary["abort_reason"].startswith("min_health: wave 1")
    assert "later" not in executed(out)
