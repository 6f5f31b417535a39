"""Crash recovery end to end: a worker killed mid-wave, the coordinator killed and resumed,
Redis restarted under a campaign. Nothing is lost and no irreversible effect happens twice.

Campaigns whose coordinator survives run in-process (``buddy.Campaign``, ``buddy.resume``);
killing the coordinator with SIGKILL needs a process of its own, so that test drives the
CLI (``buddy run``, then ``buddy resume``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import buddy
from buddy.config import get_settings
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.models import AgentSpec
from tests.helpers import buddy as cli
from tests.helpers import private_redis, start_redis, wait_for_workers
from tests.integration.test_campaign import assert_matches_files, executed, in_background, write_plan

pytestmark = pytest.mark.integration

FAST = {"BUDDY_VISIBILITY_TIMEOUT_S": "12", "BUDDY_HEARTBEAT_STALE_S": "6"}


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FAST timeouts for an in-process coordinator too."""
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    env.update(FAST)
    return env


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "buddy", "run", *args, "--no-progress"],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _ledger_plan(tmp_path: Path, ledger: Path, waves: int, per_wave: int, pause_s: float) -> Path:
    """Per wave: pairs of (sleep, file.append of a unique line); each wave after the previous."""
    lines: list[dict[str, Any]] = []
    for w in range(1, waves + 1):
        for i in range(per_wave):
            lines.append(
                {"task_id": f"w{w}-sleep{i}", "tool": "sleep", "wave": w, "args": {"seconds": pause_s}}
            )
            lines.append(
                {"task_id": f"w{w}-append{i}", "tool": "file.append", "wave": w,
                 "args": {"path": str(ledger), "line": f"wave {w} line {i}"}}
            )  # fmt: skip
    return write_plan(tmp_path / "plan.jsonl", lines)


def _check_ledger(ledger: Path, rows: dict[str, dict[str, Any]]) -> None:
    counts = Counter(_lines(ledger))
    assert all(n == 1 for n in counts.values()), f"a line was appended twice: {counts.most_common(3)}"
    for tid, row in rows.items():
        if "append" not in tid:
            continue
        line = row.get("_line")
        assert row["status"] in ("succeeded", "needs_review", "lost"), row
        if row["status"] == "succeeded":
            assert line is None or counts[line] == 1


def test_worker_killed_mid_wave(tmp_path: Path, fast: None) -> None:
    ledger = tmp_path / "ledger.txt"
    plan = _ledger_plan(tmp_path, ledger, waves=1, per_wave=8, pause_s=0.3)
    with private_redis() as redis_server:
        first = LocalFleet(
            redis_server.url, [AgentSpec(id="a1", concurrency=1)], env=FAST, log_dir=tmp_path / "l1"
        )
        first.start()
        second: LocalFleet | None = None
        try:
            wait_for_workers(redis_server.url, ["a1"])
            campaign = buddy.Campaign.from_file(
                plan, agents=["a1"], mode="live", redis_url=redis_server.url, out_dir=tmp_path / "out",
                batch_size=1, wave_timeout=40, local_workers=0,
            )  # fmt: skip
            with in_background(campaign) as running:
                _wait_for(lambda: len(_lines(ledger)) >= 2 or running.done(), 60, "two appends")
                assert not running.done(), running.result()
                os.killpg(first.procs[0].pid, signal.SIGKILL)  # the worker and its pool children, mid-wave
                second = LocalFleet(
                    redis_server.url, [AgentSpec(id="a1", concurrency=1)], env=FAST, log_dir=tmp_path / "l2"
                )
                second.start()
                result = running.result(timeout=180)
        finally:
            first.stop()
            if second is not None:
                second.stop()
    assert result.exit_code in (0, 1), result.summary
    rows = assert_matches_files(result)
    assert len(rows) == 16  # every task has a final outcome
    _check_ledger(ledger, rows)
    statuses = Counter(r["status"] for r in rows.values())
    # needs_review: killed mid-append; lost: SIGKILL between kombu's BRPOP and its unacked
    # bookkeeping drops the message itself, so only the wave deadline can speak for it
    assert set(statuses) <= {"succeeded", "needs_review", "lost"}, statuses
    assert statuses["succeeded"] >= 12
    done = [r for t, r in rows.items() if "append" in t and r["status"] == "succeeded"]
    assert len(_lines(ledger)) >= len(done)
    # the tasks the killed worker never started ran on the new worker
    assert any(r["worker"] and r["worker"].startswith("a1-1-") for r in rows.values())


