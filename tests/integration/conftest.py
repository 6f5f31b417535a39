"""Integration fixtures: a private Redis per module and real ``buddy worker`` processes.

The Redis is not flushed between the tests of a module: the workers' queue bindings live
in it. Campaign ids keep the tests apart. Shared helpers (``buddy``, ``wait_for_workers``,
``start_redis`` …) live in :mod:`tests.helpers`.
"""

from __future__ import annotations

import http.server
import sys
import sysconfig
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.models import AgentSpec
from tests.helpers import private_redis, wait_for_workers

JSON_PKG = Path(sysconfig.get_paths()["stdlib"]) / "json"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet_redis() -> Iterator[EmbeddedRedis]:
    """The module's private Redis (unix socket); skipped locally / failed under CI without one."""
    with private_redis() as server:
        yield server


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
