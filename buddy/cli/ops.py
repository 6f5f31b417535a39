"""Operations commands of ``buddy``: ``flower``, ``exporter``, ``doctor`` and ``deadletter``.

``buddy deadletter list|purge`` reads or empties ``buddy:deadletter``, the messages workers
refused (:mod:`buddy.state.deadletter`). :func:`register` adds them all to the ``buddy`` typer app
(:mod:`buddy.cli.app` calls it last). Their Redis is resolved and probed by
:class:`buddy.cli.context.CliContext`, as every command's.
``python -m buddy.cli.ops`` runs them on their own.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from buddy.cli.context import EXIT_ABORTED, CliContext, err, fail, out
from buddy.cli.options import RedisOpt, ToolsOpt, split_values
from buddy.config import get_settings
from buddy.infra.logs import redact_secrets


def _quick_client(url: str, timeout_s: float) -> Any:
    """A redis-py client that gives up fast: one retry (a reconnect) and ``timeout_s`` per command;
    a scrape or a check must answer, not wait through redis-py's retries with backoff."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url, socket_connect_timeout=min(timeout_s, 5.0), socket_timeout=timeout_s, retry=Retry(NoBackoff(), 1)
    )


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port.")] = 5555,
    address: Annotated[
        str, typer.Option("--address", help="Address to bind; anything but loopback needs --basic-auth.")
    ] = "127.0.0.1",
    basic_auth: Annotated[
        list[str] | None,
        typer.Option("--basic-auth", help="user:password for HTTP basic auth (repeatable)."),
    ] = None,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Disable Flower's operations (revoke, shutdown, pool).")
    ] = False,
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="Allow a non-loopback address without --basic-auth."),
    ] = False,
    redis_url: RedisOpt = None,
) -> None:
    """Start Flower on the Buddy Celery app: workers, tasks and the agent queues' depth (Broker tab).

    Flower reads queue lengths from Redis for the queues its workers consume
    (buddy.agent.<id>, buddy.coordinator). /metrics (Prometheus) is served too.
    """
    auth = [a for a in basic_auth or [] if a]
    bad = [a for a in auth if ":" not in a or a.startswith(":")]
    if bad:
        fail("--basic-auth must be user:password")
    if not auth and not _is_loopback(address) and not insecure_no_auth:
        fail(
            f"Flower on {address} without --basic-auth would let anyone on the network revoke tasks "
            "and shut workers down: add --basic-auth user:password (or --insecure-no-auth)"
        )
    CliContext(redis_url).export().probe()  # the Celery app reads BUDDY_REDIS_URL
    from workers import app as celery_app

    argv = ["flower", f"--port={port}", f"--address={address}"]
    argv += [f"--basic-auth={a}" for a in auth]
    if read_only:
        argv.append("--read-only")
    celery_app.start(argv)


def exporter(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port of /metrics.")] = 9808,
    address: Annotated[str, typer.Option("--address", help="Address to bind.")] = "127.0.0.1",
    agent: Annotated[
        list[str] | None,
        typer.Option("--agent", help="Agent id to report even before any worker heartbeats (repeatable)."),
    ] = None,
    redis_url: RedisOpt = None,
) -> None:
    """Serve Prometheus metrics of the fleet: queue depth, live workers and heartbeat age per agent,
    and the messages workers dead-lettered (buddy_deadletter_total by reason).

    For a fleet without a running campaign (the coordinator's --metrics-port serves the same and
    the campaign's metrics). Values are read from Redis at each scrape.
    """
    from prometheus_client import CollectorRegistry

    from buddy.infra.prometheus import FleetCollector, serve
    from buddy.state.store import Store

    url = CliContext.connect(redis_url).url
    store = Store(_quick_client(url, timeout_s=5.0), stale_s=get_settings().heartbeat_stale_s)
    ids = split_values(agent)
    registry = CollectorRegistry()
    registry.register(FleetCollector(store, agents=ids))
    try:
        server = serve(registry, port, address)
    except OSError as e:
        fail(f"cannot serve metrics on {address}:{port}: {e}", EXIT_ABORTED)
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, _stop)
    err.print(
        f"serving fleet metrics of {redact_secrets(url)} on {server.url} (Ctrl-C to stop)",
        markup=False,
        highlight=False,
    )
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()


