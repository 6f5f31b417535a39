"""Learning between waves with real workers: an agent whose only worker dies gets none of the
next wave's tasks, and every learning output is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.models import AgentSpec
from tests.integration.conftest import wait_for_workers
from tests.integration.test_campaign import executed, write_plan

pytestmark = pytest.mark.integration

QUICK = {"BUDDY_HEARTBEAT_STALE_S": "3"}


def test_next_wave_avoids_an_agent_whose_only_worker_died(tmp_path: Path) -> None:
    lines = [
        {"task_id": f"w1-{i}", "tool": "sleep", "wave": 1, "agent": "a1", "args": {"seconds": 1.5}}
        for i in range(2)
    ]
    lines += [{"task_id": f"w2-{i}", "tool": "noop", "wave": 2} for i in range(6)]
    plan = write_plan(tmp_path / "plan.jsonl", lines)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")} | QUICK
    with EmbeddedRedis() as redis_server:
        a1 = LocalFleet(redis_server.url, [AgentSpec(id="a1")], env=QUICK, log_dir=tmp_path / "l1").start()
        a2 = LocalFleet(redis_server.url, [AgentSpec(id="a2")], env=QUICK, log_dir=tmp_path / "l2").start()
        try:
            wait_for_workers(redis_server.url, ["a1", "a2"])
            proc = subprocess.Popen(
                [sys.executable, "-m", "buddy", "run", str(plan), "--agents", "a1,a2", "--mode", "live",
                 "--redis-url", redis_server.url, "--out", str(out), "--local-workers", "0", "--no-progress"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while not (out / "wave_1").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(a2.procs[0].pid, signal.SIGKILL)  # a2's only worker dies during wave 1
            _, stderr = proc.communicate(timeout=120)
        finally:
            a1.stop()
            a2.stop()
    assert proc.returncode == 0, stderr
    rows = executed(out)
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
    health = json.loads((out / "system_health.json").read_text())
    assert 0 <= health["health"]["score"] <= 100
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
    plan = write_plan(tmp_path / "plan.jsonl", lines)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "buddy", "run", str(plan), "--redis-url", fleet_redis.url, "--out", str(out),
         "--mode", "live", "--min-health", "90", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    summary = json.loads((out / "execution_summary.json").read_text())
    assert summary["status"] == "aborted" and summary["abort_reason"].startswith("min_health: wave 1")
    assert "later" not in executed(out)
