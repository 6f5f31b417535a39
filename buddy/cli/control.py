"""Commands that read or steer campaigns through their Redis, from any machine: ``status``,
``agents``, ``abort``, ``review`` and ``rollback``.

Each one resolves and probes its Redis once (:class:`buddy.cli.context.CliContext`): a Redis
that does not answer is reported with its fix and exit 3 before the command does anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from buddy.cli.context import CliContext, fail, out
from buddy.cli.options import RedisOpt, ToolsOpt, split_values
from buddy.config import get_settings
from buddy.models import agent_queue


class ReviewMark(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    retry = "retry"


def campaign_state(c: Mapping[str, str]) -> str:
    """A campaign's status as ``buddy status`` shows it, from its hash ``c``: ``status``, and
    while it lasts ``paused (<Pause.describe()>)`` (field ``paused``, :class:`buddy.models.Pause`)
    and ``waiting for approval (n tasks, wave w, times out at …)`` (field ``approval_wait``,
    :class:`buddy.coordinator.approvals.ApprovalWait`) in place of ``running``."""
    from buddy.coordinator.approvals import APPROVAL_WAIT_FIELD, ApprovalWait
    from buddy.models import Pause

    status = c.get("status") or "?"
    shown = status
    if status == "paused" and c.get("paused"):
        try:
            shown = f"paused ({Pause.model_validate_json(c['paused']).describe()})"
        except ValueError:
            shown = "paused"
    if status in ("running", "paused") and c.get(APPROVAL_WAIT_FIELD):
        try:
            wait = ApprovalWait.model_validate_json(c[APPROVAL_WAIT_FIELD]).describe()
        except ValueError:
            wait = "waiting for approval"
        shown = wait if status == "running" else f"{shown}; {wait}"
    return shown


def status(
    campaign: Annotated[str | None, typer.Argument(help="Campaign id; none lists recent campaigns.")] = None,
    redis_url: RedisOpt = None,
) -> None:
    """Show campaigns and their waves, read from Redis: running, paused (why, by whom, since
    when) or waiting for approval (how many tasks, which wave, until when), or how it ended."""
    cli = CliContext.connect(redis_url, campaign=campaign)
    store = cli.store
    with cli.redis_errors():
        if campaign is None:
            table = Table(title="campaigns")
            for col in ("campaign", "status", "mode", "tasks", "waves", "current wave", "created"):
                table.add_column(col, overflow="fold")
            for cid in store.campaign_ids():
                c = store.campaign(cid)
                table.add_row(
                    cid, Text(campaign_state(c)), c.get("mode", ""), c.get("tasks", ""), c.get("waves", ""),
                    c.get("current_wave", ""), c.get("created_at", ""),
                )  # fmt: skip
            out.print(table)
            return
        c = store.campaign(campaign)
        if not c:
            fail(f"no campaign {campaign!r} in Redis at {cli.shown}")
        out.print(
            f"[bold]{escape(campaign)}[/]: {escape(campaign_state(c))} (mode {c.get('mode')}, "
            f"{c.get('tasks')} tasks, {c.get('waves')} waves, outputs {escape(c.get('out_dir', ''))})"
        )
        table = Table()
        for col in ("wave", "dispatched", "done", "failed", "running", "started"):
            table.add_column(col)
        for n in range(1, int(c.get("current_wave") or 0) + 1):
            w = store.wave_counters(campaign, n)
            if w:
                table.add_row(
                    str(n), w.get("dispatched", "0"), w.get("done", "0"), w.get("failed", "0"),
                    w.get("running", "0"), w.get("started_at", ""),
                )  # fmt: skip
        out.print(table)


def agents(redis_url: RedisOpt = None) -> None:
    """Show every agent's state: status, live workers, slots, in flight, processed, failed.

    ``slots`` is the agent's capacity: the sum of its live workers' pool sizes (processes or
    threads) as their last heartbeats reported them, each worker's in brackets."""
    cli = CliContext.connect(redis_url)
    store = cli.store
    with cli.redis_errors():
        table = Table(title="agents")
        for col in (
            "agent",
            "queue",
            "status",
            "live workers",
            "slots",
            "heartbeat age s",
            "in flight",
            "processed",
            "failed",
            "params",
        ):
            table.add_column(col)
        ids = store.agent_ids()
        for aid, a in store.agents_info(ids).items():
            table.add_row(
                aid,
                agent_queue(aid),
                a.status,
                ", ".join(f"{w} [{a.pools[w]}]" if w in a.pools else w for w in a.live_workers) or "–",
                str(a.capacity) if a.capacity is not None else "–",
                f"{a.heartbeat_age_s:.1f}" if a.heartbeat_age_s is not None else "–",
                str(a.in_flight),
                str(a.processed),
                str(a.failed),
                ", ".join(f"{k}={a.params[k]}" for k in ("concurrency", "confidence_weight") if k in a.params)
                or "–",
            )
        out.print(table)


