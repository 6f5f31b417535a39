"""A killed worker does not hold a wave until its deadline: its tasks are sent again.

Default timeouts (visibility timeout 7200 s, heartbeats stale after 10 s): before stall
detection a worker killed with SIGKILL held a 30-task campaign for 510 s.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

import buddy
from buddy.infra.fleet import LocalFleet
from buddy.infra.transport import redis_client
from buddy.models import AgentSpec
from buddy.state.store import Store
from tests.helpers import private_redis, wait_for_workers
from tests.integration.test_campaign import assert_matches_files, in_background
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
    with private_redis() as redis_server:
        first = LocalFleet(redis_server.url, [AgentSpec(id="a1", concurrency=1)], log_dir=tmp_path / "l1")
        first.start()
        second: LocalFleet | None = None
        try:
            wait_for_workers(redis_server.url, ["a1"])
            campaign = buddy.Campaign.from_file(
                plan, agents=["a1"], mode="live", redis_url=redis_server.url, out_dir=tmp_path / "out",
                batch_size=4, wave_timeout=600, local_workers=0,
            )  # fmt: skip
            with in_background(campaign) as running:
                _wait_for(lambda: len(_lines(ledger)) >= 1 or running.done(), 60, "an append")
                _wait_for(
                    lambda: _running_sleep(redis_server.url) or running.done(), 60, "a sleep task running"
                )
                assert not running.done(), running.result()
                os.killpg(first.procs[0].pid, signal.SIGKILL)  # the worker and its children: nothing requeues
                killed_at = time.monotonic()
                second = LocalFleet(
                    redis_server.url, [AgentSpec(id="a1", concurrency=1)], log_dir=tmp_path / "l2"
                )
                second.start()
                result = running.result(timeout=240)
            waited = time.monotonic() - killed_at
            events = Store(redis_client(redis_server.url)).events(result.campaign_id, 500)
        finally:
            first.stop()
            if second is not None:
                second.stop()
    assert result.exit_code in (0, 1), result.summary
    rows = assert_matches_files(result)
    assert len(rows) == 12 and result.tasks == 12
    counts = Counter(_lines(ledger))
    assert all(n == 1 for n in counts.values()), counts
    statuses = Counter(r["status"] for r in rows.values())
    assert set(statuses) <= {"succeeded", "needs_review"}, statuses  # nothing left to the deadline
    assert "wave_deadline" not in {e["type"] for e in events}
    resent = [e for e in events if e["type"] == "tasks_resent"]
    assert resent, [e["type"] for e in events]
    assert waited < 300  # far below the 600 s wave deadline and the 7200 s visibility timeout
