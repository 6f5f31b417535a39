"""buddy doctor: each check against the session's private Redis (and a closed port), and the command."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis
import typer
from pydantic import BaseModel
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from buddy.cli.ops import register
from buddy.config import Settings
from buddy.infra.doctor import (
    Check,
    check_clock_skew,
    check_serializers,
    check_visibility_timeout,
    check_workers,
    fleet_agents,
    run_checks,
    tool_budget_s,
)
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import make_celery
from buddy.state.store import Store
from buddy.tools import RetryPolicy, ToolContext, tool
from buddy.tools.registry import ToolRegistry, default_registry
from tests.helpers import private_redis
from workers.heartbeat import clock_sample


class _Args(BaseModel):
    pass


class _Result(BaseModel):
    pass


def _registry(timeout_s: float, retry: RetryPolicy) -> ToolRegistry:
    reg = ToolRegistry()

    @tool("slow.thing", args=_Args, result=_Result, timeout_s=timeout_s, retry=retry, registry=reg)
    def slow(args: _Args, ctx: ToolContext) -> _Result:
        """A tool with a known time budget."""
        return _Result()

    @tool("quick.thing", args=_Args, result=_Result, timeout_s=1.0, registry=reg)
    def quick(args: _Args, ctx: ToolContext) -> _Result:
        """A fast tool."""
        return _Result()

    return reg


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture
def rstore(real_redis: redis.Redis) -> Store:
    return Store(real_redis, stale_s=10.0)


def test_visibility_timeout_budget_names_the_worst_tool() -> None:
    policy = RetryPolicy(max_attempts=3, backoff="fixed", initial_s=10.0)
    assert tool_budget_s(100.0, policy) == 100 * 3 + 10 + 10
    reg = _registry(100.0, policy)
    bad = check_visibility_timeout(reg, 320)
    assert not bad.ok
    assert (
        "slow.thing" in bad.detail
        and "320 s" in bad.detail
        and "quick.thing" not in bad.detail.split(":")[-1]
    )
    assert "BUDDY_VISIBILITY_TIMEOUT_S=380" in bad.fix
    good = check_visibility_timeout(reg, 321)
    assert good.ok and "slow.thing" in good.detail and good.fix == ""
    jitter = RetryPolicy(max_attempts=2, backoff="fixed", initial_s=10.0, jitter=0.5)
    assert tool_budget_s(1.0, jitter) == 2 + 15  # the delay's upper bound


def test_builtin_tools_fit_the_default_visibility_timeout() -> None:
    """The longest built-in call is a one-hour sleep (3610 s, one attempt): the 7200 s default
    covers every built-in; one hour does not."""
    assert check_visibility_timeout(default_registry(), Settings().visibility_timeout_s).ok
    short = check_visibility_timeout(default_registry(), 3600)
    assert not short.ok and "sleep" in short.detail


def test_redis_checks_on_the_private_redis(rstore: Store, redis_url: str) -> None:
    checks = _by_name(run_checks(Settings(), rstore, make_celery(redis_url), default_registry()))
    assert list(checks) == [
        "redis", "maxmemory-policy", "persistence", "visibility-timeout", "workers", "clock-skew", "serializers",
    ]  # fmt: skip
    assert checks["redis"].ok and checks["redis"].detail.startswith("Redis ")
    assert checks["maxmemory-policy"].ok, checks["maxmemory-policy"]
    assert "noeviction" in checks["maxmemory-policy"].detail
    # the session's Redis runs without AOF: the check fails and says how to fix it
    persistence = checks["persistence"]
    assert not persistence.ok
    assert "AOF off" in persistence.detail
    assert "appendonly yes" in persistence.fix and "appendfsync everysec" in persistence.fix
    assert checks["serializers"].ok
    assert not checks["workers"].ok and "buddy worker --agent a1" in checks["workers"].fix


def test_maxmemory_policy_that_evicts_fails(rstore: Store, redis_url: str) -> None:
    rstore.r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        checks = _by_name(run_checks(Settings(), rstore, make_celery(redis_url), default_registry()))
    finally:
        rstore.r.config_set("maxmemory-policy", "noeviction")
    check = checks["maxmemory-policy"]
    assert not check.ok and "allkeys-lru" in check.detail
    assert "CONFIG SET maxmemory-policy noeviction" in check.fix


def test_workers_every_agent_queue_needs_a_live_worker(rstore: Store) -> None:
    now = time.time()
    rstore.heartbeat("a1-1@h", ["a1"])
    rstore.r.rpush("buddy.agent.a2", "waiting message")  # a queue with messages and no worker
    rstore.r.rpush("buddy.agent.a4\x06\x166", "priority message")
    agents = fleet_agents(rstore, ["a3"])
    assert agents == ["a1", "a2", "a3", "a4"]
    check = check_workers(rstore, agents, now)
    assert not check.ok
    assert "a1: 1 live (a1-1@h)" in check.detail
    assert "a2: none (never seen)" in check.detail
    for a in ("a2", "a3", "a4"):
        assert f"buddy worker --agent {a}" in check.fix
    assert check_workers(rstore, ["a1"], now).ok
    assert not check_workers(rstore, [], now).ok


def test_clock_skew_from_heartbeat_samples(rstore: Store) -> None:
    now = time.time()
    for w in ("w1@h", "w2@h"):
        rstore.heartbeat(w, ["a1"])
        clock_sample(rstore.r, w, ["a1"])
    raw = rstore.r.hgetall("buddy:agent:a1")
    assert {b"clock:w1@h", b"redis_time:w1@h", b"clock_rtt:w1@h"} <= set(raw)
    ok = check_clock_skew(rstore, ["a1"], now, max_skew_s=1.0)
    assert ok.ok, ok
    assert "w1@h" in ok.detail and "this host" in ok.detail

    # w2's clock runs 5 s ahead of the Redis server's
    rtime = float(rstore.r.hget("buddy:agent:a1", "redis_time:w2@h"))
    rstore.r.hset("buddy:agent:a1", "clock:w2@h", repr(rtime + 5.0))
    bad = check_clock_skew(rstore, ["a1"], now, max_skew_s=1.0)
    assert not bad.ok
    assert "w2@h is +5.000 s off" in bad.detail
    assert "NTP" in bad.fix

    # a live worker without a sample (an older worker) cannot be checked
    rstore.heartbeat("old@h", ["a1"])
    assert "no clock sample from old@h" in check_clock_skew(rstore, ["a1"], now, 10.0).detail


def test_serializers() -> None:
    app = make_celery("redis://127.0.0.1:1/0")
    assert check_serializers(app).ok
    app.conf.accept_content = ["json", "pickle"]
    bad = check_serializers(app)
    assert not bad.ok and "pickle" in bad.detail and "make_celery" in bad.fix
    app = make_celery("redis://127.0.0.1:1/0")
    app.conf.task_serializer = "pickle"
    assert not check_serializers(app).ok
    app = make_celery("redis://127.0.0.1:1/0")
    app.conf.update(task_serializer="auth", event_serializer="auth", accept_content=["auth"])
    signed = check_serializers(app)
    assert signed.ok and signed.detail.startswith("signed")


def test_unreachable_redis_fails_fast_and_skips_what_needs_it() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    start = time.monotonic()
    checks = _by_name(
        run_checks(
            Settings(), Store(dead), make_celery("redis://127.0.0.1:1/0"), default_registry(), display_url="x"
        )
    )
    assert time.monotonic() - start < 5
    assert not checks["redis"].ok and "cannot reach Redis at x" in checks["redis"].detail
    assert checks["redis"].fix
    for name in ("maxmemory-policy", "persistence", "workers", "clock-skew"):
        assert not checks[name].ok and checks[name].detail.startswith("not checked")
    assert checks["serializers"].ok  # needs no Redis


# -- the command ----------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def test_doctor_command_fails_on_the_private_redis(cli: typer.Typer, redis_url: str) -> None:
    res = CliRunner().invoke(cli, ["doctor", "--redis-url", redis_url, "--json"])
    assert res.exit_code == 1, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert {r["name"]: r["ok"] for r in rows}["persistence"] is False
    assert all(r["fix"] for r in rows if not r["ok"])


@pytest.fixture
def healthy_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis with AOF and a password (skipped without redis-server; fails under CI)."""
    with private_redis(appendonly=True, password="doctor-pw-0f3e") as server:
        yield server


