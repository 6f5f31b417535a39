"""Helpers the unit and integration tests share: one place for "skip here, fail under CI".

A test that needs something the machine may lack (a ``redis-server``, RabbitMQ, Chromium)
calls :func:`require` or :func:`unavailable`: on a laptop the test is *skipped* with the
reason; under ``CI=true`` it *fails*, so a CI image that lost a dependency cannot go green
by skipping everything (dramatiq's ``check_redis`` does the same).

Private Redis servers come from :func:`start_redis` / :func:`private_redis`: each one is an
:class:`~buddy.infra.redis_server.EmbeddedRedis` on a unix socket in a temp directory
(optionally also on a free 127.0.0.1 port); no test ever touches another Redis.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from buddy.errors import InfrastructureError
from buddy.infra.redis_server import EmbeddedRedis, find_redis_server
from buddy.infra.transport import redis_client
from buddy.state.store import Store

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
"""True under ``CI=true`` (or 1/yes): a missing dependency is then a failure, not a skip."""


def unavailable(reason: str) -> NoReturn:
    """Skip the test with ``reason`` on a laptop; fail it with ``reason`` under ``CI=true``."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing dependency fails the run)")
    pytest.skip(reason)


def require(condition: object, reason: str) -> None:
    """Go on if ``condition`` holds; otherwise skip locally and fail under CI.

    ``condition`` is a truth value or an exception (what a failed start raised): an
    exception never holds, and its message is appended to ``reason``.
    """
    if isinstance(condition, BaseException):
        unavailable(f"{reason}: {condition}")
    if not condition:
        unavailable(reason)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_server_path() -> str:
    """The ``redis-server`` binary the tests would start (skips locally / fails under CI without one)."""
    try:
        return find_redis_server()
    except InfrastructureError as e:
        unavailable(f"no Redis server: {e}")


def start_redis(**kw: Any) -> EmbeddedRedis:
    """Start a private :class:`EmbeddedRedis` (keyword arguments as its own) and return it.

    Without a working ``redis-server`` the test is skipped locally and fails under CI.
    The caller stops it (or use :func:`private_redis`).
    """
    server = EmbeddedRedis(**kw)
    try:
        return server.start()
    except InfrastructureError as e:
        server.stop()
        unavailable(f"no Redis server: {e}")


@contextmanager
def private_redis(**kw: Any) -> Iterator[EmbeddedRedis]:
    """:func:`start_redis` as a ``with`` block (and a fixture body): stopped on leaving it."""
    server = start_redis(**kw)
    try:
        yield server
    finally:
        server.stop()


def wait_for_workers(url: str, agents: list[str], timeout_s: float = 30.0) -> None:
    """Wait until every agent in ``agents`` has a live (heartbeating) worker on the Redis at ``url``."""
    store = Store(redis_client(url))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(store.live_workers(a) for a in agents):
            return
        time.sleep(0.1)
    raise AssertionError(f"workers for {agents} did not heartbeat within {timeout_s} s")


def buddy(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``buddy`` CLI in a subprocess without the caller's ``BUDDY_*`` variables; text output."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "buddy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )
