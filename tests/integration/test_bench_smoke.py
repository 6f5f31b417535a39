"""Smoke run of the throughput benchmark (``python -m benchmarks.throughput --quick``).

Tiny sizes, real Redis and real workers: checks that every run happens and every number the
report promises is there and sensible. Speed goals are for the benchmark itself, not for a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import redis_server_path

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

RUN_FIELDS = ("tasks", "wall_s", "tasks_per_s", "redis_cmds", "redis_cmds_per_task")


def test_quick_benchmark_reports_every_measurement(tmp_path: Path) -> None:
    redis_server_path()
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.throughput", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # 0: every goal met, 1: some missed (tiny sizes say nothing about speed); anything else is a crash
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    r = json.loads(out.read_text())

    assert r["machine"]["nproc"] >= 1 and r["machine"]["python"] and r["machine"]["redis"]
    for name in ("raw_chord", "buddy_noop", "buddy_waves", "buddy_io"):
        for f in RUN_FIELDS:
            assert r[name][f] > 0, (name, f)
        assert set(r[name]["cpu_ms_per_task"]) == {"workers", "redis", "coordinator"}
        assert sum(r[name]["redis_by_command"].values()) == r[name]["redis_cmds"]
    assert r["raw_chord"]["tasks"] == r["buddy_noop"]["tasks"] == 40
    assert r["ratio"] > 0
    assert r["buddy_noop"]["messages"] >= 1
    assert r["idle_redis_cmds_per_s"] >= 0
    assert len(r["fleet_a_processes"]) == 3 and min(r["fleet_a_processes"]) >= 4

    waves = r["buddy_waves"]
    assert waves["waves"] == 3 and waves["tasks"] == 3 * waves["tasks_per_wave"]
    for f in ("turnaround_ms", "outcome_to_finished_ms", "finished_to_dispatched_ms"):
        assert len(waves[f]["values"]) == waves["waves"] - 1
    assert waves["turnaround_ms"]["median"] > 0

    io = r["buddy_io"]
    assert io["slots"] == 4 * 8 and io["ideal_s"] > 0
    assert 0 < io["share_of_ideal"] <= io["to_last_outcome_share"] <= io["exec_share"]
    assert min(io["fleet_b_processes"]) >= 4

    (plan,) = r["planning"]["sizes"]
    assert plan["tasks"] == 200 and plan["waves"] >= 1
    assert plan["seconds"] > 0 and plan["peak_rss_mb"] > 0 and plan["delta_rss_mb"] >= 0
    assert plan["peak_rss_mb"] >= plan["baseline_rss_mb"]
    assert len(plan["all_runs"]) >= 5 and plan["seconds"] == min(plan["all_runs"])  # the fastest counts

    names = {g["name"] for g in r["goals"]}
    assert any("Buddy / raw chord" in n for n in names) and any("turnaround" in n for n in names)
    assert all(isinstance(g["pass"], bool) for g in r["goals"])
    (conc,) = [g for g in r["goals"] if "ideal concurrency" in g["name"]]
    assert conc["value"] == io["to_last_outcome_share"]
