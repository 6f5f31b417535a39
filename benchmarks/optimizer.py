"""Does the meta-optimizer help? Adaptive vs ``--no-optimize`` on two heterogeneous local fleets.

Usage: ``python -m benchmarks.optimizer [--scenario all|capacity|failures] [--waves 6] [--tasks 300]
[--seconds 0.02] [--cap-waves 5] [--cap-tasks 150] [--cap-seconds 0.02] [--out optimizer.json]``

Each scenario starts its own fleet (:class:`buddy.Fleet`: an embedded Redis and one worker
process per agent) and runs the same plan on it twice in this process
(``buddy.Campaign.from_file(..., fleet=fleet).run()``): static (``optimize=False``, ``buddy
run --no-optimize``) and adaptive. Plans: ``sleep`` tasks, round-robin assigned.

**capacity** (issue 15): agents that differ only in capacity, none failing: ``a1`` a threads
pool of 8, ``a2`` of 1, ``a3`` of 4 (13 slots). campaign.yaml lists the agents without their
concurrency (each counts 2 until its workers say otherwise): the fleet's real capacity comes
from the workers' heartbeats. ``--cap-waves`` waves of ``--cap-tasks`` tasks of
``--cap-seconds``. Goals: adaptive wall ≤ 0.55 × static; from wave 2 on each adaptive wave's
makespan (first start to last end) ≤ 1.3 × the capacity-ideal, work ÷ total slots + one task.

**failures** (issue 5): prefork pools ``a1`` 8, ``a2`` 1, ``a3`` 4 with 40% of its attempts
failing transiently (``BUDDY_INJECT_FAILURE_RATE=0.4``, what ``buddy worker
--inject-failure-rate`` sets; a testing aid; a second :class:`buddy.Fleet` on the same Redis).
``--waves`` waves of ``--tasks`` tasks of ``--seconds``. Goals: adaptive wall ≤ 0.7 × static;
adaptive success rate ≥ static; the adaptive run's waves 4–6 faster than wave 1 as the plan
assigns it (the static run's: the adaptive run's own wave 1 is already split by capacity,
and once ``a3`` shows its failures later waves trade its speed for success).

Prints each scenario's runs side by side, the ratios and goals, and writes the numbers as
JSON (the failure scenario's runs at the top level, as before; the capacity scenario's under
``capacity``).
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
CAPACITY_FLEET = {"a1": 8, "a2": 1, "a3": 4}  # agent -> threads; no failures


def write_inputs(
    work: Path, waves: int, tasks: int, seconds: float, agents: dict[str, int | None]
) -> tuple[Path, Path]:
    """The plan (``waves`` × ``tasks`` sleep tasks) and campaign.yaml (``agents``: id →
    concurrency, None to leave it out) in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
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
    lines = "\n".join(f"  - id: {a}" + (f"\n    concurrency: {c}" if c else "") for a, c in agents.items())
    config.write_text(f"agents:\n{lines}\nstrategy: round_robin\nmode: live\n")
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
    per_wave: dict[int, Counter[str]] = {}
    for o in result.outcomes.values():
        per_wave.setdefault(o.wave, Counter())[o.agent_id or "-"] += 1
    return {
        "optimize": optimize,
        "wall_s": summary.wall_s,
        "process_wall_s": wall,
        "success_rate": summary.counts.succeeded / max(1, summary.counts.total),
        "wave_wall_s": [w.wall_s for w in summary.waves],
        "tasks_per_agent": dict(sorted(per_agent.items())),
        "wave_tasks_per_agent": [dict(sorted(per_wave[w].items())) for w in sorted(per_wave)],
        "health": summary.health,
    }


def wait_live(fleet: buddy.Fleet, agents: list[str], timeout_s: float = 60.0) -> None:
    """Until every agent has a worker with a heartbeat (a campaign would wait too, but not in its wall)."""
    store = fleet.store()
    deadline = time.monotonic() + timeout_s
    while not all(store.live_workers(a) for a in agents) and time.monotonic() < deadline:
        time.sleep(0.1)


