"""Leases under real processes: fencing holds across 8 processes, and a stopped holder's effect is refused."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.models import ResourceClaim
from buddy.state.leases import LeaseManager

pytestmark = pytest.mark.integration

RESOURCES = ["res:a", "res:b", "res:c"]


def _worker(url: str, n: int, seed: int, out: str) -> None:
    import random

    rng = random.Random(seed)
    m = LeaseManager(redis_client(url), ttl_s=5, wait_s=30, poll_s=0.001)
    rows = []
    for _ in range(n):
        r = rng.choice(RESOURCES)
        with m.hold([ResourceClaim(name=r)]) as lease:
            lease.check()  # the commit point: only a current, newest token may write
            start = time.monotonic()
            time.sleep(rng.uniform(0, 0.0005))
            end = time.monotonic()
            rows.append((r, lease.tokens[r], start, end))
    Path(out).write_text(json.dumps(rows))


def test_eight_processes_two_hundred_leases_each(fleet_redis: EmbeddedRedis, tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(fleet_redis.url, 200, i, str(tmp_path / f"{i}.json")))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
        assert p.exitcode == 0
    rows = [tuple(x) for i in range(8) for x in json.loads((tmp_path / f"{i}.json").read_text())]
    assert len(rows) == 1600
    for r in RESOURCES:
        effects = sorted((x for x in rows if x[0] == r), key=lambda x: x[2])
        tokens = [x[1] for x in effects]
        # in time order, tokens strictly increase (each grant got a new, larger token) ...
        assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
        # ... and no two accepted effects on one resource overlap in time
        for prev, nxt in itertools.pairwise(effects):
            assert prev[3] <= nxt[2], f"{r}: effects under tokens {prev[1]} and {nxt[1]} overlap"


HOLDER = r"""
import sys
from pathlib import Path
from buddy.errors import LeaseLostError
from buddy.state.leases import LeaseManager
from buddy.models import ResourceClaim
from buddy.tools import ToolContext, default_registry
from buddy.infra.transport import redis_client

url, target = sys.argv[1], Path(sys.argv[2])
contract = default_registry().get("file.write")
args = contract.parse_args({"path": str(target), "content": "stale holder\n"})
claims = contract.claims(args, target.parent)
m = LeaseManager(redis_client(url), ttl_s=1.0, wait_s=5)
with m.hold(claims, owner="holder") as lease:
    ctx = ToolContext(campaign_id="c", task_id="t", workdir=target.parent, fencing_token=lease.fencing_token,
                      lease_check=lease.check)
    print("acquired", lease.fencing_token, flush=True)
    sys.stdin.readline()  # the parent stops us here, past the TTL
    try:
        contract.execute(args, ctx)
        print("written", flush=True)
    except LeaseLostError as e:
        print("refused", e.error_type, flush=True)
"""


def test_a_stopped_lease_holder_cannot_commit_after_its_lease_was_taken(
    fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    target = tmp_path / "shared.txt"
    target.write_text("original\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, fleet_redis.url, str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        first = holder.stdout.readline().split()
        assert first[0] == "acquired"
        os.kill(holder.pid, signal.SIGSTOP)  # its renewal thread stops too
        time.sleep(1.5)  # past the 1 s TTL
        from buddy.tools import ToolContext, default_registry

        contract = default_registry().get("file.write")
        args = contract.parse_args({"path": str(target), "content": "new holder\n"})
        m = LeaseManager(redis_client(fleet_redis.url), ttl_s=5, wait_s=2)
        with m.hold(contract.claims(args, tmp_path), owner="newcomer") as lease:
            assert lease.fencing_token == int(first[1]) + 1
            ctx = ToolContext(campaign_id="c", task_id="t2", workdir=tmp_path, lease_check=lease.check)
            contract.execute(args, ctx)
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.write("go\n")
        holder.stdin.flush()
        verdict = holder.stdout.readline().split()
        holder.wait(timeout=10)
    finally:
        holder.kill()
    assert verdict == ["refused", "lease_lost"]
    assert target.read_text() == "new holder\n"  # the stale effect never landed
