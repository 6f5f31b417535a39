"""``buddy doctor``: check a fleet's Redis, workers and Celery settings, and say how to fix each.

:func:`run_checks` returns one :class:`Check` per item, in this order:

``redis``
    Redis answers PING; its version is at least :data:`MIN_REDIS` (Buddy is tested on 6.2 and 7.x).
``maxmemory-policy``
    ``noeviction``: any other policy lets Redis drop queued messages, claims or leases under
    memory pressure, silently.
``persistence``
    AOF on (``appendonly yes``) and its last write succeeded: without it a Redis restart loses
    every queued message, claim, outcome and approval since the last snapshot.
``visibility-timeout``
    For every registered tool, ``timeout_s × max_attempts`` plus the retry delays
    (:meth:`RetryPolicy.delay_s`, at their jitter's upper bound) must be less than the broker's
    visibility timeout; otherwise Redis redelivers a message whose task is still running and a
    second worker starts it. The worst tool is named.
``workers``
    Every agent queue has a live worker: the agents that ever heartbeated, the agent queues
    holding messages, and the agents asked for.
``clock-skew``
    Each live worker's clock against the Redis server's (the heartbeat's ``clock:<worker>`` −
    ``redis_time:<worker>``, see :mod:`workers.heartbeat`) and this host's, within ``max_skew_s``.
    Heartbeat liveness compares one host's clock with another's.
``serializers``
    JSON only (or Celery's signed ``auth``) for tasks, events, results and what workers accept.

A check that needs Redis while Redis is unreachable fails with "not checked".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from celery import Celery
from pydantic import BaseModel

from buddy.config import Settings
from buddy.models import agent_queue
from buddy.state.store import Store
from buddy.tools.contract import RetryPolicy
from buddy.tools.registry import ToolRegistry

#: The oldest Redis Buddy supports.
MIN_REDIS = (6, 2)
#: Default largest clock skew (seconds) the clock check accepts.
MAX_SKEW_S = 1.0
AGENT_QUEUE_PREFIX = "buddy.agent."
SAFE_SERIALIZERS = {"json", "application/json"}


class Check(BaseModel):
    """One line of ``buddy doctor``: what was checked, whether it passed, what was found, the fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _redis_time(client: Any) -> float:
    sec, usec = client.time()
    return float(sec) + float(usec) / 1e6


# -- the checks ---------------------------------------------------------------------------


def check_redis(client: Any, display_url: str) -> tuple[Check, dict[str, Any] | None]:
    """PING and version; returns the check and ``INFO`` (None when Redis is unreachable)."""
    try:
        client.ping()
        info = client.info()
    except Exception as e:
        return Check(
            name="redis",
            ok=False,
            detail=f"cannot reach Redis at {display_url}: {e}",
            fix="start Redis or set BUDDY_REDIS_URL / --redis-url (redis://:PASSWORD@host:6379/0; "
            "rediss:// for TLS); check the password and that the port is open from here",
        ), None
    version = str(info.get("redis_version", "?"))
    try:
        parsed = tuple(int(x) for x in version.split(".")[:2])
    except ValueError:
        parsed = (0, 0)
    ok = parsed >= MIN_REDIS
    mode = info.get("redis_mode", "standalone")
    return Check(
        name="redis",
        ok=ok,
        detail=f"Redis {version} ({mode}) at {display_url}",
        fix="" if ok else f"upgrade Redis to {MIN_REDIS[0]}.{MIN_REDIS[1]} or newer",
    ), info


