"""Integration fixtures: a private Redis per module and real ``buddy worker`` processes.

The Redis is not flushed between the tests of a module: the workers' queue bindings live
in it. Campaign ids keep the tests apart.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from buddy.errors import InfrastructureError
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.models import AgentSpec
from buddy.state.store import Store

JSON_PKG = Path(sysconfig.get_paths()["stdlib"]) / "json"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis()
    try:
        server.start()
    except InfrastructureError as e:
        if IN_CI:
            raise
        pytest.skip(f"no Redis server: {e}")
    yield server
    server.stop()


def wait_for_workers(url: str, agents: list[str], timeout_s: float = 30.0) -> None:
    store = Store(redis_client(url))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(store.live_workers(a) for a in agents):
            return
        time.sleep(0.1)
    raise AssertionError(f"workers for {agents} did not heartbeat within {timeout_s} s")


@pytest.fixture(scope="module")
def fleet(fleet_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """Three agents, one worker process each (prefork, 2 children), shell/python allow-lists set."""
    logs = tmp_path_factory.mktemp("worker-logs")
    f = LocalFleet(
        fleet_redis.url,
        [AgentSpec(id="a1"), AgentSpec(id="a2"), AgentSpec(id="a3")],
        env={"BUDDY_SHELL_ALLOW": sys.executable, "BUDDY_PYTHON_ALLOW": "json", "BUDDY_TOOLS": ""},
        log_dir=logs,
    )
    f.start()
    try:
        wait_for_workers(fleet_redis.url, ["a1", "a2", "a3"])
        yield f
    finally:
        f.stop()


def buddy(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``buddy`` CLI in a subprocess; returns the finished process (text output)."""
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


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A local http.server serving the stdlib json package; yields (base url, request log)."""
    log: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            log.append(self.requestline)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(JSON_PKG)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