def test_coordinator_killed_and_resumed(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    plan = _ledger_plan(tmp_path, ledger, waves=3, per_wave=4, pause_s=0.4)
    out = tmp_path / "out"
    with private_redis() as redis_server:
        fleet = LocalFleet(
            redis_server.url, [AgentSpec(id="a1"), AgentSpec(id="a2")], env=FAST, log_dir=tmp_path / "l"
        )
        fleet.start()
        try:
            wait_for_workers(redis_server.url, ["a1", "a2"])
            proc = _run(str(plan), "--agents", "a1,a2", "--mode", "live", "--redis-url", redis_server.url,
                        "--out", str(out), "--local-workers", "0")  # fmt: skip
            _wait_for(lambda: (out / "wave_2").exists(), 60, "wave 2")
            proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup, no summary
            proc.wait(timeout=10)
            cid = json.loads((out / "campaign.json").read_text())["campaign_id"]
            assert not (out / "execution_summary.json").exists()
            res = cli("resume", cid, "--plan", str(plan), "--redis-url", redis_server.url, "--no-progress",
                        env=FAST, timeout=180)  # fmt: skip
        finally:
            fleet.stop()
    assert res.returncode == 0, res.stderr
    rows = executed(out)
    assert len(rows) == 24 and {r["status"] for r in rows.values()} == {"succeeded"}
    assert sorted(_lines(ledger)) == sorted(f"wave {w} line {i}" for w in (1, 2, 3) for i in range(4))
    summary = json.loads((out / "execution_summary.json").read_text())
    assert summary["status"] == "succeeded" and summary["counts"]["total"] == 24
    log = [json.loads(x)["task_id"] for x in (out / "tool_execution_log.jsonl").read_text().splitlines()]
    assert Counter(log) == Counter({t: 1 for t in rows})  # the rebuilt tool log has each attempt once


def test_resume_refuses_another_plan_and_a_finished_campaign(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.jsonl", [{"task_id": "t", "tool": "noop"}])
    other = write_plan(tmp_path / "other.jsonl", [{"task_id": "u", "tool": "noop"}])
    with buddy.Fleet([AgentSpec(id="a1")], log_dir=tmp_path / "l") as fleet:
        result = buddy.Campaign.from_file(plan, agents=["a1"], fleet=fleet, out_dir=tmp_path / "out").run()
        assert result.status == "succeeded", result.summary
        with pytest.raises(buddy.ConfigError, match="already finished"):
            buddy.resume(result.campaign_id, plan=plan, redis_url=fleet.url)
        key = f"buddy:campaign:{result.campaign_id}"
        fleet.store().r.hset(key, "status", "running")  # pretend it died
        with pytest.raises(buddy.PlanError, match="does not match") as e:
            buddy.resume(result.campaign_id, plan=other, redis_url=fleet.url)
        assert e.value.errors and str(other) in str(e.value)
        with pytest.raises(buddy.ConfigError, match="no campaign 'nope'"):
            buddy.resume("nope", plan=plan, redis_url=fleet.url)


def test_redis_restarted_mid_campaign(tmp_path: Path, fast: None) -> None:
    ledger = tmp_path / "ledger.txt"
    plan = _ledger_plan(tmp_path, ledger, waves=2, per_wave=6, pause_s=0.5)
    out = tmp_path / "out"
    data = tmp_path / "redis"
    data.mkdir()
    redis_server = start_redis(appendonly=True, directory=data)
    fleet = LocalFleet(
        redis_server.url, [AgentSpec(id="a1"), AgentSpec(id="a2")], env=FAST, log_dir=tmp_path / "l"
    )
    fleet.start()
    try:
        wait_for_workers(redis_server.url, ["a1", "a2"])
        campaign = buddy.Campaign.from_file(
            plan, agents=["a1", "a2"], mode="live", redis_url=redis_server.url, out_dir=out, local_workers=0,
            wave_timeout=40,
        )  # fmt: skip
        with in_background(campaign) as running:
            _wait_for(lambda: len(_lines(ledger)) >= 2 or running.done(), 60, "two appends")
            assert not running.done(), running.result()
            redis_server.stop()  # SIGTERM: Redis writes its AOF and exits
            time.sleep(2)
            redis_server = EmbeddedRedis(appendonly=True, directory=data).start()
            result = running.result(timeout=240)
    finally:
        fleet.stop()
        redis_server.stop()
    assert result.exit_code in (0, 1), result.summary
    rows = assert_matches_files(result)
    assert len(rows) == 24, result.summary
    # a message caught in the restart ends lost (no outcome by the wave deadline) or
    # needs_review: explicit, with the reason, for `buddy review`; never silently missing
    assert {r["status"] for r in rows.values()} <= {"succeeded", "needs_review", "lost"}
    for r in rows.values():
        if r["status"] != "succeeded":
            assert r["error_type"] and r["error_msg"], r
    _check_ledger(ledger, rows)