def check_maxmemory_policy(info: dict[str, Any]) -> Check:
    policy = str(info.get("maxmemory_policy", "?"))
    maxmem = int(info.get("maxmemory", 0) or 0)
    used = int(info.get("used_memory", 0) or 0)
    limit = f"maxmemory {maxmem / 2**20:.0f} MiB, used {used / 2**20:.1f} MiB" if maxmem else "no maxmemory"
    ok = policy == "noeviction"
    return Check(
        name="maxmemory-policy",
        ok=ok,
        detail=f"maxmemory-policy {policy} ({limit})"
        + ("" if ok else ": under memory pressure Redis would evict queued messages, claims or leases"),
        fix=""
        if ok
        else "redis-cli CONFIG SET maxmemory-policy noeviction, and put `maxmemory-policy noeviction` "
        "in redis.conf (ops/redis.conf); a full Redis then refuses writes, which Buddy reports",
    )


def check_persistence(info: dict[str, Any], client: Any) -> Check:
    aof = str(info.get("aof_enabled", "0")) == "1"
    last_write = str(info.get("aof_last_write_status", "ok"))
    rdb_status = str(info.get("rdb_last_bgsave_status", "ok"))
    try:
        fsync = _s(client.config_get("appendfsync").get("appendfsync", "?"))
        save = _s(client.config_get("save").get("save", "?")) or "off"
    except Exception:  # CONFIG is often renamed or denied on managed Redis
        fsync, save = "?", "?"
    detail = f"AOF {'on' if aof else 'off'} (appendfsync {fsync}), RDB snapshots: {save}"
    if aof and last_write != "ok":
        return Check(
            name="persistence",
            ok=False,
            detail=f"{detail}; the last AOF write failed ({last_write})",
            fix="look at the Redis log: the disk is full or read-only; Redis refuses writes until fixed",
        )
    if not aof:
        return Check(
            name="persistence",
            ok=False,
            detail=f"{detail}: a Redis restart loses queued messages, claims, outcomes and approvals "
            f"since the last snapshot (last bgsave {rdb_status})",
            fix="redis-cli CONFIG SET appendonly yes; CONFIG SET appendfsync everysec, and the same in "
            "redis.conf (ops/redis.conf; compose.yaml does it); see docs/operations.md, persistence",
        )
    ok = fsync in ("everysec", "always", "?")
    return Check(
        name="persistence",
        ok=ok,
        detail=detail,
        fix="" if ok else "CONFIG SET appendfsync everysec (appendfsync no may lose 30 s of writes)",
    )


def retry_delays_s(policy: RetryPolicy) -> float:
    """Upper bound of the seconds a task waits between its attempts (jitter at its maximum)."""
    plain = policy.model_copy(update={"jitter": 0.0})
    return sum(plain.delay_s(n) * (1 + policy.jitter) for n in range(1, policy.max_attempts))


def tool_budget_s(timeout_s: float, policy: RetryPolicy) -> float:
    """``timeout_s × max_attempts`` + the retry delays: the longest a task of the tool can take."""
    return timeout_s * policy.max_attempts + retry_delays_s(policy)


def check_visibility_timeout(registry: ToolRegistry, visibility_timeout_s: float) -> Check:
    rows = [(tool_budget_s(c.timeout_s, c.retry), c) for c in registry]
    if not rows:
        return Check(name="visibility-timeout", ok=True, detail="no tools registered")
    budget, worst = max(rows, key=lambda r: r[0])
    over = [c.name for b, c in sorted(rows, key=lambda r: -r[0]) if b >= visibility_timeout_s]
    what = (
        f"longest tool: {worst.name}, {worst.timeout_s:g} s × {worst.retry.max_attempts} attempts "
        f"+ {retry_delays_s(worst.retry):g} s of retry delays = {budget:g} s"
    )
    if not over:
        return Check(
            name="visibility-timeout",
            ok=True,
            detail=f"visibility timeout {visibility_timeout_s:g} s > {what}",
        )
    need = int(budget) + 60
    return Check(
        name="visibility-timeout",
        ok=False,
        detail=f"visibility timeout {visibility_timeout_s:g} s ≤ {what}; too long for it: "
        f"{', '.join(over)}. Redis would redeliver a message whose task still runs",
        fix=f"set BUDDY_VISIBILITY_TIMEOUT_S={need} (or more) on every worker and the coordinator, "
        f"or lower the timeout_s / retries of {worst.name}",
    )


