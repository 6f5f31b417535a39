"""``buddy profiles``: what the fleet learned about its agents and tools, kept across
campaigns in Redis (:mod:`buddy.state.profiles`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from buddy.cli.context import CliContext, out
from buddy.cli.options import RedisOpt


def profiles(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document: agents and tools.")] = False,
    forget: Annotated[
        bool, typer.Option("--forget", help="Remove every profile (the next campaign starts fresh).")
    ] = False,
    redis_url: RedisOpt = None,
) -> None:
    """Show the agent and tool profiles new campaigns start from: service rate (tasks per
    second per slot), success, typical duration, calibration weight; samples count less with
    age (half-life 7 days)."""
    from buddy.models import utcnow
    from buddy.state.profiles import MIN_SAMPLES, Profiles

    cli = CliContext.connect(redis_url)
    store = Profiles(cli.store.r)
    if forget:
        n = cli.call(store.forget)
        out.print(f"forgot {n} profile(s)")
        return
    agents, tools = cli.call(store.agents), cli.call(store.tools)
    now = utcnow()
    if as_json:
        doc = {
            "agents": [
                p.model_dump(mode="json") | {"weight": round(p.weight(now), 3)} for p in agents.values()
            ],
            "tools": [
                p.model_dump(mode="json") | {"weight": round(p.weight(now), 3)} for p in tools.values()
            ],
        }
        print(json.dumps(doc, indent=2))
        return
    if not agents and not tools:
        out.print("no profiles yet: they are written when a campaign ends")
        return
    table = Table(title="agent profiles")
    for col in (
        "agent",
        "tasks/s per slot",
        "success",
        "mean ms",
        "calibration",
        "capacity",
        "weight",
        "updated",
    ):
        table.add_column(col, overflow="fold")
    for p in agents.values():
        w = p.weight(now)
        table.add_row(
            p.agent_id, f"{p.service_rate:.2f}", f"{p.success:.2f}", f"{p.mean_duration_ms:.1f}",
            f"{p.calibration_weight:.2f}", str(p.capacity), _weight(w, MIN_SAMPLES),
            f"{p.updated_at:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    out.print(table)
    tt = Table(title="tool profiles")
    for col in ("tool", "success", "mean ms", "weight", "updated"):
        tt.add_column(col, overflow="fold")
    for t in tools.values():
        w = t.weight(now)
        tt.add_row(
            t.tool, f"{t.success:.2f}", f"{t.mean_duration_ms:.1f}", _weight(w, MIN_SAMPLES),
            f"{t.updated_at:%Y-%m-%d %H:%M}",
        )  # fmt: skip
    out.print(tt)


def _weight(w: float, floor: float) -> str:
    """The samples as they count now; ``(unused)`` below what planning needs."""
    return f"{w:.1f}" + ("" if w >= floor else " (unused)")


def register(app: typer.Typer) -> None:
    """Add ``profiles``."""
    app.command("profiles")(profiles)