def test_doctor_command_passes_on_a_healthy_fleet(
    cli: typer.Typer, healthy_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDDY_VISIBILITY_TIMEOUT_S", "20000")  # sleep/flaky may take 3 hours
    store = Store(healthy_redis.client())
    store.heartbeat("a1-1@h", ["a1"])
    clock_sample(store.r, "a1-1@h", ["a1"])
    res = CliRunner().invoke(cli, ["doctor", "--redis-url", healthy_redis.url], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "all checks passed" in res.output
    assert "doctor-pw-0f3e" not in res.output  # the URL is shown redacted
    res = CliRunner().invoke(cli, ["doctor", "--redis-url", healthy_redis.url, "--agents", "a1,a2", "--json"])
    assert res.exit_code == 1
    [workers] = [json.loads(x) for x in res.output.splitlines() if '"workers"' in x]
    assert not workers["ok"] and "buddy worker --agent a2" in workers["fix"]


def test_flower_refuses_the_network_without_auth(cli: typer.Typer) -> None:
    res = CliRunner().invoke(cli, ["flower", "--address", "0.0.0.0"])
    assert res.exit_code == 2 and "--basic-auth" in res.output
    res = CliRunner().invoke(cli, ["flower", "--basic-auth", "no-colon"])
    assert res.exit_code == 2 and "user:password" in res.output
