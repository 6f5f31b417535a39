"""The "What the optimizer changed and why" section of ``report.md`` (docs/architecture.md, "Outputs").

Renders the meta-optimizer's decisions, the agent tuner's parameter changes and the adaptive
scheduler's moves (:mod:`buddy.optimizer`) as Markdown tables.
"""

from __future__ import annotations

from collections.abc import Sequence

from buddy.models import ScheduleAdjustment
from buddy.optimizer.meta import OptimizerDecision
from buddy.optimizer.tuner import ParameterChange
from buddy.outputs.writer import OutputWriter


def optimizer_markdown(
    decisions: Sequence[OptimizerDecision],
    changes: Sequence[ParameterChange],
    adjustments: Sequence[ScheduleAdjustment],
    *,
    max_rows: int = 30,
) -> str:
    """A Markdown section "What the optimizer changed and why" for ``report.md``."""
    lines = ["## What the optimizer changed and why", ""]
    if not decisions and not changes and not adjustments:
        return "\n".join([*lines, "The optimizer made no change (static plan).", ""])
    if decisions:
        lines += ["| wave | goal | why |", "|---|---|---|"]
        lines += [
            f"| {d.wave if d.wave is not None else '–'} | {d.goal.value} | {d.reason} |" for d in decisions
        ]
        lines.append("")
    if changes:
        lines += ["| wave | agent | parameter | old → new | why |", "|---|---|---|---|---|"]
        for ch in changes[:max_rows]:
            w = ch.wave if ch.wave is not None else "–"
            lines.append(f"| {w} | {ch.agent_id} | {ch.parameter} | {ch.old} → {ch.new} | {ch.reason} |")
        if len(changes) > max_rows:
            lines.append(f"\n… and {len(changes) - max_rows} more in `{OutputWriter.TUNED}`.")
        lines.append("")
    if adjustments:
        moved: dict[tuple[int, str | None, str], int] = {}
        for adj in adjustments:
            key = (adj.wave, adj.from_agent, adj.to_agent)
            moved[key] = moved.get(key, 0) + 1
        lines += ["| wave | from | to | tasks |", "|---|---|---|---|"]
        lines += [f"| {w} | {a} | {b} | {n} |" for (w, a, b), n in sorted(moved.items())]
        lines += ["", f"Every moved task and its reason: `wave_<n>/agent_<id>/{OutputWriter.ADJUSTED}`.", ""]
    return "\n".join(lines)
