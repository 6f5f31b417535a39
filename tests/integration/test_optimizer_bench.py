"""A tiny run of the optimizer benchmark so it never rots (speed goals live in the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import optimizer

pytestmark = pytest.mark.integration


def test_optimizer_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "optimizer.json"
    result = optimizer.main(
        ["--waves", "2", "--tasks", "24", "--seconds", "0.01",
         "--cap-waves", "2", "--cap-tasks", "26", "--cap-seconds", "0.01", "--out", str(out)]
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert saved["goals"].keys() == result["goals"].keys()
    assert (
        any(k.startswith("capacity:") for k in saved["goals"])
        and "adaptive wall <= 0.7 x static" in saved["goals"]
    )
    for scenario, n in ((saved, 48), (saved["capacity"], 52)):
        for run in ("static", "adaptive"):
            r = scenario[run]
            assert r["wall_s"] > 0 and len(r["wave_wall_s"]) == 2
            assert sum(r["tasks_per_agent"].values()) == n
            assert 0 < r["success_rate"] <= 1
    assert saved["static"]["tasks_per_agent"] == {"a1": 16, "a2": 16, "a3": 16}  # static: round robin
    cap = saved["capacity"]
    assert cap["static"]["tasks_per_agent"] == {"a1": 18, "a2": 18, "a3": 16}  # 9 / 9 / 8 a wave
    assert cap["ideal_makespan_s"] == pytest.approx(26 * 0.01 / 13 + 0.01)
    # the adaptive run's first wave is already split by the slots the workers report (8 / 1 / 4)
    first = cap["adaptive"]["wave_tasks_per_agent"][0]
    assert first["a1"] > first["a3"] > first["a2"]
