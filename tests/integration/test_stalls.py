"""A killed worker does not hold a wave until its deadline: its tasks are sent again.

Default timeouts (visibility timeout 7200 s, heartbeats stale after 10 s): before stall
detection a worker killed with SIGKILL held a 30-task campaign for 510 s.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.models import AgentSpec
from buddy.state.store import Store
from tests.integration.conftest import wait_for_workers
from tests.integration.test_campaign import executed
from tests.integration.test_recovery import _ledger_plan, _lines, _wait_for

pytestmark = pytest.mark.integration


def _running_sleep(url: str) -> bool:
    """Whether some sleep task is claimed and running, with no outcome yet."""
    r = redis_client(url)
    for key in r.scan_iter(match="buddy:campaign:*:claim:*sleep*"):
        cid, tid = key.decode().split(":")[2], key.decode().rsplit(":", 1)[1]
        if b'"state":"running"' in (r.get(key) or b"") and not r.hexists(
            f"buddy:campaign:{cid}:outcomes", tid
        ):
            return True
    return False


def test_a_killed_worker_is_noticed_and_its_tasks_sent_again(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    plan = _ledger_plan(tmp_path, ledger, waves=1, per_wave=6, pause_s=2.0)
    with EmbeddedRedis() as redis_server:
        first = LocalFleet(redis_server.url, [AgentSpec(id="a1", concurrency=1)], log_dir=tmp_path / "l1")
        first.start()
        second: LocalFleet | None = None
        try:
            wait_for_workers(redis_server.url, ["a1"])
            out = tmp_path / "out"
            env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
            proc = subprocess.Popen(
                [sys.executable, "-m", "buddy", "run", str(plan), "--agents", "a1", "--mode", "live",
                 "--redis-url", redis_server.url, "--out", str(out), "--batch-size", "4",
                 "--wave-timeout", "600", "--local-workers", "0", "--no-progress"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            _wait_for(lambda: len(_lines(ledger)) >= 1, 60, "an append")
            _wait_for(lambda: _running_sleep(redis_server.url), 60, "a sleep task running")
            os.killpg(first.procs[0].pid, signal.SIGKILL)  # the worker and its children: nothing requeues
            killed_at = time.monotonic()
            second = LocalFleet(
                redis_server.url, [AgentSpec(id="a1", concurrency=1)], log_dir=tmp_path / "l2"
            )
            second.start()
            _, stderr = proc.communicate(timeout=240)
            waited = time.monotonic() - killed_at
            events = Store(redis_client(redis_server.url)).events(
                json.loads((out / "campaign.json").read_text())["campaign_id"], 500
            )
        finally:
            first.stop()
            if second is not None:
                second.stop()
    assert proc.returncode in (0, 1), stderr
    rows = executed(out)
    assert len(rows) == 12
    counts = Counter(_lines(ledger))
    assert all(n == 1 for n in counts.values()), counts
    statuses = Counter(r["status"] for r in rows.values())
    assert set(statuses) <= {"succeeded", "needs_review"}, statuses  # nothing left to the deadline
    assert "wave_deadline" not in {e["type"] for e in events}
    resent = [e for e in events if e["type"] == "tasks_resent"]
    assert resent, [e["type"] for e in events]
    assert waited < 300  # far below the 600 s wave deadline and the 7200 s visibility timeout