def abort(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    reason: Annotated[str, typer.Option("--reason")] = "requested by an operator",
    redis_url: RedisOpt = None,
) -> None:
    """Stop a running campaign from another shell: no further wave is sent; it exits 3."""
    from buddy.safety.gates import operator

    cli = CliContext.connect(redis_url)
    store = cli.store
    info = cli.call(lambda: store.campaign(campaign))
    if not info:
        fail(f"no campaign {campaign!r} in Redis at {cli.shown}")
    if info.get("status") not in ("running", "paused"):
        fail(f"campaign {campaign} is {info.get('status')}, not running", 1)
    cli.call(lambda: store.request_abort(campaign, f"{reason} (by {operator()})"))
    out.print(f"abort requested for {campaign}; its coordinator stops within a second")


def review(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    task: Annotated[str, typer.Argument(help="A task that ended needs_review or lost.")],
    mark: Annotated[ReviewMark, typer.Option("--mark", help="What really happened, or run it again.")],
    reason: Annotated[str, typer.Option("--reason")] = "",
    redis_url: RedisOpt = None,
) -> None:
    """Settle a task an operator must look at: mark it succeeded or failed, or `retry` it
    (the outcome is removed and `buddy resume` runs the task again)."""
    from buddy.models import TaskStatus
    from buddy.safety.gates import operator
    from buddy.state.lifecycle import transition

    cli = CliContext.connect(redis_url)
    store = cli.store
    o = cli.call(lambda: store.outcomes(campaign, [task])).get(task)
    if o is None:
        fail(f"campaign {campaign} has no outcome for task {task!r}")
    if o.status not in (TaskStatus.NEEDS_REVIEW, TaskStatus.LOST):
        fail(f"task {task} is {o.status.value}; only needs_review or lost tasks are reviewed", 1)
    who = f"operator {operator()}"
    why = reason or f"marked {mark.value} in review"
    if mark is ReviewMark.retry:
        move = transition(campaign, task, o.status, TaskStatus.QUEUED, by=who, reason=why)
        cli.call(lambda: store.forget_outcome(campaign, task, move))
        out.print(f"{task}: its outcome is removed; run `buddy resume {campaign} --plan …` to run it again")
        return
    status = TaskStatus(mark.value)
    move = transition(campaign, task, o.status, status, by=who, reason=why)
    settled = o.model_copy(
        update={"status": status, "error_msg": f"{o.error_msg or ''} [review: {why}]".strip()}
    )
    cli.call(lambda: store.replace_outcome(settled, move))
    out.print(f"{task}: {o.status.value} → {status.value}")


def rollback(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    wave: Annotated[int | None, typer.Option("--wave", help="Only this wave (default: every wave).")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the workers.")
    ] = 300,
    redis_url: RedisOpt = None,
    tools: ToolsOpt = None,
) -> None:
    """Compensate a campaign's succeeded reversible tasks, newest first, through its agents' workers.

    Needs the campaign's Redis (a fleet's; an embedded campaign's Redis is gone with it) and a
    live worker for each agent that ran a task to undo. Irreversible tasks are listed, not undone.
    """
    from buddy.coordinator.rollback import compensate
    from buddy.infra.transport import make_dispatcher
    from buddy.tools.registry import default_registry

    cli = CliContext.connect(redis_url)
    store = cli.store
    info = cli.call(lambda: store.campaign(campaign))
    if not info:
        fail(f"no campaign {campaign!r} in Redis at {cli.shown}")
    registry = default_registry([*get_settings().tools, *split_values(tools)])
    outcomes = cli.call(lambda: store.outcomes(campaign))
    events = cli.call(
        lambda: compensate(
            make_dispatcher(cli.url),
            store,
            campaign,
            outcomes.values(),
            registry,
            wave=wave,
            timeout_s=timeout,
        ),
    )
    table = Table(title=f"rollback of {campaign}")
    for col in ("task", "wave", "agent", "status", "detail"):
        table.add_column(col)
    for e in events:
        table.add_row(e.task_id, str(e.wave or "–"), e.agent_id or "–", e.status, e.error or e.reason or "–")
    out.print(table)
    out_dir = Path(info.get("out_dir") or "")
    if out_dir.is_dir() and events:
        from buddy.outputs.campaign import CampaignFiles
        from buddy.outputs.writer import OutputWriter

        # the events, and the wave files and tool log of the compensated tasks, rewritten
        finals = cli.call(lambda: store.outcomes(campaign, [e.task_id for e in events]))
        CampaignFiles(OutputWriter(out_dir), []).rollbacks(events, finals)
        out.print(f"appended to {out_dir / OutputWriter.ROLLBACKS}; the wave files say rolled_back")
    if any(e.status == "failed" for e in events):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``status``, ``agents``, ``abort``, ``review`` and ``rollback``."""
    for command in (status, agents, abort, review, rollback):
        app.command(command.__name__)(command)
