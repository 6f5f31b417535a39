"""``python -m buddy`` against the wrong Redis: every command exits 3 within seconds, no traceback.

A private ``redis-server`` with ``requirepass`` on a free port (never 127.0.0.1:6379) and a
free port nobody listens on. The processes run a few at a time (one fewer than the cores) so
that each one's wall time is its own, not the queue's. ``tests/unit/infra/test_redis_errors.py``
runs every command against every fault in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from buddy.infra.redis_server import EmbeddedRedis
from tests.helpers import free_port, private_redis
from tests.unit.infra.test_redis_errors import commands, write_plan

pytestmark = pytest.mark.integration
PASSWORD = "fleet-pw-7c41"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    with private_redis(password=PASSWORD, port=free_port()) as server:
        yield server


def _timed(argv: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "buddy", *argv], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )
    return time.monotonic() - start, proc


def test_every_command_fails_fast_on_a_wrong_password_or_a_refused_port(
    locked_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    write_plan(tmp_path)
    cmds = commands(tmp_path)
    port = locked_redis.port
    wrong = f"redis://:wrong-{PASSWORD}@127.0.0.1:{port}/0"
    none = f"redis://127.0.0.1:{port}/0"
    refused = f"redis://127.0.0.1:{free_port()}/0"
    cases = [(name, wrong, "put the right password in the URL") for name in cmds]
    cases += [("status", none, "put the password in the URL"), ("worker", refused, "start Redis there")]
    # one core is left to the rest of the machine: each process's wall time is then its own
    with ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 2) - 1)) as pool:
        results = list(pool.map(lambda c: _timed([*cmds[c[0]], "--redis-url", c[1]], tmp_path), cases))
    shown = {wrong: f"redis://:***@127.0.0.1:{port}/0", none: none, refused: refused}
    for (name, url, fix), (elapsed, proc) in zip(cases, results, strict=True):
        what = f"{name} on {shown[url]}: {elapsed:.1f} s, exit {proc.returncode}\n{proc.stderr}"
        assert elapsed < 6, what
        assert proc.returncode == 3, what
        assert f"cannot reach Redis at {shown[url]}:" in proc.stderr, what
        assert fix in proc.stderr and "BUDDY_REDIS_URL" in proc.stderr, what
        assert PASSWORD not in proc.stderr + proc.stdout, what
        assert "Traceback" not in proc.stderr, what