def doctor(
    redis_url: RedisOpt = None,
    agents: Annotated[
        str | None, typer.Option("--agents", help="Agents that must have a live worker, e.g. a1,a2.")
    ] = None,
    max_skew: Annotated[
        float, typer.Option("--max-skew", min=0.001, help="Largest clock skew accepted, seconds.")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per check.")] = False,
    tools: ToolsOpt = None,
) -> None:
    """Check Redis, persistence, the visibility timeout, workers, clocks and serializers; explain fixes.

    Exit code 0 only when every check passes, else 1.
    """
    from buddy.errors import ConfigError, ContractError, RedisUnavailable
    from buddy.infra.doctor import Check, run_checks
    from buddy.infra.probes import check_redis
    from buddy.infra.transport import make_celery
    from buddy.state.store import Store
    from buddy.tools.registry import default_registry

    settings = get_settings()
    url = CliContext(redis_url).url  # probed below: an unreachable Redis is a failed check
    try:
        registry = default_registry([*settings.tools, *split_values(tools)])
    except ContractError as e:
        fail(str(e))
    unreachable: RedisUnavailable | None = None
    try:  # the probe's diagnosis (wrong password, refused, TLS…) and fix go in the redis check
        check_redis(url, settings.connect_timeout_s)
    except RedisUnavailable as e:
        unreachable = e
    except ConfigError as e:
        fail(str(e))
    store = Store(_quick_client(url, timeout_s=10.0), stale_s=settings.heartbeat_stale_s)
    app = make_celery(url, settings)
    asked = [x.strip() for x in (agents or "").split(",") if x.strip()]
    checks = run_checks(
        settings, store, app, registry, agents=asked, display_url=redact_secrets(url), max_skew_s=max_skew
    )
    if unreachable is not None:
        why = Check(
            name="redis",
            ok=False,
            detail=f"cannot reach Redis at {unreachable.url}: {unreachable.reason}",
            fix=unreachable.fix,
        )
        checks = [why if c.name == "redis" and not c.ok else c for c in checks]
    if as_json:
        for c in checks:
            print(c.model_dump_json())
    else:
        table = Table(title="buddy doctor", show_lines=True)
        table.add_column("check", no_wrap=True)
        table.add_column("", no_wrap=True)
        table.add_column("found", overflow="fold")
        table.add_column("fix", overflow="fold")
        for c in checks:
            status = Text("ok", style="green") if c.ok else Text("FAIL", style="bold red")
            table.add_row(c.name, status, Text(c.detail), Text(c.fix or "–"))
        out.print(table)
        failed = [c.name for c in checks if not c.ok]
        out.print(
            "all checks passed" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}"
        )
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


#: Characters of a dead letter's payload ``buddy deadletter list`` shows in its table.
PAYLOAD_PREVIEW = 200

deadletter_app = typer.Typer(
    name="deadletter",
    help="Messages workers refused (undecodable, invalid kwargs...): list or purge buddy:deadletter.",
    no_args_is_help=True,
)


def _deadletter_client(redis_url: str | None) -> tuple[Any, str]:
    """A fast-failing client for the command's Redis (:class:`CliContext`: probed first) and its
    URL, redacted."""
    url = CliContext.connect(redis_url).url
    return _quick_client(url, timeout_s=10.0), redact_secrets(url)


@deadletter_app.command("list")
def deadletter_list(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="Newest N records.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON record per line, payload whole.")] = False,
    redis_url: RedisOpt = None,
) -> None:
    """Show the newest dead letters: when, why, from which queue and worker, and the message.

    Records are newest first; the table shows the start of each payload, --json all of it
    (up to the 64 KiB a record keeps).
    """
    from buddy.state import deadletter

    client, shown = _deadletter_client(redis_url)
    records = deadletter.list_(client, limit)
    if as_json:
        for r in records:
            print(r.model_dump_json())
        return
    if not records:
        out.print(f"no dead letters in {shown}", markup=False, highlight=False)
        return
    total = deadletter.count(client)
    title = Text(f"dead letters in {shown} ({len(records)} of {total}, newest first)")
    table = Table(title=title, show_lines=True)
    for name in ("when (UTC) / reason", "queue / worker", "task / campaign", "error", "payload"):
        table.add_column(name, overflow="fold")
    for r in records:
        preview = r.payload
        if len(preview) > PAYLOAD_PREVIEW:
            cut = ", truncated" if r.truncated else ""
            preview = f"{preview[:PAYLOAD_PREVIEW]}… ({r.size} bytes{cut}; --json shows it whole)"
        table.add_row(
            Text(f"{r.at.strftime('%Y-%m-%d %H:%M:%S')}\n{r.reason}"),
            Text(f"{r.queue or '–'}\n{r.worker or '–'}"),
            Text("\n".join(x for x in (r.task_name, r.campaign_id) if x) or "–"),
            Text(r.detail or "–"),
            Text(preview),
        )
    out.print(table)


@deadletter_app.command("purge")
def deadletter_purge(
    redis_url: RedisOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every kept dead letter (the buddy_deadletter_total counters stay)."""
    from buddy.state import deadletter

    client, shown = _deadletter_client(redis_url)
    n = deadletter.count(client)
    if n == 0:
        out.print(f"no dead letters in {shown}", markup=False, highlight=False)
        return
    if not yes and not typer.confirm(f"delete {n} dead letter(s) from {shown}?"):
        raise typer.Exit(1)
    removed = deadletter.purge(client)
    out.print(f"deleted {removed} dead letter(s) from {shown}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``flower``, ``exporter``, ``doctor`` and the ``deadletter`` group to ``app``."""
    app.command("flower")(flower)
    app.command("exporter")(exporter)
    app.command("doctor")(doctor)
    app.add_typer(deadletter_app, name="deadletter")


ops_app = typer.Typer(
    name="buddy", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
)
register(ops_app)

if __name__ == "__main__":
    ops_app()
