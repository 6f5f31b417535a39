"""``buddy worker``, a Celery worker on agents' queues, and ``buddy tools``, the contracts such a
worker runs.

``buddy worker`` exports ``--redis-url`` and ``--broker-url`` to its environment (the Celery app
of :mod:`workers` reads them there), probes both within seconds, imports the tool modules and
only then starts Celery: a wrong URL or a broken tool module fails the command, not the first
task.
"""

from __future__ import annotations

import json
import os
from typing import Annotated

import typer
from rich.table import Table

from buddy.cli.context import CliContext, fail, out
from buddy.cli.options import BrokerOpt, RedisOpt, RootOpt, ToolsOpt, set_root, split_values
from buddy.config import get_settings
from buddy.errors import ContractError
from buddy.models import agent_queue


def worker(
    agent: Annotated[
        list[str], typer.Option("--agent", help="Agent id whose queue to consume (repeatable).")
    ],
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1, help="Pool size.")] = None,
    pool: Annotated[str, typer.Option("--pool", "-P", help="prefork, threads or solo.")] = "prefork",
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Worker node name (default <agents>@host).")
    ] = None,
    redis_url: RedisOpt = None,
    broker_url: BrokerOpt = None,
    tools: ToolsOpt = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
    local: Annotated[
        bool, typer.Option("--local", hidden=True, help="Started by `buddy run`: skip mingle and gossip.")
    ] = False,
    inject_failure_rate: Annotated[
        float | None,
        typer.Option(
            "--inject-failure-rate",
            min=0.0,
            max=1.0,
            help="TESTING AID: fail this fraction (0-1) of attempts with a retryable InjectedFailure.",
        ),
    ] = None,
    coordinator_queue: Annotated[
        bool, typer.Option("--coordinator-queue/--no-coordinator-queue", help="Also run chord bodies.")
    ] = True,
    root: RootOpt = None,
) -> None:
    """Start a Celery worker on the agents' queues (buddy.agent.<id>) and buddy.coordinator."""
    from buddy.models import AGENT_ID_RE, COORDINATOR_QUEUE

    ids = split_values(agent)
    bad = [a for a in ids if not AGENT_ID_RE.match(a)]
    if not ids or bad:
        fail(f"--agent: bad agent id(s) {', '.join(bad) or '(none)'}: use 1-64 of A-Z a-z 0-9 _ . -")
    if pool not in ("prefork", "threads", "solo"):
        fail("--pool must be prefork, threads or solo")
    cli = CliContext(redis_url, broker_url).export()
    if tools:
        os.environ["BUDDY_TOOLS"] = ",".join([*get_settings().tools, *split_values(tools)])
    if inject_failure_rate is not None:
        os.environ["BUDDY_INJECT_FAILURE_RATE"] = str(inject_failure_rate)
    set_root(root)
    get_settings.cache_clear()
    cli.probe().probe_broker()  # a wrong URL or password: exit 3 now, not after Celery's 100 retries
    try:
        from buddy.tools.registry import default_registry

        default_registry(get_settings().tools)  # fail now, not on the first task
    except ContractError as e:
        fail(str(e))
    from workers import app as celery_app

    queues = [agent_queue(a) for a in ids] + ([COORDINATOR_QUEUE] if coordinator_queue else [])
    argv = ["worker", "-Q", ",".join(queues), "-P", pool, "-l", loglevel, "-E"]
    argv += ["-n", f"{name or '-'.join(ids)}@%h"]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if local:  # a private fleet has no neighbours to sync revokes with: start 1 s sooner
        argv += ["--without-mingle", "--without-gossip"]
    # Celery.worker_main drops the worker's exit code (an "Unrecoverable error" would exit 0 and
    # a supervisor restarting on failure only would leave the agent without a worker)
    code = celery_app.start(argv)
    if code:
        raise typer.Exit(code)


def tools_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Every contract with its argument schema.")] = False,
    tools: ToolsOpt = None,
) -> None:
    """List the registered tools and their contracts."""
    from buddy.tools.registry import default_registry

    try:
        registry = default_registry([*get_settings().tools, *split_values(tools)])
    except ContractError as e:
        fail(str(e))
    settings = get_settings()
    if as_json:
        print(json.dumps([c.describe() for c in registry], indent=2))
        return
    table = Table(title="tools")
    for col in (
        "name",
        "risk",
        "reversible",
        "idempotent",
        "exclusive",
        "timeout s",
        "retries",
        "description",
    ):
        table.add_column(col)
    for c in registry:
        table.add_row(
            c.name,
            c.risk.value,
            "yes" if c.reversible else "no",
            "yes" if c.idempotent else ("by args" if c.idempotent_of else "no"),
            "yes" if c.exclusive else "no",
            f"{c.timeout_s:g}",
            str(c.retry.max_attempts - 1),
            c.description,
        )
    out.print(table)
    shell = ", ".join(settings.shell_allow) or "(empty: shell runs nothing)"
    python = ", ".join(settings.python_allow) or "(empty: python.call runs nothing)"
    out.print(f"shell allow-list (BUDDY_SHELL_ALLOW): {shell}")
    out.print(f"python.call allow-list (BUDDY_PYTHON_ALLOW): {python}")


def register(app: typer.Typer) -> None:
    """Add ``worker`` and ``tools`` to ``app``."""
    app.command("worker")(worker)
    app.command("tools")(tools_cmd)
