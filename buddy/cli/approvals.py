"""``buddy approvals list|approve|deny``: the approval requests of HIGH/CRITICAL tasks, decided from
any machine that reaches the campaign's Redis (:class:`buddy.safety.gates.Approvals`).

Who decided is the OS account running the command (``user@host``,
:func:`buddy.safety.gates.operator`), never a name typed on the command line: ``--by`` is
refused (exit 2); free text goes in ``--comment/-m`` (``--reason`` is the same option) and is
stored as the decision's reason. Without ``--redis-url`` the command finds a running embedded
campaign's Redis (:mod:`buddy.cli.context`)."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

import typer
from rich.table import Table

from buddy.cli.context import EXIT_INVALID, CliContext, fail, out
from buddy.cli.options import RedisOpt

approvals_app = typer.Typer(help="List, approve and deny approval requests of HIGH/CRITICAL tasks.")


@approvals_app.command("list")
def approvals_list(
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign id; none: recent campaigns' requests.")
    ] = None,
    pending_only: Annotated[bool, typer.Option("--pending", help="Only undecided requests.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    redis_url: RedisOpt = None,
) -> None:
    """Show approval requests: task, wave, risk, tool, status, who decided and when."""
    from buddy.safety.gates import Approvals

    cli = CliContext.connect(redis_url, campaign=campaign)
    approvals = Approvals(cli.store)
    cids = [campaign] if campaign else cli.call(approvals.campaigns)
    rows = [
        a
        for cid in cids
        for a in cli.call(partial(approvals.get, cid))
        if not pending_only or a.status == "pending"
    ]
    if as_json:
        for a in rows:
            print(a.model_dump_json())
        return
    table = Table(title="approval requests")
    cols = ["task", "wave", "risk", "tool", "status", "by", "decided at", "reason", "args"]
    if campaign is None:
        cols.insert(0, "campaign")
    for col in cols:
        table.add_column(col, overflow="fold")
    for a in rows:
        cells = [a.task_id, str(a.wave), a.risk.value, a.tool, a.status, a.by or "–",
                 a.decided_at or "–", a.reason or "–", a.summary[:80]]  # fmt: skip
        table.add_row(*([a.campaign_id, *cells] if campaign is None else cells))
    out.print(table)


#: ``--by`` is refused: who decides is the OS account running the command, not a claim.
BY_REFUSED = (
    "--by is no longer accepted: the decision is recorded as the OS user running this command "
    "({who}); put free text in --comment/-m"
)


def _refuse_by(value: str | None) -> str | None:
    if value is not None:
        from buddy.safety.gates import operator

        fail(BY_REFUSED.format(who=operator()))
    return value


CommentOpt = Annotated[
    str,
    typer.Option(
        "--comment",
        "-m",
        "--reason",
        help="Free text recorded with the decision (its reason); who decided is always the OS user@host.",
    ),
]
ByOpt = Annotated[str | None, typer.Option("--by", hidden=True, callback=_refuse_by, expose_value=True)]


def _decide(
    campaign: str,
    tasks: list[str] | None,
    wave: int | None,
    status: Literal["approved", "denied"],
    comment: str,
    redis_url: str | None,
) -> None:
    """Decide ``campaign``'s pending requests of ``tasks`` and of ``wave``, recorded as
    :func:`buddy.safety.gates.operator` (``user@host`` of the OS account) with ``comment`` as
    the reason. Exit 1 when one was already decided, 2 when one has no request."""
    from buddy.safety.gates import Approvals, operator

    cli = CliContext.connect(redis_url, campaign=campaign)
    approvals = Approvals(cli.store)
    ids = list(tasks or [])
    if wave is not None:
        ids += [a.task_id for a in cli.call(lambda: approvals.get(campaign)) if a.wave == wave]
    if not ids:
        fail("name the tasks (TASK…) or a wave (--wave N)")
    by = operator()
    result = cli.call(lambda: approvals.decide(campaign, ids, status, by=by, reason=comment))
    bad = {t: r for t, r in result.items() if r != "decided"}
    for t, r in result.items():
        out.print(f"{t}: {f'{status} by {by}' if r == 'decided' else r}", highlight=False)
    if bad:
        raise typer.Exit(EXIT_INVALID if any(r == "no request" for r in bad.values()) else 1)


@approvals_app.command("approve")
def approvals_approve(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    tasks: Annotated[list[str] | None, typer.Argument(help="Task ids.")] = None,
    wave: Annotated[int | None, typer.Option("--wave", help="Every pending request of wave N.")] = None,
    comment: CommentOpt = "",
    by: ByOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Approve pending requests (from any machine). Recorded: the OS user@host running this
    command, the time, and the --comment."""
    _decide(campaign, tasks, wave, "approved", comment, redis_url)


@approvals_app.command("deny")
def approvals_deny(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    tasks: Annotated[list[str] | None, typer.Argument(help="Task ids.")] = None,
    comment: CommentOpt = "",
    wave: Annotated[int | None, typer.Option("--wave", help="Every pending request of wave N.")] = None,
    by: ByOpt = None,
    redis_url: RedisOpt = None,
) -> None:
    """Deny pending requests: those tasks end `denied` and nothing of them runs. A --comment
    (why) is required; it is recorded with the OS user@host and shown in the outcome."""
    if not comment:
        fail("--comment/-m is required to deny: say why (it is shown in the task's outcome)")
    _decide(campaign, tasks, wave, "denied", comment, redis_url)


def register(app: typer.Typer) -> None:
    """Add the ``approvals`` group to ``app``."""
    app.add_typer(approvals_app, name="approvals")
