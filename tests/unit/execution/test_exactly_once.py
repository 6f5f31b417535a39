"""Exactly once per task, fencing all the way, and only dispatched work runs.

Two executors stand for two worker processes that receive the same batch (a visibility-timeout
redelivery, a resumed campaign); each test runs on fakeredis and on the session's real Redis.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from buddy.errors import RetryableToolError, ToolError
from buddy.execution.executor import Executor
from buddy.models import Mode, ResourceClaim, Risk, TaskSpec, TaskStatus
from buddy.safety.gates import approval_key
from buddy.state.claims import Claim, Claims
from buddy.state.keys import Keys
from buddy.state.leases import LeaseManager, fence_key, lease_key
from buddy.state.store import Store
from buddy.tools import RetryPolicy, ToolContext, ToolRegistry, tool

CID = "c1"


class Empty(BaseModel):
    pass


class LineArgs(BaseModel):
    path: str
    line: str = ""
    pause_s: float = 0.0


def registry(gate: threading.Event | None = None) -> ToolRegistry:
    reg = ToolRegistry()

    @tool("t.ledger", args=LineArgs, result=Empty, registry=reg, idempotent=False)
    def ledger(args: LineArgs, ctx: ToolContext) -> Empty:
        """Append a line (not idempotent), slowly."""
        time.sleep(args.pause_s)
        with open(ctx.path(args.path), "a") as f:
            f.write(args.line + "\n")
        return Empty()

    @tool("t.gated", args=LineArgs, result=Empty, registry=reg, idempotent=False)
    def gated(args: LineArgs, ctx: ToolContext) -> Empty:
        """Wait for the test to open the gate, then append."""
        assert gate is not None
        gate.wait(10)
        with open(ctx.path(args.path), "a") as f:
            f.write(args.line + "\n")
        return Empty()

    @tool("t.danger", args=LineArgs, result=Empty, registry=reg, risk=Risk.HIGH, idempotent=True)
    def danger(args: LineArgs, ctx: ToolContext) -> Empty:
        Path(ctx.path(args.path)).write_text("done")
        return Empty()

    def undo(args: LineArgs, data: dict[str, Any], ctx: ToolContext) -> None:
        ctx.check_lease()
        Path(data["path"]).write_text(data["old"])
        ctx.confirm_lease()

    @tool("t.rev", args=LineArgs, result=Empty, registry=reg, reversible=True, rollback=undo)
    def rev(args: LineArgs, ctx: ToolContext) -> Empty:
        """Write the line, then fail: the rollback restores the old text."""
        target = Path(ctx.path(args.path))
        ctx.record_undo({"path": str(target), "old": target.read_text()})
        ctx.check_lease()
        target.write_text(args.line)
        if args.pause_s:
            time.sleep(args.pause_s)
        raise ToolError("failed after its effect")

    @tool("t.stale", args=LineArgs, result=Empty, registry=reg, reversible=True, rollback=undo)
    def stale(args: LineArgs, ctx: ToolContext) -> Empty:
        """Check the lease, lose it while paused, commit, then confirm."""
        target = Path(ctx.path(args.path))
        ctx.record_undo({"path": str(target), "old": target.read_text()})
        ctx.check_lease()
        time.sleep(args.pause_s)
        target.write_text(args.line)
        ctx.confirm_lease()
        return Empty()

    @tool(
        "t.flaky",
        args=LineArgs,
        result=Empty,
        registry=reg,
        idempotent=True,
        retry=RetryPolicy(max_attempts=3),
    )
    def flaky(args: LineArgs, ctx: ToolContext) -> Empty:
        raise RetryableToolError("try again")

    return reg


def spec(tid: str, tool_name: str, tmp: Path, *, mode: Mode = Mode.LIVE, **args: Any) -> TaskSpec:
    return TaskSpec(task_id=tid, tool=tool_name, args=args, mode=mode, workdir=str(tmp))


def dispatch(store: Store, specs: list[TaskSpec], wave: int = 1) -> None:
    if not store.campaign(CID):
        store.create_campaign(CID, {"status": "running"})
    store.record_dispatch(CID, wave, [s.model_dump(mode="json") for s in specs])


def executor(store: Store, reg: ToolRegistry, name: str, **kw: Any) -> Executor:
    return Executor(store, reg, worker=name, stale_s=2.0, renew_s=0.1, **kw)


def test_a_second_delivery_of_a_batch_never_runs_a_task_twice(store: Store, tmp_path: Path) -> None:
    """Finding 1: the redelivered batch used to run the last task at the same moment as the first."""
    reg = registry()
    ledger = tmp_path / "ledger.txt"
    specs = [
        spec(f"t{i}", "t.ledger", tmp_path, path="ledger.txt", line=f"t{i}", pause_s=0.15) for i in range(5)
    ]
    dispatch(store, specs)
    results: dict[str, Any] = {}

    def deliver(name: str, delay: float) -> None:
        time.sleep(delay)
        results[name] = executor(store, reg, name).run_batch(CID, 1, "a1", specs, delivery="m:0")

    threads = [threading.Thread(target=deliver, args=(n, d)) for n, d in (("w1", 0.0), ("w2", 0.2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    lines = ledger.read_text().splitlines()
    assert sorted(lines) == [f"t{i}" for i in range(5)], lines  # each effect exactly once
    for name in ("w1", "w2"):
        assert sorted(results[name].done) == [(f"t{i}", "succeeded") for i in range(5)]
    assert {o.status for o in store.outcomes(CID).values()} == {TaskStatus.SUCCEEDED}


def test_an_attempt_whose_claim_was_taken_over_does_not_record_its_outcome(
    store: Store, tmp_path: Path
) -> None:
    """A paused worker's stale claim is taken over; when it wakes, its outcome is not written
    over what the attempt that took over decided."""
    gate = threading.Event()
    reg = registry(gate)
    s = spec("t1", "t.gated", tmp_path, path="ledger.txt", line="late")
    dispatch(store, [s])
    first = executor(store, reg, "w1")
    thread = threading.Thread(target=first.run_batch, args=(CID, 1, "a1", [s]), kwargs={"delivery": "m:0"})
    thread.start()
    deadline = time.monotonic() + 5
    while not store.r.get(Keys.claim(CID, "t1")) and time.monotonic() < deadline:
        time.sleep(0.01)
    # the coordinator (or another attempt) settles the task meanwhile
    other = Claim(worker="coordinator", attempt=1, started_at=0.0, state="closed", delivery="coordinator")
    store.r.set(Keys.claim(CID, "t1"), other.dump())
    store.r.hset(Keys.outcomes(CID), "t1", "{}")  # what it recorded stays
    gate.set()
    thread.join(10)
    assert store.r.hget(Keys.outcomes(CID), "t1") in (b"{}", "{}")
    events = [e for e in store.events(CID) if e["type"] == "stale_attempt"]
    assert events and events[0]["data"]["task_id"] == "t1"


def test_a_stale_claim_is_taken_over_with_compare_and_set(store: Store, tmp_path: Path) -> None:
    """Two deliveries that both find the same dead attempt: exactly one takes the claim over."""
    dead = Claim(worker="w0", attempt=1, started_at=1.0, heartbeat=1.0, delivery="m:0")
    store.r.set(Keys.claim(CID, "t1"), dead.dump())
    s = spec("t1", "t.ledger", tmp_path, mode=Mode.DRY_RUN, path="x", line="x")
    dispatch(store, [s])
    claims = Claims(store.r)
    mine = Claim(worker="w1", attempt=2, started_at=time.time(), heartbeat=time.time())
    theirs = Claim(worker="w2", attempt=2, started_at=time.time(), heartbeat=time.time())
    got1 = claims.acquire(CID, 1, {"t1": (dead.dump(), mine)}, 60)
    got2 = claims.acquire(CID, 1, {"t1": (dead.dump(), theirs)}, 60)
    assert got1["t1"][0] == 1 and got2["t1"][0] == 0
    assert claims.acquire(CID, 1, {"t1": (dead.dump(), mine)}, 60)["t1"][0] == 1  # a retried send
    store.r.hset(Keys.outcomes(CID), "t1", "{}")
    assert claims.acquire(CID, 1, {"t1": (mine.dump(), theirs)}, 60)["t1"][0] == -1


def test_renewal_stops_when_the_claim_was_taken_over(store: Store) -> None:
    from buddy.state.claims import HeldClaims

    claims = Claims(store.r)
    c = Claim(worker="w1", attempt=1, started_at=1.0, heartbeat=1.0)
    claims.acquire(CID, 1, {"t1": (None, c)}, 60)
    held = HeldClaims(claims, ttl_s=60, renew_s=60, clock=lambda: 5.0)
    held.hold(CID, {"t1": (c.dump(), c)})
    held.renew()
    assert Claim.model_validate_json(store.r.get(Keys.claim(CID, "t1"))).heartbeat == 5.0
    store.r.set(Keys.claim(CID, "t1"), c.model_copy(update={"worker": "w2"}).dump())
    held.renew()
    assert held.value(CID, "t1", None) == b""  # no longer held
    assert held.commit(CID, {"t1": (c.dump(), b"{}")}) == {"t1": False}
    assert store.r.hget(Keys.outcomes(CID), "t1") is None


# -- only dispatched work runs -------------------------------------------------------------------


def test_a_batch_for_a_campaign_nobody_started_is_refused(store: Store, tmp_path: Path) -> None:
    """Finding 4: a forged message for an unknown campaign ran file tools."""
    refused: list[tuple[str, int, list[str], str]] = []
    ex = executor(
        store,
        registry(),
        "w1",
        on_refused=lambda c, w, a, specs, why: refused.append((c, w, [s.task_id for s in specs], why)),
    )
    s = spec("t1", "t.ledger", tmp_path, path="ledger.txt", line="forged")
    res = ex.run_batch("c-forged", 1, "a1", [s])
    assert res.done == [] and res.refused == 1
    assert not (tmp_path / "ledger.txt").exists()
    assert store.outcomes("c-forged") == {}
    assert refused == [("c-forged", 1, ["t1"], "campaign c-forged does not exist")]


@pytest.mark.parametrize(
    "change",
    [{"mode": Mode.LIVE}, {"args": {"path": "ledger.txt", "line": "other"}}, {"task_id": "t9"}],
    ids=["mode", "args", "task"],
)
def test_a_task_that_differs_from_what_was_dispatched_is_refused(
    store: Store, tmp_path: Path, change: dict[str, Any]
) -> None:
    sent = spec("t1", "t.ledger", tmp_path, mode=Mode.MOCK, path="ledger.txt", line="x")
    dispatch(store, [sent])
    forged = sent.model_copy(update=change)
    res = executor(store, registry(), "w1").run_batch(CID, 1, "a1", [forged])
    assert res.refused == 1 and res.done == []
    assert not (tmp_path / "ledger.txt").exists()
    assert store.outcomes(CID) == {}


def test_another_wave_or_a_finished_campaign_is_refused(store: Store, tmp_path: Path) -> None:
    s = spec("t1", "t.ledger", tmp_path, mode=Mode.MOCK, path="ledger.txt", line="x")
    dispatch(store, [s], wave=2)
    ex = executor(store, registry(), "w1")
    assert ex.run_batch(CID, 1, "a1", [s]).refused == 1
    store.update_campaign(CID, status="aborted")
    assert ex.run_batch(CID, 2, "a1", [s]).refused == 1
    store.update_campaign(CID, status="running")
    assert ex.run_batch(CID, 2, "a1", [s]).done == [("t1", "succeeded")]


def test_a_high_risk_live_task_without_an_approval_record_is_denied(store: Store, tmp_path: Path) -> None:
    s = spec("t1", "t.danger", tmp_path, path="x.txt")
    dispatch(store, [s])
    ex = executor(store, registry(), "w1")
    assert ex.run_batch(CID, 1, "a1", [s]).done == [("t1", "denied")]
    assert not (tmp_path / "x.txt").exists()
    assert store.outcomes(CID)["t1"].error_type == "approval_missing"
    s2 = spec("t2", "t.danger", tmp_path, path="y.txt")
    dispatch(store, [s2])
    store.r.hset(approval_key(CID, "t2"), "status", "approved")
    assert ex.run_batch(CID, 1, "a1", [s2]).done == [("t2", "succeeded")]
    assert (tmp_path / "y.txt").read_text() == "done"


# -- fencing all the way ---------------------------------------------------------------------------


def leased_spec(tid: str, tool_name: str, tmp: Path, **args: Any) -> TaskSpec:
    s = spec(tid, tool_name, tmp, **args)
    return s.model_copy(update={"claims": [ResourceClaim(name="file:f", mode="write")]})


def steal(store: Store, resource: str = "file:f") -> int:
    """A newer holder takes the resource over (its lease expired): the fencing token grows."""
    store.r.delete(lease_key(resource))
    token = int(store.r.incr(fence_key(resource)))
    store.r.set(lease_key(resource), f"newer|{token}", px=60_000)
    return token


def test_a_rollback_after_the_lease_was_lost_is_refused_and_needs_review(
    store: Store, tmp_path: Path
) -> None:
    """Finding 2: the refused holder's rollback restored its old bytes over the newer holder's write."""
    (tmp_path / "f").write_text("old")
    s = leased_spec("t1", "t.rev", tmp_path, path="f", line="mine", pause_s=0.5)
    dispatch(store, [s])
    leases = LeaseManager(store.r, ttl_s=30)
    ex = executor(store, registry(), "w1", leases=leases)
    thread = threading.Thread(target=ex.run_batch, args=(CID, 1, "a1", [s]))
    thread.start()
    time.sleep(0.25)  # the effect is made; the tool is about to fail
    newer = steal(store)
    (tmp_path / "f").write_text("newer")  # the newer holder's write
    thread.join(10)
    assert (tmp_path / "f").read_text() == "newer"  # not rolled back over it
    o = store.outcomes(CID)["t1"]
    assert o.status is TaskStatus.NEEDS_REVIEW
    assert o.fencing_token == newer - 1 and o.current_fencing_token == newer
    assert [e.error_type for e in o.errors][-1] == "RollbackFenced"


def test_a_commit_that_lost_its_lease_meanwhile_needs_review(store: Store, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("old")
    s = leased_spec("t1", "t.stale", tmp_path, path="f", line="stale", pause_s=0.4)
    dispatch(store, [s])
    ex = executor(store, registry(), "w1", leases=LeaseManager(store.r, ttl_s=30))
    thread = threading.Thread(target=ex.run_batch, args=(CID, 1, "a1", [s]))
    thread.start()
    time.sleep(0.2)  # paused between its lease check and the commit
    newer = steal(store)
    thread.join(10)
    o = store.outcomes(CID)["t1"]
    assert o.status is TaskStatus.NEEDS_REVIEW
    assert o.error_type == "stale_commit"
    assert o.current_fencing_token == newer
    assert (tmp_path / "f").read_text() == "stale"  # not "undone" with another stale write


def test_file_write_rollback_never_undoes_a_newer_writers_bytes(tmp_path: Path) -> None:
    """Compensation after another writer changed the file refuses (ChangedSinceWrite) and leaves it."""
    from buddy.tools import default_registry

    c = default_registry().get("file.write")
    target = tmp_path / "f.txt"
    target.write_text("old")
    ctx = ToolContext(campaign_id=CID, task_id="t1", workdir=tmp_path)
    args = c.parse_args({"path": "f.txt", "content": "mine"})
    c.execute(args, ctx)
    undo = ctx.undo
    assert undo is not None and target.read_text() == "mine"
    target.write_text("newer")
    with pytest.raises(ToolError) as e:
        assert c.rollback is not None
        c.rollback(args, undo, ctx)
    assert e.value.error_type == "ChangedSinceWrite"
    assert target.read_text() == "newer"
    target.write_text("mine")  # still what this task wrote: the rollback restores the old bytes
    c.rollback(args, undo, ctx)
    assert target.read_text() == "old"


def test_claim_scripts_are_loaded_again_after_redis_forgot_them(store: Store) -> None:
    """A restarted Redis has no scripts: the pipelined EVALSHA gets NOSCRIPT, loads and resends."""
    claims = Claims(store.r)
    c = Claim(worker="w1", attempt=1, started_at=1.0)
    store.r.script_flush()
    assert claims.acquire(CID, 1, {"t1": (None, c)}, 60)["t1"][0] == 1
    store.r.script_flush()
    assert claims.swap(CID, {"t1": (c.dump(), c.model_copy(update={"heartbeat": 2.0}))}, 60)["t1"] is not None


def test_a_retry_goes_back_as_it_was_sent_even_under_the_lock(store: Store, tmp_path: Path) -> None:
    """The lock runs a live task mock; its retry must still match the dispatch record (live)."""
    s = spec("t1", "t.flaky", tmp_path, mode=Mode.LIVE, path="x")
    dispatch(store, [s])
    store.r.set(Keys.system_lock(), "change freeze")
    ex = executor(store, registry(), "w1", inject_failure_rate=1.0)  # even a mock run fails: retried
    res = ex.run_batch(CID, 1, "a1", [s], delivery="m:0")
    assert res.retry == [s] and res.retry[0].mode is Mode.LIVE
    again = ex.run_batch(CID, 1, "a1", res.retry, delivery="m:1")
    assert again.refused == 0