def fleet_agents(store: Store, asked: Iterable[str] = ()) -> list[str]:
    """Agents whose queue needs a worker: those that ever heartbeated, those asked for, and
    every ``buddy.agent.<id>`` list in Redis that holds messages (SCAN)."""
    agents = {*store.agent_ids(), *asked}
    for key in store.r.scan_iter(match=AGENT_QUEUE_PREFIX + "*", count=500, _type="list"):
        name = _s(key).split("\x06\x16", 1)[0]
        agents.add(name[len(AGENT_QUEUE_PREFIX) :])
    return sorted(a for a in agents if a)


def check_workers(store: Store, agents: list[str], now: float) -> Check:
    if not agents:
        return Check(
            name="workers",
            ok=False,
            detail="no agent has ever had a worker, and no agent queue holds messages",
            fix="start workers: buddy worker --agent a1 (one per agent; see README, distributed quick start)",
        )
    parts, missing = [], []
    for a in agents:
        info = store.agent_info(a, now)
        if info.live_workers:
            parts.append(f"{a}: {len(info.live_workers)} live ({', '.join(info.live_workers)})")
        else:
            age = f"last heartbeat {info.heartbeat_age_s:.0f} s ago" if info.heartbeat_age_s else "never seen"
            parts.append(f"{a}: none ({age})")
            missing.append(a)
    if not missing:
        return Check(name="workers", ok=True, detail="; ".join(parts))
    starts = "; ".join(f"buddy worker --agent {a}" for a in missing)
    return Check(
        name="workers",
        ok=False,
        detail="; ".join(parts)
        + f". Tasks sent to {', '.join(agent_queue(a) for a in missing)} wait forever",
        fix=f"start a worker for each: {starts} (or scale its Deployment); for an agent that was "
        f"retired: redis-cli SREM buddy:agents <id>",
    )


def clock_skews(store: Store, agents: list[str], now: float) -> tuple[dict[str, float], list[str], float]:
    """``({worker: skew_s}, [live workers without a sample], redis_now)`` from the heartbeats' samples."""
    redis_now = _redis_time(store.r)
    skews: dict[str, float] = {}
    unsampled: list[str] = []
    for a in agents:
        live = store.live_workers(a, now)
        if not live:
            continue
        raw = {_s(k): _s(v) for k, v in store.r.hgetall(store.keys.agent(a)).items()}
        for w in live:
            clock, rtime = raw.get(f"clock:{w}"), raw.get(f"redis_time:{w}")
            if clock is None or rtime is None:
                unsampled.append(w)
                continue
            skews[w] = float(clock) - float(rtime)
    return skews, sorted(set(unsampled) - set(skews)), redis_now


