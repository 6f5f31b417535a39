"""The state files that advertise a running embedded Redis (:mod:`buddy.infra.redis_server`), and
how ``buddy`` commands without ``--redis-url`` pick one (:func:`buddy.cli.context.resolve_redis`).

Every test points ``XDG_STATE_HOME`` at its own directory: the machine's own campaigns are never
seen, and the private Redis servers are the tests' own (never 127.0.0.1:6379)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer

from buddy.api.fleet import Fleet
from buddy.cli.context import CliContext
from buddy.config import get_settings
from buddy.infra.redis_server import (
    EmbeddedRecord,
    EmbeddedRedis,
    process_start,
    running_embedded,
    state_dir,
    write_record,
)
from buddy.infra.transport import DEFAULT_REDIS_URL
from buddy.models import AgentSpec, utcnow
from buddy.state.keys import Keys
from tests.helpers import private_redis


@pytest.fixture(autouse=True)
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state"


@pytest.fixture
def second_redis() -> Iterator[EmbeddedRedis]:
    with private_redis() as server:
        yield server


def advertise(
    server: EmbeddedRedis, pid: int | None = None, campaigns: list[str] | None = None
) -> EmbeddedRecord:
    """A state file for ``server`` owned by ``pid`` (default: this process)."""
    pid = pid or os.getpid()
    record = EmbeddedRecord(
        url=server.url, pid=pid, pid_start=process_start(pid), started_at=utcnow(), campaigns=campaigns or []
    )
    return write_record(record)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_state_files_live_under_xdg_state_home_readable_by_their_user_only(
    state_home: Path, redis_server: EmbeddedRedis
) -> None:
    record = advertise(redis_server, campaigns=["c-1"])
    assert state_dir() == state_home / "buddy" / "embedded"
    assert record.path is not None and record.path.parent == state_dir()
    assert record.path.name.startswith(f"{os.getpid()}-") and record.path.suffix == ".json"
    assert oct(record.path.stat().st_mode & 0o777) == "0o600"
    assert oct(state_dir().stat().st_mode & 0o777) == "0o700"
    [found] = running_embedded()
    assert (found.url, found.pid, found.campaigns, found.path) == (
        redis_server.url,
        os.getpid(),
        ["c-1"],
        record.path,
    )


def test_a_stale_state_file_is_removed_and_garbage_is_skipped(
    redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    dead = advertise(redis_server, pid=dead_pid())
    reused = write_record(
        EmbeddedRecord(url=redis_server.url, pid=os.getpid(), pid_start=-1, started_at=utcnow())
    )  # this pid, but a process that started at another time
    gone = write_record(
        EmbeddedRecord(url=f"unix://{tmp_path}/gone.sock", pid=os.getpid(), started_at=utcnow())
    )  # its socket is gone
    garbage = state_dir() / "123-garbage.json"
    garbage.write_text("{not json")
    live = advertise(redis_server)

    assert [r.path for r in running_embedded()] == [live.path]
    assert dead.path and reused.path and gone.path
    assert not dead.path.exists() and not reused.path.exists() and not gone.path.exists()
    assert garbage.exists()  # not ours to judge; never used


def test_without_anything_configured_the_running_embedded_redis_is_used_and_said(
    redis_server: EmbeddedRedis, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    advertise(redis_server, campaigns=["c-1"])
    cli = CliContext.connect()
    assert (cli.url, cli.source, cli.defaulted) == (redis_server.url, "embedded", True)
    err = capsys.readouterr().err
    assert "no --redis-url and no BUDDY_REDIS_URL: using the running embedded Redis" in err
    assert redis_server.url in err and f"pid {os.getpid()}" in err
    monkeypatch.delenv("BUDDY_REDIS_URL", raising=False)
    cli.export()  # the Celery app and the processes it starts go there too
    assert os.environ["BUDDY_REDIS_URL"] == redis_server.url


def test_a_flag_or_the_environment_wins_over_the_embedded_redis(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    advertise(redis_server)
    assert CliContext("redis://flag-host:6381/0").source == "flag"
    monkeypatch.setenv("BUDDY_REDIS_URL", "redis://env-host:6380/0")
    get_settings.cache_clear()
    assert (CliContext().url, CliContext().source) == ("redis://env-host:6380/0", "env")


def test_nothing_running_is_the_default_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    cli = CliContext(campaign="c-1")
    assert (cli.url, cli.source) == (DEFAULT_REDIS_URL, "default")  # resolved, never probed here
    assert cli._note == f"note: no --redis-url and no BUDDY_REDIS_URL: using {DEFAULT_REDIS_URL}"


def test_among_several_the_one_holding_the_campaign_is_picked_else_exit_2(
    redis_server: EmbeddedRedis, second_redis: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
) -> None:
    redis_server.client().flushdb()
    advertise(redis_server, campaigns=["c-listed"])
    advertise(second_redis)
    second_redis.client().hset(Keys.campaign("c-live"), "status", "running")  # not in its state file yet

    assert CliContext(campaign="c-listed").url == redis_server.url
    picked = CliContext(campaign="c-live")
    assert (picked.url, picked.source) == (second_redis.url, "embedded")
    assert "embedded Redis of campaign c-live" in picked._note
    for campaign in (None, "c-unknown"):
        with pytest.raises(typer.Exit) as info:
            CliContext(campaign=campaign)
        assert info.value.exit_code == 2
        err = capsys.readouterr().err
        assert "2 embedded Redis are running" in err
        assert f"--redis-url {redis_server.url}" in err and f"--redis-url {second_redis.url}" in err
    assert not second_redis.client().exists(Keys.campaign("c-unknown"))


def test_one_running_embedded_redis_is_used_even_for_a_campaign_it_does_not_hold(
    redis_server: EmbeddedRedis,
) -> None:
    advertise(redis_server)
    cli = CliContext(campaign="c-elsewhere")  # never the default while an embedded Redis runs
    assert (cli.url, cli.source) == (redis_server.url, "embedded")
    assert "no running embedded Redis holds campaign c-elsewhere" in cli._note


def test_a_fleet_advertises_its_embedded_redis_while_it_runs(tmp_path: Path) -> None:
    fleet = Fleet([AgentSpec(id="a1")], workers_per_agent=0, log_dir=tmp_path / "logs")
    with fleet:
        [record] = running_embedded()
        assert (record.url, record.pid, record.cwd) == (fleet.url, os.getpid(), os.getcwd())
        fleet.add_campaign("c-1")
        fleet.add_campaign("c-1")
        [record] = running_embedded()
        assert record.campaigns == ["c-1"]
        assert CliContext(campaign="c-1").url == fleet.url
        path = record.path
    assert path is not None and not path.exists()
    assert running_embedded() == []
