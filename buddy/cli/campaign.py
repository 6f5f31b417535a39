"""``buddy validate``, ``buddy run`` and ``buddy resume``: a shell over :class:`buddy.Campaign`
and :func:`buddy.resume`.

Each command turns its flags into the API's keywords (same names), calls it, prints what it
returns and exits with the result's exit code. Mistakes in the input print
``FILE:LINE: message`` lines and exit 2 before anything is dispatched; a Redis or broker that
cannot be reached prints what happened and the fix and exits 3.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.table import Table

from buddy.cli.context import EXIT_ABORTED, EXIT_INTERRUPTED, err, fail, out
from buddy.cli.options import (
    AgentsOpt,
    AutoApprove,
    BrokerOpt,
    ConfigOpt,
    ConflictOpt,
    PlanArg,
    RedisOpt,
    RollbackScope,
    RootOpt,
    ScheduleOpt,
    StrategyOpt,
    ToolsOpt,
    WorkdirOpt,
    split_values,
)
from buddy.errors import ConfigError, ContractError, InfrastructureError, PlanError
from buddy.models import Mode

if TYPE_CHECKING:
    from buddy.coordinator.result import CampaignResult

#: Errors in what the user gave: printed as they are, exit 2, nothing dispatched.
INPUT_ERRORS = (PlanError, ConfigError, ContractError)


def validate(
    plan: PlanArg,
    schedule: ScheduleOpt = None,
    config: ConfigOpt = None,
    agents: AgentsOpt = None,
    strategy: StrategyOpt = None,
    workdir: WorkdirOpt = None,
    tools: ToolsOpt = None,
    conflict: ConflictOpt = None,
    root: RootOpt = None,
) -> None:
    """Validate a plan (nothing is dispatched) and print its waves × agents and its conflicts."""

    from buddy.api.campaign import Campaign  # here: `buddy --help` and the other commands stay fast

    try:
        summary = Campaign.from_file(
            plan,
            schedule=schedule,
            config=config,
            agents=agents,
            strategy=strategy,
            workdir=workdir,
            tools=split_values(tools),
            conflict=conflict or [],
            root=root,
        ).validate()
    except INPUT_ERRORS as e:
        fail(str(e))
    for w in summary.warnings:
        err.print(f"warning: {w}", highlight=False)
    header, *rows = summary.table
    table = Table(
        title=f"{plan}: {summary.tasks} tasks, {summary.waves} waves, strategy {summary.strategy.value}"
    )
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row, end_section=row[0] == "total")
    out.print(table)
    for c in summary.conflicts.conflicts if summary.conflicts else []:
        out.print(
            f"conflict {c.type.value} on {c.subject} ({', '.join(c.tasks)}): {c.resolution.value}"
            + (f"; {c.detail}" if c.detail else ""),
            highlight=False,
        )
    out.print(f"plan OK (sha256 {summary.digest})")


def run(
    plan: PlanArg,
    schedule: ScheduleOpt = None,
    config: ConfigOpt = None,
    agents: AgentsOpt = None,
    strategy: StrategyOpt = None,
    mode: Annotated[
        Mode | None, typer.Option("--mode", help="mock (default: nothing runs), dry_run (previews) or live.")
    ] = None,
    workdir: WorkdirOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder. Default outputs/<campaign>.")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url", help="Redis of the fleet. Default: BUDDY_REDIS_URL, else an embedded Redis."
        ),
    ] = None,
    broker_url: BrokerOpt = None,
    local_workers: Annotated[
        int | None,
        typer.Option(
            "--local-workers",
            min=0,
            help="Local worker processes per agent. Default 1 with the embedded Redis, 0 with a Redis URL.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, max=1000, help="Tasks per Celery message. Default: adaptive."),
    ] = None,
    worker_wait: Annotated[
        float,
        typer.Option("--worker-wait", min=1, help="Seconds an agent may have no live worker before abort."),
    ] = 10.0,
    tools: ToolsOpt = None,
    conflict: ConflictOpt = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bars.")
    ] = True,
    allow_critical: Annotated[
        bool, typer.Option("--allow-critical", help="Let CRITICAL tools run live (still needing approval).")
    ] = False,
    auto_approve: Annotated[
        AutoApprove | None,
        typer.Option(
            "--auto-approve",
            help="Approve requests up to this risk without an operator (unattended runs; in the report).",
        ),
    ] = None,
    approval_timeout: Annotated[
        float | None,
        typer.Option(
            "--approval-timeout", min=0.1, help="Seconds a request may stay pending; then denied. 600."
        ),
    ] = None,
    max_fail_percentage: Annotated[
        float | None,
        typer.Option(
            "--max-fail-percentage",
            min=0,
            max=100,
            help="Abort when MORE than P% of a wave's tasks fail (failed, timed_out, rolled_back, "
            "needs_review, lost); "
            "later waves are not sent, exit 3. 0 aborts on the first failure; with P=50 a wave of one "
            "task that fails (100%) aborts; 100 never aborts.",
        ),
    ] = None,
    min_health: Annotated[
        float | None,
        typer.Option(
            "--min-health",
            min=0,
            max=100,
            help="Abort (exit 3) when a wave's health score (0-100) falls below this.",
        ),
    ] = None,
    lock_timeout: Annotated[
        float | None,
        typer.Option(
            "--lock-timeout",
            min=0.1,
            help="Seconds the system lock may pause this live campaign; then it ends aborted (exit 3) "
            "with its unstarted tasks cancelled. Default: wait for `buddy unlock`.",
        ),
    ] = None,
    auto_lock: Annotated[
        bool | None,
        typer.Option(
            "--auto-lock/--no-auto-lock",
            help="Let the monitor's unsafe_escalation lock the system (live campaigns pause until "
            "`buddy unlock`). Default: on (campaign.yaml: auto_lock).",
            show_default=False,
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Ignore the agent and tool profiles earlier campaigns left in Redis (buddy profiles).",
        ),
    ] = False,
    notify_url: Annotated[
        str | None,
        typer.Option(
            "--notify-url",
            help="Webhook that receives a JSON POST when approvals are requested, the campaign "
            "pauses, resumes, aborts or finishes (campaign.yaml: notify).",
        ),
    ] = None,
    optimize: Annotated[
        bool,
        typer.Option(
            "--optimize/--no-optimize",
            help="Between waves, re-tune agents and re-assign the next wave (default), or keep the plan.",
        ),
    ] = True,
    max_failures: Annotated[
        int | None,
        typer.Option(
            "--max-failures", min=0, help="Abort when MORE than N tasks have failed in the campaign."
        ),
    ] = None,
    rollback_on_abort: Annotated[
        bool,
        typer.Option(
            "--rollback-on-abort",
            help="On abort, compensate the succeeded reversible tasks (newest first); see --rollback-scope.",
        ),
    ] = False,
    rollback_scope: Annotated[
        RollbackScope,
        typer.Option("--rollback-scope", help="wave: the aborted wave only; campaign: every wave."),
    ] = RollbackScope.wave,
    wave_timeout: Annotated[
        float | None,
        typer.Option(
            "--wave-timeout",
            min=1,
            help="Seconds before a wave's members without an outcome count as lost (idempotent ones are "
            "sent once more). Default: from the tasks' timeouts and the agents' concurrency.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535, help="Serve Prometheus metrics here while it runs."),
    ] = None,
    metrics_address: Annotated[
        str, typer.Option("--metrics-address", help="Address for --metrics-port.")
    ] = "127.0.0.1",
    root: RootOpt = None,
) -> None:
    """Run a plan as a wave campaign and write its outputs."""

    from buddy.api.campaign import Campaign

    campaign = Campaign.from_file(
        plan,
        console=err,
        schedule=schedule,
        config=config,
        agents=agents,
        strategy=strategy,
        mode=mode,
        workdir=workdir,
        out_dir=out_dir,
        redis_url=redis_url,
        broker_url=broker_url,
        local_workers=local_workers,
        batch_size=batch_size,
        worker_wait=worker_wait,
        tools=split_values(tools),
        conflict=conflict or [],
        progress=progress,
        allow_critical=allow_critical,
        auto_approve=auto_approve.value if auto_approve else None,
        approval_timeout=approval_timeout,
        max_fail_percentage=max_fail_percentage,
        min_health=min_health,
        lock_timeout=lock_timeout,
        auto_lock=auto_lock,
        fresh=fresh,
        notify_url=notify_url,
        optimize=optimize,
        max_failures=max_failures,
        rollback_on_abort=rollback_on_abort,
        rollback_scope=rollback_scope.value,
        wave_timeout=wave_timeout,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        root=root,
    )
    _finish(campaign.run)


def _finish(call: Any) -> NoReturn:
    """Run ``call`` (a campaign or a resume), print its end, exit with its exit code."""
    from buddy.api.resume import CampaignFinished

    try:
        result: CampaignResult = call()
    except INPUT_ERRORS as e:
        fail(str(e))
    except CampaignFinished as e:
        fail(str(e), 0)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (InfrastructureError, OSError) as e:
        # unwrapped, so a URL and its fix can be copied whole
        err.print(f"cannot run the campaign: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ABORTED) from None
    s = result.summary
    err.print(
        f"{result.status}: {s.counts.succeeded}/{result.tasks} "
        f"succeeded in {s.wall_s:.1f} s; outputs in {result.out_dir}",
        highlight=False,
    )
    raise typer.Exit(result.exit_code)


def resume(
    campaign: Annotated[str, typer.Argument(help="Campaign id (its state must be in Redis).")],
    plan: Annotated[Path, typer.Option("--plan", help="The campaign's plan; its digest must match.")],
    schedule: ScheduleOpt = None,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    local_workers: Annotated[
        int, typer.Option("--local-workers", min=0, help="Local worker processes per agent (default 0).")
    ] = 0,
    tools: ToolsOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Continue a campaign from its first unfinished wave (after a crash or kill -9 of the coordinator).

    Tasks that have a final outcome are never run again; tasks whose attempt is still running
    on a worker are waited for, not duplicated. The plan (and schedule) must hash to the digest
    the campaign started with.
    """

    from buddy.api.resume import resume as resume_campaign

    _finish(
        lambda: resume_campaign(
            campaign,
            plan=plan,
            schedule=schedule,
            config=config,
            redis_url=redis_url,
            local_workers=local_workers,
            tools=split_values(tools),
            progress=progress,
            console=err,
        )
    )


def register(app: typer.Typer) -> None:
    """Add ``validate``, ``run`` and ``resume`` to ``app``."""
    app.command("validate")(validate)
    app.command("run")(run)
    app.command("resume")(resume)