def check_clock_skew(
    store: Store, agents: list[str], now: float, max_skew_s: float, local: Callable[[], float] = time.time
) -> Check:
    skews, unsampled, _ = clock_skews(store, agents, now)
    t0 = local()
    redis_now = _redis_time(store.r)
    t1 = local()
    skews["this host"] = (t0 + t1) / 2 - redis_now
    worst_name, worst = max(skews.items(), key=lambda kv: abs(kv[1]))
    spread = max(skews.values()) - min(skews.values())
    listing = ", ".join(f"{w} {s * 1000:+.0f} ms" for w, s in sorted(skews.items()))
    detail = (
        f"clocks against the Redis server's: {listing}; spread {spread * 1000:.0f} ms "
        f"(limit ±{max_skew_s * 1000:.0f} ms)"
    )
    if len(skews) == 1:
        detail += "; no live worker to compare"
    if unsampled:
        return Check(
            name="clock-skew",
            ok=False,
            detail=f"{detail}; no clock sample from {', '.join(unsampled)}",
            fix="upgrade those workers (their heartbeats predate clock samples) and run doctor again",
        )
    if abs(worst) > max_skew_s or spread > max_skew_s:
        return Check(
            name="clock-skew",
            ok=False,
            detail=f"{detail}; {worst_name} is {worst:+.3f} s off: heartbeats look older or newer "
            "than they are, so live workers may count as gone (or dead ones as live)",
            fix=f"run NTP (chrony or systemd-timesyncd) on {worst_name} and the Redis host",
        )
    return Check(name="clock-skew", ok=True, detail=detail)


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def check_serializers(app: Celery) -> Check:
    conf = app.conf
    signed = str(conf.task_serializer) == "auth"
    accept = _names(conf.accept_content)
    result_accept = _names(conf.result_accept_content) or accept
    findings = []
    if signed:
        if accept != ["auth"]:
            findings.append(f"accept_content {accept} (signing needs exactly ['auth'])")
    else:
        if str(conf.task_serializer) != "json":
            findings.append(f"task_serializer {conf.task_serializer}")
        if not accept or set(accept) - SAFE_SERIALIZERS:
            findings.append(f"accept_content {accept}")
    if str(conf.event_serializer) not in ("json", "auth"):
        findings.append(f"event_serializer {conf.event_serializer}")
    if str(conf.result_serializer) != "json":
        findings.append(f"result_serializer {conf.result_serializer}")
    if set(result_accept) - SAFE_SERIALIZERS - ({"auth"} if signed else set()):
        findings.append(f"result_accept_content {result_accept}")
    mode = "signed (auth over json)" if signed else "JSON only"
    detail = (
        f"{mode}: task_serializer {conf.task_serializer}, accept_content {accept}, "
        f"event_serializer {conf.event_serializer}, result_serializer {conf.result_serializer}"
    )
    if not findings:
        return Check(name="serializers", ok=True, detail=detail)
    return Check(
        name="serializers",
        ok=False,
        detail=f"{detail}; unsafe: {'; '.join(findings)}: a worker accepting pickle runs code "
        "from anyone who can write to Redis",
        fix="build the Celery app with buddy.infra.transport.make_celery and do not override the serializer "
        "settings; for signing set BUDDY_SIGNING_KEY on every process",
    )


def _not_checked(name: str, why: str) -> Check:
    return Check(name=name, ok=False, detail=f"not checked: {why}", fix="fix the redis check first")


def run_checks(
    settings: Settings,
    store: Store,
    app: Celery,
    registry: ToolRegistry,
    *,
    agents: Iterable[str] = (),
    display_url: str = "",
    max_skew_s: float = MAX_SKEW_S,
    now: float | None = None,
) -> list[Check]:
    """Every check, in the module docstring's order. ``agents``: agents that must have a worker
    besides the known ones; ``display_url``: the Redis URL to show (redacted); ``now``: epoch seconds.
    """
    now = time.time() if now is None else now
    transport_vt = (app.conf.broker_transport_options or {}).get("visibility_timeout")
    vt = float(transport_vt if transport_vt is not None else settings.visibility_timeout_s)
    redis_check, info = check_redis(store.r, display_url or "the configured URL")
    checks = [redis_check]
    if info is None:
        checks += [_not_checked(n, "Redis unreachable") for n in ("maxmemory-policy", "persistence")]
    else:
        checks += [check_maxmemory_policy(info), check_persistence(info, store.r)]
    checks.append(check_visibility_timeout(registry, vt))
    if info is None:
        checks += [_not_checked(n, "Redis unreachable") for n in ("workers", "clock-skew")]
    else:
        try:
            names = fleet_agents(store, agents)
            checks.append(check_workers(store, names, now))
            checks.append(check_clock_skew(store, names, now, max_skew_s))
        except Exception as e:  # Redis went away mid-way, or a command is denied
            checks += [_not_checked(n, f"Redis error: {e}") for n in ("workers", "clock-skew")]
    checks.append(check_serializers(app))
    return checks
