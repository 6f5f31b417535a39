"""Commands that stop work safely, from any machine that reaches the Redis: ``lock``,
``unlock``, ``pause``, ``unpause`` and ``cancel`` (docs/architecture.md, "Pause, lock and
cancel").

The lock holds every live campaign of the fleet; a pause holds one campaign, whatever its
mode; a cancel ends tasks that have not started. Each is recorded with the OS user who ran
it (:func:`buddy.safety.gates.operator`) in the campaign's events and, by its coordinator, in
``state_transitions.jsonl``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from buddy.cli.context import CliContext, fail, out
from buddy.cli.options import RedisOpt

CampaignArg = Annotated[str, typer.Argument(help="Campaign id.")]


def lock(
    reason: Annotated[str, typer.Option("--reason", help="Why; every paused campaign shows it.")],
    redis_url: RedisOpt = None,
) -> None:
    """Lock the system: no task starts live; live campaigns pause (tasks already running
    finish) until `buddy unlock`. Mock and dry-run campaigns go on."""
    from buddy.safety import gates

    cli = CliContext.connect(redis_url)
    got = cli.call(lambda: gates.lock(cli.store, reason))
    if got.reason != reason:
        out.print(f"already locked: {got.describe()}", highlight=False)
        raise typer.Exit(1)
    out.print(f"locked: {got.describe()}", highlight=False)


def unlock(redis_url: RedisOpt = None) -> None:
    """Remove the system lock: paused live campaigns go on where they stopped."""
    from buddy.safety import gates

    cli = CliContext.connect(redis_url)
    was = cli.call(lambda: gates.unlock(cli.store))
    out.print(f"unlocked (was: {was.describe()})" if was else "was not locked", highlight=False)


def _running(cli: CliContext, campaign: str) -> dict[str, str]:
    info = cli.call(lambda: cli.store.campaign(campaign))
    if not info:
        fail(f"no campaign {campaign!r} in Redis at {cli.shown}")
    if info.get("status") not in ("running", "paused"):
        fail(f"campaign {campaign} is {info.get('status')}: it is not running", 1)
    return info


def pause(
    campaign: CampaignArg,
    reason: Annotated[str, typer.Option("--reason", help="Why; shown in status and the report.")] = (
        "requested by an operator"
    ),
    redis_url: RedisOpt = None,
) -> None:
    """Pause a campaign: no further task of it starts (tasks already running finish) until
    `buddy unpause`."""
    from buddy.safety.gates import operator
    from buddy.state.control import PauseRequest

    cli = CliContext.connect(redis_url)
    _running(cli, campaign)
    request = PauseRequest(reason=reason, by=operator())
    cli.call(lambda: cli.store.request_pause(campaign, request))
    cli.call(lambda: cli.store.event(campaign, "pause_requested", reason=reason, by=request.by))
    out.print(f"pause requested for {campaign}; its coordinator pauses within a second", highlight=False)


def unpause(campaign: CampaignArg, redis_url: RedisOpt = None) -> None:
    """Let a campaign paused by `buddy pause` go on where it stopped (a campaign paused by the
    system lock goes on after `buddy unlock`)."""
    from buddy.safety.gates import operator

    cli = CliContext.connect(redis_url)
    _running(cli, campaign)
    was = cli.call(lambda: cli.store.clear_pause(campaign))
    if not was:
        fail(f"campaign {campaign} was not paused by `buddy pause`", 1)
    cli.call(lambda: cli.store.event(campaign, "unpause_requested", by=operator()))
    lock = cli.call(lambda: cli.store.system_lock())
    note = f"; it stays paused while the system is locked ({lock.describe()})" if lock else ""
    out.print(f"unpaused {campaign}{note}", highlight=False)


def cancel(
    campaign: CampaignArg,
    tasks: Annotated[list[str], typer.Argument(help="Task ids that must not start.")],
    redis_url: RedisOpt = None,
) -> None:
    """Cancel tasks that have not started: each ends `cancelled` (its dependents follow
    their trigger rule). A task that already ended or is running is left alone (exit 1)."""
    from buddy.safety.gates import operator

    cli = CliContext.connect(redis_url)
    _running(cli, campaign)
    store = cli.store
    ended = cli.call(lambda: store.outcomes(campaign, tasks))
    claims = cli.call(lambda: store.r.mget([store.keys.claim(campaign, t) for t in tasks]))
    started = {t for t, c in zip(tasks, claims, strict=True) if c is not None and t not in ended}
    asked = [t for t in tasks if t not in ended and t not in started]
    by = operator()
    cli.call(lambda: store.request_cancel(campaign, asked, by))
    if asked:
        cli.call(lambda: store.event(campaign, "cancel_requested", tasks=asked, by=by))
        out.print(
            f"cancel requested for {len(asked)} task(s) of {campaign}: {', '.join(asked)}; "
            "each ends cancelled unless it starts first",
            highlight=False,
        )
    for t, o in ended.items():
        out.print(f"{t}: already ended {o.status.value}; left alone", highlight=False)
    for t in sorted(started):
        out.print(f"{t}: already started; it finishes", highlight=False)
    if ended or started:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``lock``, ``unlock``, ``pause``, ``unpause`` and ``cancel``."""
    for command in (lock, unlock, pause, unpause, cancel):
        app.command(command.__name__)(command)
