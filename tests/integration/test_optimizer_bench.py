"""A tiny run of the optimizer benchmark so it never rots (speed goals live in the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import optimizer

pytestmark = pytest.mark.integration


def test_optimizer_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "optimizer.json"
    result = optimizer.main(["--waves", "2", "--tasks", "24", "--seconds", "0.01", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["goals"].keys() == result["goals"].keys()
    for run in ("static", "adaptive"):
        r = saved[run]
        assert r["wall_s"] > 0 and len(r["wave_wall_s"]) == 2
        assert sum(r["tasks_per_agent"].values()) == 48
        assert 0 < r["success_rate"] <= 1
    assert saved["static"]["tasks_per_agent"] == {"a1": 16, "a2": 16, "a3": 16}  # static: round robin
