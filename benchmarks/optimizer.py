"""Does the meta-optimizer help? Adaptive vs ``--no-optimize`` on a heterogeneous local fleet.

Usage: ``python -m benchmarks.optimizer [--waves 6] [--tasks 300] [--seconds 0.02] [--out optimizer.json]``

The fleet (all local, one private Redis, prefork pools):

- ``a1``: fast, concurrency 8;
- ``a2``: slow, concurrency 1;
- ``a3``: concurrency 4, with 40% of its attempts failing transiently
  (``BUDDY_INJECT_FAILURE_RATE=0.4``, what ``buddy worker --inject-failure-rate`` sets; a testing aid).

The fleet is a :class:`buddy.Fleet` (the embedded Redis, ``a1`` and ``a2``'s workers) and a
second :class:`buddy.Fleet` on the same Redis for ``a3``'s failing worker. The plan:
``--waves`` waves of ``--tasks`` ``sleep`` tasks (``--seconds`` each), round-robin assigned,
run twice on that fleet in this process (``buddy.Campaign.from_file(..., fleet=fleet).run()``):
static (``optimize=False``, ``buddy run --no-optimize``) and adaptive. Goals (issue 5):
adaptive wall time ≤ 0.7 × static; adaptive success rate ≥ static; the adaptive run's waves
4–6 faster than its wave 1. Prints both runs side by side and writes
the numbers as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import buddy
from buddy.models import AgentSpec

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


def run_campaign(fleet: buddy.Fleet, plan: Path, config: Path, out: Path, optimize: bool) -> dict[str, Any]:
    """One live campaign of ``plan`` on ``fleet``; its numbers from the returned result."""
    camp = buddy.Campaign.from_file(
        plan, config=config, out_dir=out, optimize=optimize, fleet=fleet, console=Console(file=io.StringIO())
    )
    t0 = time.perf_counter()
    result = camp.run()
    wall = time.perf_counter() - t0
    if result.exit_code not in (0, 1):
        raise RuntimeError(
            f"campaign {result.campaign_id} {result.status} ({result.exit_code}): {result.abort_reason}"
        )
    summary = result.summary
    per_agent = Counter(o.agent_id or "-" for o in result.outcomes.values())
    return {
        "optimize": optimize,
        "wall_s": summary.wall_s,
        "process_wall_s": wall,
        "success_rate": summary.counts.succeeded / max(1, summary.counts.total),
        "wave_wall_s": [w.wall_s for w in summary.waves],
        "tasks_per_agent": dict(sorted(per_agent.items())),
        "health": summary.health,
    }


def wait_live(fleet: buddy.Fleet, agents: list[str], timeout_s: float = 60.0) -> None:
    """Until every agent has a worker with a heartbeat (a campaign would wait too, but not in its wall)."""
    store = fleet.store()
    deadline = time.monotonic() + timeout_s
    while not all(store.live_workers(a) for a in agents) and time.monotonic() < deadline:
        time.sleep(0.1)


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
    steady = [AgentSpec(id=a, concurrency=c) for a, (c, rate) in FLEET.items() if not rate]
    with buddy.Fleet(steady, log_dir=work / "logs") as fleet:
        failing = [
            buddy.Fleet(
                [AgentSpec(id=a, concurrency=c)], redis_url=fleet.url, log_dir=work / "logs",
                env={"BUDDY_INJECT_FAILURE_RATE": str(rate)},
            )
            for a, (c, rate) in FLEET.items() if rate
        ]  # fmt: skip
        try:
            for f in failing:
                f.start()
            wait_live(fleet, list(FLEET))
            static = run_campaign(fleet, plan, config, work / "static", optimize=False)
            adaptive = run_campaign(fleet, plan, config, work / "adaptive", optimize=True)
        finally:
            for f in failing:
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