def failure_scenario(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The issue 5 fleet (module docstring): static and adaptive runs, and their goals."""
    plan, config = write_inputs(
        work, args.waves, args.tasks, args.seconds, {a: c for a, (c, _) in FLEET.items()}
    )
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
        "waves 4-6 faster than the plan's wave 1": (
            max(late) if late else 0.0,
            bool(late) and max(late) < static["wave_wall_s"][0],
        ),
    }  # fmt: skip
    return {"static": static, "adaptive": adaptive, "ratio": ratio, "goals": goals}


def capacity_scenario(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The issue 15 fleet (module docstring): static and adaptive runs, per-wave makespans
    against the capacity-ideal, and the goals."""
    plan, config = write_inputs(
        work, args.cap_waves, args.cap_tasks, args.cap_seconds, dict.fromkeys(CAPACITY_FLEET)
    )
    specs = [AgentSpec(id=a, concurrency=c) for a, c in CAPACITY_FLEET.items()]
    with buddy.Fleet(specs, pool="threads", log_dir=work / "logs") as fleet:
        wait_live(fleet, list(CAPACITY_FLEET))
        static = run_campaign(fleet, plan, config, work / "static", optimize=False)
        adaptive = run_campaign(fleet, plan, config, work / "adaptive", optimize=True)
    slots = sum(CAPACITY_FLEET.values())
    ideal = args.cap_tasks * args.cap_seconds / slots + args.cap_seconds
    ratio = adaptive["wall_s"] / static["wall_s"]
    later = [w / ideal for w in adaptive["wave_wall_s"][1:]]
    goals = {
        "capacity: adaptive wall <= 0.55 x no-optimize": (ratio, ratio <= 0.55),
        "capacity: waves 2+ makespan <= 1.3 x capacity-ideal": (
            max(later) if later else 0.0,
            bool(later) and max(later) <= 1.3,
        ),
    }
    return {
        "fleet": {"pool": "threads", "slots": CAPACITY_FLEET, "campaign_yaml_concurrency": None},
        "static": static,
        "adaptive": adaptive,
        "ratio": ratio,
        "ideal_makespan_s": ideal,
        "goals": goals,
    }


def print_runs(console: Console, title: str, static: dict[str, Any], adaptive: dict[str, Any]) -> None:
    table = Table(title=title)
    for col in ("", "static (--no-optimize)", "adaptive"):
        table.add_column(col)
    table.add_row("wall s", f"{static['wall_s']:.2f}", f"{adaptive['wall_s']:.2f}")
    table.add_row("success rate", f"{static['success_rate']:.3f}", f"{adaptive['success_rate']:.3f}")
    table.add_row("wave wall s", " ".join(f"{x:.2f}" for x in static["wave_wall_s"]),
                  " ".join(f"{x:.2f}" for x in adaptive["wave_wall_s"]))  # fmt: skip
    table.add_row("tasks per agent", str(static["tasks_per_agent"]), str(adaptive["tasks_per_agent"]))
    table.add_row("health", f"{static['health'] or 0:.0f}", f"{adaptive['health'] or 0:.0f}")
    console.print(table)


def print_capacity_waves(console: Console, cap: dict[str, Any]) -> None:
    ideal = cap["ideal_makespan_s"]
    table = Table(title=f"capacity fleet, per wave: makespan vs the capacity-ideal {ideal:.3f} s")
    for col in ("wave", "static s", "adaptive s", "adaptive / ideal", "adaptive tasks per agent"):
        table.add_column(col)
    st, ad = cap["static"], cap["adaptive"]
    for i, (s, a) in enumerate(zip(st["wave_wall_s"], ad["wave_wall_s"], strict=False)):
        per = ad["wave_tasks_per_agent"][i] if i < len(ad["wave_tasks_per_agent"]) else {}
        table.add_row(str(i + 1), f"{s:.3f}", f"{a:.3f}", f"{a / ideal:.2f}", str(per))
    console.print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scenario", choices=("all", "capacity", "failures"), default="all")
    ap.add_argument("--waves", type=int, default=6)
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=0.02)
    ap.add_argument("--cap-waves", type=int, default=5)
    ap.add_argument("--cap-tasks", type=int, default=150)
    ap.add_argument("--cap-seconds", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=Path("optimizer.json"))
    args = ap.parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="buddy-bench-opt-"))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result: dict[str, Any] = {
        "machine": {
            "nproc": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_at_start": load,
        },
        "params": vars(args) | {"out": str(args.out), "fleet": FLEET, "capacity_fleet": CAPACITY_FLEET,
                                "workdir": str(work)},
    }  # fmt: skip
    goals: dict[str, tuple[float, bool]] = {}
    if args.scenario in ("all", "capacity"):
        cap = capacity_scenario(args, work / "capacity")
        goals |= cap["goals"]
        result["capacity"] = cap | {
            "goals": {k: {"value": v, "pass": ok} for k, (v, ok) in cap["goals"].items()}
        }
        console.print(
            f"capacity fleet: threads pools a1 8, a2 1, a3 4 ({sum(CAPACITY_FLEET.values())} slots), "
            "no failures; campaign.yaml without concurrency"
        )
        print_runs(
            console,
            f"capacity: {args.cap_waves} waves x {args.cap_tasks} sleep {args.cap_seconds * 1000:g} ms",
            cap["static"],
            cap["adaptive"],
        )
        print_capacity_waves(console, cap)
        console.print(f"capacity: adaptive / no-optimize wall = {cap['ratio']:.3f}")
    if args.scenario in ("all", "failures"):
        fail = failure_scenario(args, work / "failures")
        goals |= fail["goals"]
        result |= {"static": fail["static"], "adaptive": fail["adaptive"], "failure_ratio": fail["ratio"]}
        console.print("failure fleet: prefork pools a1 8, a2 1, a3 4 with 40% of its attempts failing")
        print_runs(
            console,
            f"failures: {args.waves} waves x {args.tasks} sleep {args.seconds * 1000:g} ms",
            fail["static"],
            fail["adaptive"],
        )
        console.print(f"failures: adaptive / static wall = {fail['ratio']:.3f}")
    result["goals"] = {k: {"value": v, "pass": ok} for k, (v, ok) in goals.items()}
    for name, (value, ok) in goals.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3f}")
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
