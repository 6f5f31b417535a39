"""Safety end to end through the Python API: modes, approvals from a second process, the
lock, abort + rollback. Campaigns run in-process on the module's workers (``redis_url=``);
the operator's side (``buddy approvals``, ``buddy lock``) is the CLI in processes of its own."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import buddy
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redis_client
from buddy.safety.gates import Approvals, operator
from buddy.state.control import PauseRequest
from buddy.state.store import Store
from tests.helpers import buddy as cli
from tests.integration.test_campaign import assert_matches_files, executed, in_background, plan

pytestmark = pytest.mark.integration


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def wait_for(cond: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def transitions(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "state_transitions.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["mock", "dry_run"])
def test_mock_and_dry_run_touch_nothing(
    fleet: LocalFleet,
    fleet_redis: EmbeddedRedis,
    tmp_path: Path,
    http_server: tuple[str, list[str]],
    mode: str,
) -> None:
    base, requests = http_server
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("original\n")
    (data / "gone.txt").write_text("still here\n")
    marker = data / "shell-ran"
    lines = plan(
        [
            {
                "task_id": "w",
                "tool": "file.write",
                "args": {"path": str(data / "keep.txt"), "content": "new\n"},
            },
            {
                "task_id": "c",
                "tool": "file.write",
                "args": {"path": str(data / "created.txt"), "content": "x"},
            },
            {"task_id": "a", "tool": "file.append", "args": {"path": str(data / "keep.txt"), "line": "more"}},
            {"task_id": "d", "tool": "file.delete", "args": {"path": str(data / "gone.txt")}},
            {
                "task_id": "s",
                "tool": "shell",
                "args": {"argv": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]},
            },
            {"task_id": "g", "tool": "http.request", "args": {"url": f"{base}/__init__.py"}},
            {
                "task_id": "p",
                "tool": "http.request",
                "args": {"method": "POST", "url": f"{base}/x", "json": {}},
            },
            {"task_id": "h", "tool": "file.sha256", "args": {"path": str(data / "keep.txt")}},
        ],
    )
    before = snapshot(data)
    out = tmp_path / "out"
    result = buddy.Campaign(lines, mode=mode, redis_url=fleet_redis.url, out_dir=out).run()
    assert result.status == "succeeded" and result.exit_code == 0, result.summary
    assert snapshot(data) == before
    assert requests == []  # not even a GET reached the server
    rows = assert_matches_files(result)
    assert len(rows) == 8
    assert {r["mode"] for r in rows.values()} == {mode}
    if mode == "dry_run":
        assert "-original" in rows["w"]["result"]["diff"] and "+new" in rows["w"]["result"]["diff"]
        assert rows["d"]["result"]["exists"] is True
        assert rows["s"]["result"]["allowed"] is True
        assert rows["p"]["result"]["method"] == "POST"


def test_live_needs_confidence_for_its_risk(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    target = tmp_path / "f.txt"
    lines = plan(
        [
            {
                "task_id": "unsure",
                "tool": "file.write",
                "confidence": 0.5,
                "args": {"path": str(target), "content": "x"},
            },
            {"task_id": "sure", "tool": "file.sha256", "confidence": 0.1, "args": {"path": __file__}},
        ],
        confidence=None,
    )
    out = tmp_path / "out"
    result = buddy.Campaign(lines, mode="live", redis_url=fleet_redis.url, out_dir=out).run()
    assert result.status == "succeeded" and result.exit_code == 0, result.summary
    unsure, sure = result.outcomes["unsure"], result.outcomes["sure"]
    assert unsure.mode is buddy.Mode.DRY_RUN and "0.50 < 0.60" in (unsure.mode_reason or "")
    assert not target.exists()
    assert sure.mode is buddy.Mode.LIVE  # LOW needs no confidence
    rows = assert_matches_files(result)
    assert rows["unsure"]["mode"] == "dry_run" and rows["sure"]["mode"] == "live"


def test_approve_deny_and_timeout_from_a_second_process(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    files = {name: tmp_path / f"{name}.txt" for name in ("approved", "denied", "ignored")}
    for f in files.values():
        f.write_text("precious\n")
    lines = plan(
        [{"task_id": f"del-{n}", "tool": "file.delete", "args": {"path": str(f)}} for n, f in files.items()]
        + [{"task_id": "after", "tool": "noop", "depends_on": ["del-denied"]}]
    )
    out = tmp_path / "out"
    cid = f"approvals-{uuid.uuid4().hex[:8]}"
    campaign = buddy.Campaign(
        lines, mode="live", redis_url=fleet_redis.url, out_dir=out, approval_timeout=8, campaign_id=cid
    )
    approvals = Approvals(Store(redis_client(fleet_redis.url)))
    with in_background(campaign) as running:
        wait_for(lambda: len(approvals.get(cid)) >= 3 or running.done(), 30, "three approval requests")
        listed = cli("approvals", "list", cid, "--json", "--redis-url", fleet_redis.url)
        assert listed.returncode == 0, listed.stderr
        shown = [json.loads(x) for x in listed.stdout.splitlines()]
        assert sorted((a["task_id"], a["status"], a["risk"]) for a in shown) == [
            ("del-approved", "pending", "HIGH"), ("del-denied", "pending", "HIGH"), ("del-ignored", "pending", "HIGH")
        ]  # fmt: skip
        ok = cli(
            "approvals", "approve", cid, "del-approved", "-m", "change 42", "--redis-url", fleet_redis.url
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        no = cli(
            "approvals", "deny", cid, "del-denied", "--comment", "keep it", "--redis-url", fleet_redis.url
        )
        assert no.returncode == 0, no.stdout + no.stderr
        again = cli("approvals", "approve", cid, "del-denied", "--redis-url", fleet_redis.url)
        assert again.returncode == 1 and "already decided" in again.stdout
        result = running.result(timeout=90)
    assert result.status == "finished_with_failures" and result.exit_code == 1, result.summary
    assert result.campaign_id == cid
    assert_matches_files(result)
    assert not files["approved"].exists()
    assert files["denied"].read_text() == "precious\n"  # a denied file.delete leaves its file
    assert files["ignored"].read_text() == "precious\n"
    rows = executed(out)
    assert result.outcomes["del-ignored"].status is buddy.TaskStatus.DENIED
    assert rows["del-approved"]["status"] == "succeeded" and rows["del-approved"]["mode"] == "live"
    assert rows["del-denied"]["status"] == "denied" and operator() in rows["del-denied"]["error_msg"]
    assert "keep it" in rows["del-denied"]["error_msg"]
    assert rows["del-ignored"]["status"] == "denied" and "timed out" in rows["del-ignored"]["error_msg"]
    assert rows["after"]["status"] == "skipped"
    by_task = {a.task_id: a for a in approvals.get(cid)}
    assert by_task["del-approved"].by == operator() and by_task["del-approved"].decided_at
    assert by_task["del-approved"].reason == "change 42"
    assert by_task["del-ignored"].status == "denied" and by_task["del-ignored"].by == "coordinator"
    moves = [(t["task_id"], t["from"], t["to"]) for t in transitions(out)]
    assert ("del-approved", "awaiting_approval", "approved") in moves
    assert ("del-denied", "awaiting_approval", "denied") in moves
    assert ("del-approved", "running", "succeeded") in moves
    assert not any(t == "del-denied" and to == "queued" for t, _, to in moves)


def test_a_lock_pauses_a_live_campaign_until_the_unlock(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    target = tmp_path / "written.txt"
    lines = plan(
        [
            # long enough for `buddy lock` (a process of its own) to land while wave 1 runs
            {"task_id": "slow", "tool": "sleep", "args": {"seconds": 3}},
            {
                "task_id": "write",
                "tool": "file.write",
                "depends_on": ["slow"],
                "args": {"path": str(target), "content": "written after the unlock\n"},
            },
            {
                "task_id": "hash",
                "tool": "file.sha256",
                "depends_on": ["write"],
                "args": {"path": str(target)},
            },
        ],
    )
    out, cid = tmp_path / "out", f"c-lock-{uuid.uuid4().hex[:6]}"
    store = Store(redis_client(fleet_redis.url))
    campaign = buddy.Campaign(lines, mode="live", redis_url=fleet_redis.url, out_dir=out, campaign_id=cid)
    try:
        with in_background(campaign) as running:
            wait_for(lambda: (out / "wave_1").exists() or running.done(), 30, "wave 1")
            assert not running.done(), running.result()
            locked = cli("lock", "--reason", "change freeze", "--redis-url", fleet_redis.url)
            assert locked.returncode == 0, locked.stderr
            wait_for(lambda: store.campaign(cid).get("status") == "paused" or running.done(), 30, "the pause")
            assert not running.done(), running.result()
            status = " ".join(cli("status", cid, "--redis-url", fleet_redis.url).stdout.split())
            assert "paused" in status and "change freeze" in status, status
            time.sleep(1.5)  # paused means paused: nothing of wave 2 starts, live or mock
            assert not target.exists() and set(store.outcomes(cid)) == {"slow"}
            unlocked = cli("unlock", "--redis-url", fleet_redis.url)
            assert unlocked.returncode == 0 and "change freeze" in unlocked.stdout, unlocked
            result = running.result(timeout=60)
    finally:
        cli("unlock", "--redis-url", fleet_redis.url)
    assert result.status == "succeeded" and result.exit_code == 0, result.summary
    rows = assert_matches_files(result)
    assert {r["mode"] for r in rows.values()} == {"live"}
    data = target.read_bytes()
    assert data == b"written after the unlock\n"
    assert rows["hash"]["result"] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (pause,) = result.summary.pauses
    # it paused at once, in wave 1 (`slow` was running: it finished) or right before wave 2
    assert (pause.kind, pause.reason) == ("lock", "change freeze") and pause.wave in (1, 2)
    assert (pause.seconds or 0) >= 1.5
    report = (out / "report.md").read_text()
    assert "paused 1 time(s)" in report and "system locked: change freeze" in report


def test_a_lock_past_the_lock_timeout_aborts_and_cancels(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    target = tmp_path / "never.txt"
    lines = plan([{"task_id": "w", "tool": "file.write", "args": {"path": str(target), "content": "x"}}])
    assert cli("lock", "--reason", "incident 42", "--redis-url", fleet_redis.url).returncode == 0
    try:
        result = buddy.Campaign(
            lines, mode="live", redis_url=fleet_redis.url, out_dir=tmp_path / "out", lock_timeout=1.0
        ).run()
        mock = buddy.Campaign(lines, redis_url=fleet_redis.url, out_dir=tmp_path / "mock").run()
    finally:
        cli("unlock", "--redis-url", fleet_redis.url)
    assert (result.status, result.exit_code) == ("aborted", 3)
    assert "--lock-timeout 1 s" in (result.abort_reason or "")
    assert result.outcomes["w"].status.value == "cancelled" and not target.exists()
    assert (mock.status, mock.exit_code) == ("succeeded", 0)  # mock campaigns run as before


def test_pause_cancel_and_unpause_from_other_shells(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    lines = plan(
        [
            {"task_id": "slow", "tool": "sleep", "args": {"seconds": 2}},
            {"task_id": "gone", "tool": "noop", "depends_on": ["slow"]},
            {"task_id": "needs-gone", "tool": "noop", "depends_on": ["gone"]},
            {"task_id": "after", "tool": "noop", "depends_on": ["gone"], "trigger_rule": "all_done"},
        ]
    )
    out, cid = tmp_path / "out", f"c-pause-{uuid.uuid4().hex[:6]}"
    store = Store(redis_client(fleet_redis.url))
    # live: `sleep` really sleeps (noop and sleep touch nothing)
    campaign = buddy.Campaign(lines, mode="live", redis_url=fleet_redis.url, out_dir=out, campaign_id=cid)
    with in_background(campaign) as running:
        try:
            wait_for(lambda: (out / "wave_1").exists() or running.done(), 30, "wave 1")
            paused = cli("pause", cid, "--reason", "look first", "--redis-url", fleet_redis.url)
            assert paused.returncode == 0, paused.stderr
            wait_for(lambda: store.campaign(cid).get("status") == "paused" or running.done(), 30, "the pause")
            wait_for(
                lambda: "slow" in store.outcomes(cid), 30, "slow, running when the pause came, to finish"
            )
            cancelled = cli("cancel", cid, "gone", "slow", "--redis-url", fleet_redis.url)
            said = " ".join(cancelled.stdout.split())
            assert cancelled.returncode == 1, cancelled  # `slow` already ended: said, left alone
            assert "cancel requested for 1 task(s)" in said and "slow: already ended" in said, said
            time.sleep(1.0)
            assert set(store.outcomes(cid)) == {"slow"}  # paused: nothing else started
            assert cli("unpause", cid, "--redis-url", fleet_redis.url).returncode == 0
        finally:  # never leave the campaign paused behind a failed assertion
            store.clear_pause(cid)
        result = running.result(timeout=60)
    got = {t: o.status.value for t, o in result.outcomes.items()}
    assert got == {"slow": "succeeded", "gone": "cancelled", "needs-gone": "skipped", "after": "succeeded"}
    assert result.exit_code == 1 and [p.kind for p in result.summary.pauses] == ["operator"]
    moves = transitions(out)
    assert any(
        m["task_id"] == "gone" and m["to"] == "cancelled" and m["by"].startswith("operator ") for m in moves
    )
    kinds = [e["type"] for e in store.events(cid, count=1000)]
    for kind in (
        "pause_requested",
        "campaign_paused",
        "cancel_requested",
        "unpause_requested",
        "campaign_resumed",
    ):
        assert kind in kinds, kinds


def test_abort_with_rollback_restores_every_file(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        (data / f"f{i}.txt").write_bytes(f"version one of {i}\n".encode() * (i + 1))
    ledger = data / "ledger.txt"
    ledger.write_text("start\n")
    before = snapshot(data)
    lines: list[dict[str, Any]] = [
        {
            "task_id": f"w{i}",
            "tool": "file.write",
            "args": {"path": str(data / f"f{i}.txt"), "content": f"v2 {i}\n"},
        }
        for i in range(4)
    ]
    lines += [
        {"task_id": "new", "tool": "file.write", "args": {"path": str(data / "new.txt"), "content": "fresh"}},
        {"task_id": "broken", "tool": "file.sha256", "args": {"path": str(data / "missing.txt")}},
        {"task_id": "log", "tool": "file.append", "args": {"path": str(ledger), "line": "appended"}},
        {"task_id": "next", "tool": "noop", "depends_on": ["w0"]},
    ]
    out = tmp_path / "out"
    result = buddy.Campaign(
        plan(lines), mode="live", redis_url=fleet_redis.url, out_dir=out, max_fail_percentage=0,
        rollback_on_abort=True,
    ).run()  # fmt: skip
    assert result.status == "aborted" and result.exit_code == 3, result.summary
    assert result.abort_reason and "max_fail_percentage" in result.abort_reason
    assert result.outcomes["w0"].rolled_back or result.outcomes["w0"].status.value == "rolled_back"
    after = snapshot(data)
    ledger_after = after.pop("ledger.txt")
    expected = dict(before)
    expected.pop("ledger.txt")
    assert after == expected  # every reversible effect undone, byte for byte; new.txt removed
    assert ledger_after == b"start\nappended\n"  # irreversible: stays, and is reported
    summary = json.loads((out / "execution_summary.json").read_text())
    assert summary["status"] == "aborted" and "max_fail_percentage" in summary["abort_reason"]
    assert [w["wave"] for w in summary["waves"]] == [1]  # wave 2 was never dispatched
    events = {
        e["task_id"]: e for e in map(json.loads, (out / "rollback_events.jsonl").read_text().splitlines())
    }
    assert {t for t, e in events.items() if e["status"] == "rolled_back"} == {"w0", "w1", "w2", "w3", "new"}
    assert events["log"]["status"] == "not_reversible"
    report = (out / "report.md").read_text()
    assert "max_fail_percentage" in report and "`log`" in report and "Not compensated" in report
    rows = executed(out)
    assert "next" not in rows
    moves = {(t["task_id"], t["from"], t["to"]) for t in transitions(out)}
    assert ("w0", "succeeded", "rolled_back") in moves


def test_a_webhook_hears_the_approval_request_the_pause_and_the_end(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    import http.server
    import threading

    got: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    victim = tmp_path / "victim.txt"
    victim.write_text("bye\n")
    lines = plan(
        [
            {"task_id": "first", "tool": "sleep", "args": {"seconds": 1}},
            {"task_id": "rm", "tool": "file.delete", "depends_on": ["first"], "args": {"path": str(victim)}},
        ]
    )
    cid = f"c-hook-{uuid.uuid4().hex[:6]}"
    store = Store(redis_client(fleet_redis.url))

    def approver(request: Any) -> bool:
        return True

    store.request_pause(cid, PauseRequest(reason="wait for the change window", by="ops@host"))
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    campaign = buddy.Campaign(
        lines, mode="live", redis_url=fleet_redis.url, out_dir=tmp_path / "out", campaign_id=cid,
        notify_url=url, approver=approver,
    )  # fmt: skip
    try:
        with in_background(campaign) as running:
            wait_for(
                lambda: any(d["event"] == "paused" for d in got) or running.done(), 30, "the paused event"
            )
            assert not running.done(), running.result()
            store.clear_pause(cid)
            result = running.result(timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 0 and not victim.exists(), result.summary
    events = [d["event"] for d in got]
    assert events == ["paused", "resumed", "approval_requested", "finished"], events
    assert all(d["campaign_id"] == cid for d in got)
    paused = got[0]["details"]
    assert "wait for the change window" in json.dumps(paused)
    request = got[2]["details"]
    assert [t["task_id"] for t in request["tasks"]] == ["rm"] and request["tasks"][0]["risk"] == "HIGH"
    assert got[3]["details"]["status"] == "succeeded" and got[3]["details"]["exit_code"] == 0
