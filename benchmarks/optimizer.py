"""Does the meta-optimizer help? Adaptive vs ``--no-optimize`` on a heterogeneous local fleet.

Usage: ``python -m benchmarks.optimizer [--waves 6] [--tasks 300] [--seconds 0.02] [--out optimizer.json]``

The fleet (all local, one private Redis, prefork pools):

- ``a1``: fast, concurrency 8;
- ``a2``: slow, concurrency 1;
- ``a3``: concurrency 4, with 40% of its attempts failing transiently
  (``buddy worker --inject-failure-rate 0.4``, a testing aid).

The plan: ``--waves`` waves of ``--tasks`` ``sleep`` tasks (``--seconds`` each), round-robin
assigned, run twice on the same fleet in one invocation: static (``--no-optimize``) and
adaptive. Goals (issue 5): adaptive wall time ≤ 0.7 × static; adaptive success rate ≥ static;
the adaptive run's waves 4–6 faster than its wave 1. Prints both runs side by side and writes
the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.models import AgentSpec
from buddy.state.store import Store

FLEET = {"a1": (8, 0.0), "a2": (1, 0.0), "a3": (4, 0.4)}  # agent -> (concurrency, injected failure rate)


def write_inputs(work: Path, waves: int, tasks: int, seconds: float) -> tuple[Path, Path]:
    plan = work / "plan.jsonl"
    with plan.open("w") as f:
        for w in range(1, waves + 1):
            for i in range(tasks):
                f.write(
                    json.dumps(
                        {
                            "task_id": f"w{w}-t{i}",
                            "tool": "sleep",
                            "wave": w,
                            "args": {"seconds": seconds},
                            "predicted_success": 0.9,
                            "confidence": 0.9,
                        }
                    )
                    + "\n"
                )
    config = work / "campaign.yaml"
    agents = "\n".join(f"  - id: {a}\n    concurrency: {c}" for a, (c, _) in FLEET.items())
    config.write_text(f"agents:\n{agents}\nstrategy: round_robin\nmode: live\n")
    return plan, config


def run_campaign(url: str, plan: Path, config: Path, out: Path, optimize: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    argv = [sys.executable, "-m", "buddy", "run", str(plan), "--config", str(config), "--redis-url", url,
            "--local-workers", "0", "--out", str(out), "--no-progress",
            "--optimize" if optimize else "--no-optimize"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"campaign failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads((out / "execution_summary.json").read_text())
    per_agent: dict[str, int] = {}
    for f in out.glob("wave_*/agent_*/executed_tasks.jsonl"):
        per_agent[f.parent.name[6:]] = per_agent.get(f.parent.name[6:], 0) + len(f.read_text().splitlines())
    counts = summary["counts"]
    return {
        "optimize": optimize,
        "wall_s": summary["wall_s"],
        "process_wall_s": wall,
        "success_rate": counts["by_status"].get("succeeded", 0) / max(1, counts["total"]),
        "wave_wall_s": [w["wall_s"] for w in summary["waves"]],
        "tasks_per_agent": dict(sorted(per_agent.items())),
        "health": summary.get("health"),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--waves", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=Path("optimizer.json"))
    args = ap.parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="buddy-bench-opt-"))
    plan, config = write_inputs(work, args.waves, args.tasks, args.seconds)
    fleets: list[LocalFleet] = []
    with EmbeddedRedis() as redis_server:
        try:
            for agent, (conc, rate) in FLEET.items():
                extra = ["--inject-failure-rate", str(rate)] if rate else []
                fleets.append(
                    LocalFleet(
                        redis_server.url, [AgentSpec(id=agent, concurrency=conc)], extra_args=extra,
                        log_dir=work / "logs",
                    ).start()
                )  # fmt: skip
            store = Store(redis_client(redis_server.url))
            deadline = time.monotonic() + 60
            while not all(store.live_workers(a) for a in FLEET) and time.monotonic() < deadline:
                time.sleep(0.1)
            static = run_campaign(redis_server.url, plan, config, work / "static", optimize=False)
            adaptive = run_campaign(redis_server.url, plan, config, work / "adaptive", optimize=True)
        finally:
            for f in fleets:
                f.stop()
    late = adaptive["wave_wall_s"][3:6]
    ratio = adaptive["wall_s"] / static["wall_s"]
    goals = {
        "adaptive wall <= 0.7 x static": (ratio, ratio <= 0.7),
        "adaptive success >= static": (
            adaptive["success_rate"],
            adaptive["success_rate"] >= static["success_rate"],
        ),
        "waves 4-6 faster than wave 1": (
            max(late) if late else 0.0,
            bool(late) and max(late) < adaptive["wave_wall_s"][0],
        ),
    }  # fmt: skip
    result = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": vars(args) | {"out": str(args.out), "fleet": FLEET, "workdir": str(work)},
        "static": static,
        "adaptive": adaptive,
        "goals": {k: {"value": v, "pass": ok} for k, (v, ok) in goals.items()},
    }
    table = Table(
        title=f"optimizer benchmark: {args.waves} waves x {args.tasks} sleep {args.seconds * 1000:g} ms"
    )
    for col in ("", "static (--no-optimize)", "adaptive"):
        table.add_column(col)
    table.add_row("wall s", f"{static['wall_s']:.2f}", f"{adaptive['wall_s']:.2f}")
    table.add_row("success rate", f"{static['success_rate']:.3f}", f"{adaptive['success_rate']:.3f}")
    table.add_row("wave wall s", " ".join(f"{x:.2f}" for x in static["wave_wall_s"]),
                  " ".join(f"{x:.2f}" for x in adaptive["wave_wall_s"]))  # fmt: skip
    table.add_row("tasks per agent", str(static["tasks_per_agent"]), str(adaptive["tasks_per_agent"]))
    table.add_row("health", f"{static['health'] or 0:.0f}", f"{adaptive['health'] or 0:.0f}")
    console.print(table)
    for name, (value, ok) in goals.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3f}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
