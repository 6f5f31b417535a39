"""The end of a campaign: its summary, its reports, its status in Redis and its result
(docs/architecture.md, "Outputs").

The campaign's status is ``succeeded`` only when every task of the plan has an outcome and
all of them succeeded; else ``finished_with_failures`` (or ``aborted`` / ``interrupted`` as
the loop ended). The exit code follows from the status alone
(:data:`~buddy.coordinator.options.EXIT_CODES`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from buddy.analysis.agents import campaign_agents, status_counts
from buddy.analysis.targets import judge_targets, predictions_given
from buddy.coordinator.options import EXIT_CODES
from buddy.coordinator.result import CampaignResult
from buddy.models import (
    CampaignInfo,
    CampaignStatus,
    ExecutionSummary,
    TaskStatus,
    utcnow,
)
from buddy.outputs.optimizer_md import optimizer_markdown
from buddy.outputs.report_html import render_html
from buddy.outputs.report_md import ReportContext, render_report

if TYPE_CHECKING:
    from buddy.coordinator.loop import Coordinator


def campaign_info(c: Coordinator) -> CampaignInfo:
    """``campaign.json``: what the campaign is and where it runs (also stored in Redis)."""
    return CampaignInfo(
        campaign_id=c.cid,
        plan_path=str(c.plan.path),
        plan_digest=c.plan.digest,
        schedule_path=str(c.opts.schedule_path) if c.opts.schedule_path else None,
        config_path=str(c.opts.config_path) if c.opts.config_path else None,
        mode=c.opts.mode,
        strategy=c.plan.strategy,
        agents=c.plan.agents,
        workdir=str(c.opts.workdir),
        tasks=len(c.plan.tasks),
        waves=len(c.plan.waves),
        created_at=c.start_time,
        redis=c.opts.redis_display,
        embedded=c.opts.embedded,
        versions=_versions(),
    )


def finish_campaign(c: Coordinator, status: CampaignStatus, abort_reason: str | None) -> CampaignResult:
    """Write the summary and the reports, record the end in Redis, call ``after_campaign``."""
    counts = status_counts(c.outcomes.values())
    if status == "running":
        all_ok = counts.total == len(c.plan.tasks) and counts.succeeded == counts.total
        status = "succeeded" if all_ok else "finished_with_failures"
    exit_code = EXIT_CODES[status]
    end = utcnow()
    final_metrics, final_health = c.learner.finish(list(c.outcomes.values()))
    summary = ExecutionSummary(
        campaign_id=c.cid,
        status=status,
        exit_code=exit_code,
        mode=c.opts.mode,
        counts=counts,
        agents=campaign_agents(c.outcomes.values()),
        waves=c.wave_summaries,
        start_time=c.start_time,
        end_time=end,
        wall_s=(end - c.start_time).total_seconds(),
        abort_reason=abort_reason,
        health=final_health.score if final_health else None,
        health_status=final_health.status if final_health else None,
        pauses=c.pausing.pauses,
        targets=judge_targets(
            final_metrics,
            final_health,
            [r.metrics for r in c.learner.reports],
            c.learner.monitor,
            predictions=predictions_given(pt.task for pt in c.plan.tasks.values()),
        ),
    )
    c._flush_transitions()
    if c.plan.conflicts is not None:
        by_wave = {
            n: int(c.store.wave_counters(c.cid, n).get("lease_contention", 0)) for n in c.plan.wave_numbers()
        }
        c.plan.conflicts.lease_contention_by_wave = {n: k for n, k in by_wave.items() if k}
        c.plan.conflicts.lease_contention_total = sum(by_wave.values())
    failed = [o for o in c.outcomes.values() if o.status is not TaskStatus.SUCCEEDED]
    context = ReportContext(
        escalation=c.opts.escalation,
        max_fail_percentage=c.opts.max_fail_percentage,
        max_failures=c.opts.max_failures,
        approvals=c.approvals.get(c.cid),
        rollbacks=c.rollbacks,
        learned=c.learner.learned(),
        reports=c.learner.reports,
        optimizer=optimizer_markdown(c.learner.decisions, c.learner.changes, c.learner.adjustments)
        if c.opts.optimize
        else "## What the optimizer changed and why\n\nNothing: the campaign ran with --no-optimize.",
    )
    doc = summary.model_dump(mode="json")
    doc["optimizer"] = [d.model_dump(mode="json") for d in c.learner.decisions]
    healths = [r.health for r in c.learner.reports] + ([final_health] if final_health is not None else [])
    html = render_html(
        doc, [r.metrics for r in c.learner.reports], list(c.outcomes.values()), healths, c.latency
    )
    c.files.finish(summary, c.plan.conflicts, render_report(summary, c.plan, failed, context), html)
    c.store.update_campaign(c.cid, status=status, ended_at=end.isoformat(), exit_code=exit_code)
    c.store.event(c.cid, "campaign_finished", status=status, exit_code=exit_code)
    result = CampaignResult(
        campaign_id=c.cid,
        status=status,
        exit_code=exit_code,
        out_dir=c.out.root,
        summary=summary,
        outcomes=dict(c.outcomes),
        health=final_health,
        waves=list(c.learner.reports),
        tasks=len(c.plan.tasks),
        abort_reason=abort_reason,
    )
    c.hooks.emit("after_campaign", c.ctx, result)
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("buddy", "celery", "kombu", "redis", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
