"""``report.md``: what an operator reads after a campaign (docs/architecture.md, "Outputs").

Sections: overview, targets (the source documents' performance targets, met, missed or not
judged, from the summary's ``targets``: :mod:`buddy.analysis.targets`), safety, waves (one row
each), agents (one row each), tasks that did not succeed (at most 50, with their errors),
health and anomalies, what the optimizer changed, rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from buddy.models import ExecutionSummary, Outcome, RollbackEvent, Target, TaskStatus
from buddy.plan.model import CampaignPlan
from buddy.safety.gates import Approval, EscalationPolicy

MAX_LISTED = 50

_EXIT_MEANING = {
    0: "every task succeeded",
    1: "the campaign finished, but some tasks did not succeed",
    3: "the campaign was aborted",
    130: "the campaign was interrupted",
}


@dataclass
class ReportContext:
    """What the report says beyond the summary: safety settings, approvals, compensations."""

    escalation: EscalationPolicy = field(default_factory=EscalationPolicy)
    max_fail_percentage: float | None = None
    max_failures: int | None = None
    approvals: list[Approval] = field(default_factory=list)
    rollbacks: list[RollbackEvent] = field(default_factory=list)
    reports: list[Any] = field(default_factory=list)  # buddy.analysis.wave.WaveReport per wave
    optimizer: str = ""  # the "What the optimizer changed and why" section (Markdown)
    learned: str = ""  # what was known before the first wave, and from where (agent/tool profiles)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _other(by_status: dict[str, int]) -> str:
    rest = {
        k: v for k, v in by_status.items() if k not in (TaskStatus.SUCCEEDED.value, TaskStatus.FAILED.value)
    }
    return ", ".join(f"{k} {v}" for k, v in sorted(rest.items())) or "–"


def render_report(
    summary: ExecutionSummary,
    plan: CampaignPlan,
    not_succeeded: list[Outcome],
    context: ReportContext | None = None,
) -> str:
    """The Markdown report of a finished (or aborted) campaign."""
    ctx = context or ReportContext()
    c = summary.counts
    out = [
        f"# Campaign {summary.campaign_id}",
        "",
        "## Overview",
        "",
        f"- status: **{summary.status}** (exit code {summary.exit_code}: "
        f"{_EXIT_MEANING.get(summary.exit_code, '')})",
    ]
    if summary.abort_reason:
        out.append(f"- abort reason: {summary.abort_reason}")
    out += _pauses(summary)
    if ctx.learned:
        out.append(f"- learned before the first wave: {ctx.learned}")
    out += [
        f"- mode: {summary.mode.value}; strategy: {plan.strategy.value}",
        f"- plan: `{plan.path}` (sha256 {plan.digest[:16]}…), "
        f"{len(plan.tasks)} tasks in {len(plan.waves)} waves",
        f"- agents: {', '.join(a.id for a in plan.agents)}",
        f"- outcomes: {c.total} of {len(plan.tasks)}; succeeded {c.succeeded}, "
        f"failed {c.by_status.get('failed', 0)}, other: {_other(c.by_status)}",
        f"- started {summary.start_time.isoformat()}, wall time {summary.wall_s:.2f} s",
        *_targets(summary.targets),
        "",
        "## Safety",
        "",
        _safety(ctx),
        "",
        "## Waves",
        "",
        _table(
            ["wave", "tasks", "succeeded", "failed", "other", "success rate", "wall s", "tasks/s"],
            [
                [
                    str(w.wave),
                    str(w.counts.total),
                    str(w.counts.succeeded),
                    str(w.counts.by_status.get("failed", 0)),
                    _other(w.counts.by_status),
                    f"{w.success_rate:.2f}",
                    f"{w.wall_s:.2f}",
                    f"{w.throughput_tps:.1f}",
                ]
                for w in summary.waves
            ],
        ),
        "",
        "## Agents",
        "",
        _table(
            ["agent", "tasks", "succeeded", "not succeeded", "busy s", "mean ms", "workers"],
            [
                [
                    a.agent_id,
                    str(a.counts.total),
                    str(a.counts.succeeded),
                    str(a.counts.total - a.counts.succeeded),
                    f"{a.busy_ms / 1000:.2f}",
                    f"{a.mean_duration_ms:.1f}",
                    ", ".join(a.workers) or "–",
                ]
                for a in summary.agents.values()
            ],
        ),
        "",
        "## Tasks that did not succeed",
        "",
    ]
    if not not_succeeded:
        out.append("None.")
    else:
        rows = [
            [
                f"`{o.task_id}`",
                str(o.wave),
                o.agent_id or "–",
                o.status.value,
                o.error_type or "–",
                (o.error_msg or "").replace("|", "\\|").replace("\n", " ")[:200],
            ]
            for o in sorted(not_succeeded, key=lambda o: (o.wave, o.task_id))[:MAX_LISTED]
        ]
        out.append(_table(["task", "wave", "agent", "status", "error type", "error"], rows))
        if len(not_succeeded) > MAX_LISTED:
            out.append(f"\n… and {len(not_succeeded) - MAX_LISTED} more (see `executed_tasks.jsonl`).")
    if ctx.reports:
        out += [
            "",
            "## Health, anomalies and recommendations",
            "",
            "Fleet success leaves out the tasks the fleet was not asked to run (skipped, denied, "
            "cancelled); the Waves table above has every count.",
            "",
        ]
        out.append(
            _table(
                [
                    "wave",
                    "health",
                    "status",
                    "fleet success",
                    "p95 ms",
                    "schedule adherence",
                    "anomalies",
                ],
                [
                    [
                        str(r.metrics.wave),
                        f"{r.health.score:.0f}",
                        str(r.health.status),
                        f"{r.metrics.fleet_success:.2f}",
                        f"{r.metrics.latency_p95_ms:.0f}",
                        f"{r.metrics.schedule_adherence:.2f}",
                        ", ".join(a.type for a in r.anomalies) or "–",
                    ]
                    for r in ctx.reports
                ],
            )
        )
        seen: set[str] = set()
        for r in ctx.reports:
            for a in r.anomalies:
                if a.type not in seen:
                    seen.add(a.type)
                    where = f"severity {a.severity}, wave {r.metrics.wave}"
                    out.append(f"- **{a.type}** ({where}): {a.message}; {a.recommended_action}")
    if ctx.optimizer:
        out += ["", ctx.optimizer]
    if ctx.rollbacks:
        out += ["", "## Rollback", ""]
        out.append(
            _table(
                ["task", "wave", "agent", "status", "detail"],
                [
                    [
                        f"`{e.task_id}`",
                        str(e.wave or "–"),
                        e.agent_id or "–",
                        e.status,
                        e.error or e.reason or "–",
                    ]
                    for e in ctx.rollbacks
                ],
            )
        )
        stays = [e.task_id for e in ctx.rollbacks if e.status in ("not_reversible", "failed")]
        if stays:
            listed = ", ".join(f"`{t}`" for t in stays)
            out.append(f"\nNot compensated (their effects stay; check them by hand): {listed}")
    out.append("")
    return "\n".join(out)


def _verdict(t: Target) -> str:
    return "not judged" if t.met is None else ("met" if t.met else "**missed**")


def _value(t: Target) -> str:
    if t.value is None:
        return "–"
    if t.unit == "tasks/s":
        return f"{t.value:.1f} tasks/s"
    if t.unit == "points":
        return f"{t.value:.0f}"
    return f"{t.value:.2f}"


def _targets(targets: list[Target]) -> list[str]:
    """The "Targets" section: one row per target of the source documents (none: no section)."""
    if not targets:
        return []
    met = sum(t.met is True for t in targets)
    missed = sum(t.met is False for t in targets)
    lines = [
        "",
        "## Targets",
        "",
        f"The source documents' performance targets: {met} met, {missed} missed, "
        f"{len(targets) - met - missed} not judged (how each is measured and when it is judged: "
        "`buddy/analysis/targets.py`).",
        "",
    ]
    rows = [[t.name, t.target, _value(t), _verdict(t), t.why.replace("|", "\\|")] for t in targets]
    lines.append(_table(["target", "goal", "value", "verdict", "why"], rows))
    return lines


def _pauses(summary: ExecutionSummary) -> list[str]:
    """One line per pause (the system lock, ``buddy pause``): nothing started meanwhile."""
    if not summary.pauses:
        return []
    total = sum(p.seconds or 0.0 for p in summary.pauses)
    lines = [f"- paused {len(summary.pauses)} time(s), {total:.1f} s in all (no task started while paused):"]
    for p in summary.pauses:
        until = f"until {p.until:%H:%M:%S} UTC" if p.until else "until the campaign ended"
        lines.append(f"  - wave {p.wave}: {p.describe()}; {until} ({p.seconds or 0.0:.1f} s)")
    return lines


def _safety(ctx: ReportContext) -> str:
    e = ctx.escalation
    critical = f"{e.critical:.2f}" if e.allow_critical else "never (no --allow-critical)"
    mfp = f"{ctx.max_fail_percentage:g}%" if ctx.max_fail_percentage is not None else "off"
    lines = [
        f"- live thresholds (minimum confidence): LOW {e.low:.2f}, MEDIUM {e.medium:.2f}, HIGH {e.high:.2f}, "
        f"CRITICAL {critical}",
        f"- auto-approve: **{e.auto_approve}** (requests up to this risk were approved without an operator)"
        if e.auto_approve
        else "- auto-approve: off (every HIGH/CRITICAL live task needed an operator)",
        f"- failure thresholds: max_fail_percentage {mfp}, "
        f"max_failures {ctx.max_failures if ctx.max_failures is not None else 'off'}",
    ]
    if ctx.approvals:
        counts: dict[str, int] = {}
        for a in ctx.approvals:
            key = "auto-approved" if a.by == "auto-approve" else a.status
            counts[key] = counts.get(key, 0) + 1
        lines.append("- approvals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        denied = [a for a in ctx.approvals if a.status == "denied"]
        for a in denied[:MAX_LISTED]:
            lines.append(f"  - `{a.task_id}` denied by {a.by}: {a.reason or '–'}")
    return "\n".join(lines)
