"""The shape of the ``buddy`` command and the connection options every command shares.

:class:`buddy.cli.context.CliContext` resolves ``--redis-url`` / ``BUDDY_REDIS_URL`` / a running
embedded Redis (``test_embedded_state.py``) / 127.0.0.1:6379 and ``--broker-url`` /
``BUDDY_BROKER_URL`` once; nothing here connects to 127.0.0.1:6379 (the default is only
resolved, never probed). Probing a wrong Redis is
``tests/unit/infra/test_redis_errors.py``'s subject.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import redis
import typer
from typer.testing import CliRunner

from buddy.cli.app import app
from buddy.cli.context import CliContext
from buddy.config import get_settings
from buddy.infra.transport import DEFAULT_REDIS_URL

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_embedded_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No state file of a running embedded Redis (this machine's campaigns) is seen here."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


#: Every command of ``buddy`` and its flags, in the order ``buddy --help`` lists them.
COMMANDS: dict[str, set[str]] = {
    "validate": {"--schedule", "--config", "--agents", "--strategy", "--workdir", "--tools", "--conflict",
                 "--root"},
    "run": {"--schedule", "--config", "--agents", "--strategy", "--mode", "--workdir", "--out",
            "--redis-url", "--broker-url", "--local-workers", "--batch-size", "--worker-wait", "--tools",
            "--conflict", "--progress", "--no-progress", "--allow-critical", "--auto-approve",
            "--approval-timeout", "--max-fail-percentage", "--min-health", "--lock-timeout", "--auto-lock", "--no-auto-lock", "--fresh", "--notify-url",
            "--optimize", "--no-optimize",
            "--max-failures", "--rollback-on-abort", "--rollback-scope", "--wave-timeout", "--metrics-port",
            "--metrics-address", "--root"},
    "resume": {"--plan", "--schedule", "--config", "--redis-url", "--local-workers", "--tools", "--progress",
               "--no-progress"},
    "status": {"--redis-url"},
    "agents": {"--redis-url"},
    "abort": {"--reason", "--redis-url"},
    "review": {"--mark", "--reason", "--redis-url"},
    "rollback": {"--wave", "--timeout", "--redis-url", "--tools"},
    "lock": {"--reason", "--redis-url"},
    "unlock": {"--redis-url"},
    "pause": {"--reason", "--redis-url"},
    "unpause": {"--redis-url"},
    "cancel": {"--redis-url"},
    "profiles": {"--json", "--forget", "--redis-url"},
    "worker": {"--agent", "--concurrency", "-c", "--pool", "-P", "--name", "-n", "--redis-url", "--broker-url",
               "--tools", "--loglevel", "-l", "--local", "--inject-failure-rate", "--coordinator-queue",
               "--no-coordinator-queue", "--root"},
    "tools": {"--json", "--tools"},
    "flower": {"--port", "--address", "--basic-auth", "--read-only", "--insecure-no-auth", "--redis-url"},
    "exporter": {"--port", "--address", "--agent", "--redis-url"},
    "doctor": {"--redis-url", "--agents", "--max-skew", "--json", "--tools"},
    "approvals": set(),
    "deadletter": set(),
}  # fmt: skip
SUBCOMMANDS: dict[str, dict[str, set[str]]] = {
    "approvals": {
        "list": {"--pending", "--json", "--redis-url"},
        "approve": {"--wave", "--comment", "-m", "--reason", "--by", "--redis-url"},
        "deny": {"--comment", "-m", "--reason", "--wave", "--by", "--redis-url"},
    },
    "deadletter": {
        "list": {"--limit", "-n", "--json", "--redis-url"},
        "purge": {"--redis-url", "--yes", "-y"},
    },
}


def _flags(command: Any) -> set[str]:
    return {o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("-")} - {"--help"}


def test_every_command_and_its_flags_in_help_order() -> None:
    group: Any = typer.main.get_command(app)
    assert list(group.list_commands(None)) == list(COMMANDS)
    for name, flags in COMMANDS.items():
        assert _flags(group.commands[name]) == flags, name
    for name, subs in SUBCOMMANDS.items():
        sub = group.commands[name]
        assert {n: _flags(c) for n, c in sub.commands.items()} == subs, name


def test_help_lists_the_commands() -> None:
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    listed = [line.split()[1] for line in res.stdout.splitlines() if line.startswith("│ ") and len(line) > 2]
    assert [x for x in listed if x in COMMANDS] == list(COMMANDS)


# -- CliContext ------------------------------------------------------------------------------


def test_the_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDDY_REDIS_URL", "redis://env-host:6380/0")
    monkeypatch.setenv("BUDDY_BROKER_URL", "amqp://env-host:5672//")
    get_settings.cache_clear()
    cli = CliContext("redis://:pw@flag-host:6381/1", "amqp://flag-host:5672//")
    assert (cli.url, cli.broker_url) == ("redis://:pw@flag-host:6381/1", "amqp://flag-host:5672//")
    assert cli.shown == "redis://:***@flag-host:6381/1"
    env = CliContext()
    assert (env.url, env.broker_url) == ("redis://env-host:6380/0", "amqp://env-host:5672//")


def test_without_a_url_the_default_is_resolved_and_the_broker_is_the_redis() -> None:
    cli = CliContext()
    assert cli.url == DEFAULT_REDIS_URL == "redis://127.0.0.1:6379/0"
    assert cli.broker_url is None
    assert cli.defaulted and not CliContext("redis://flag-host:6381/0").defaulted


def test_the_default_redis_is_never_used_silently(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    probed: list[str] = []
    monkeypatch.setattr("buddy.cli.context.probe_redis", probed.append)  # no connection here
    CliContext().probe()
    assert probed == [DEFAULT_REDIS_URL]
    assert "no --redis-url and no BUDDY_REDIS_URL: using redis://127.0.0.1:6379/0" in capsys.readouterr().err
    CliContext("redis://flag-host:6381/0").probe()
    assert "no --redis-url" not in capsys.readouterr().err


def test_export_puts_only_the_given_flags_into_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUDDY_REDIS_URL", raising=False)
    monkeypatch.delenv("BUDDY_BROKER_URL", raising=False)
    CliContext().export()
    assert "BUDDY_REDIS_URL" not in os.environ and "BUDDY_BROKER_URL" not in os.environ
    CliContext("redis://flag-host:6381/0", "amqp://flag-host//").export()
    assert os.environ["BUDDY_REDIS_URL"] == "redis://flag-host:6381/0"
    assert get_settings().broker_url == "amqp://flag-host//"  # the settings are re-read


def test_connect_probes_once_and_builds_one_store(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr("buddy.cli.context.check_redis", lambda url, timeout_s: calls.append(url))
    cli = CliContext.connect(redis_url)
    assert cli.store is cli.store and cli.probe() is cli
    assert calls == [redis_url]
    assert cli.call(lambda: cli.store.r.ping())


def test_a_refused_port_exits_3_and_names_the_url_and_the_fix() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(typer.Exit) as info:
        CliContext.connect(f"redis://127.0.0.1:{port}/0")
    assert info.value.exit_code == 3


def test_a_redis_error_after_the_probe_is_exit_3_without_a_traceback(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = CliContext.connect(redis_url)

    def boom() -> None:
        raise redis.ConnectionError("gone")

    with pytest.raises(typer.Exit) as info:
        cli.call(boom)
    assert info.value.exit_code == 3
    with pytest.raises(typer.Exit), cli.redis_errors():
        boom()
    assert capsys.readouterr().err.count(f"cannot reach Redis at {cli.shown}: gone") == 2
