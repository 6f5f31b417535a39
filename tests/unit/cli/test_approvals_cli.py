"""``buddy approvals approve|deny`` record who decided as the OS account running them, with the
free text as a comment; ``buddy status`` says when a campaign waits for approval or is paused.
Everything runs in-process (typer's runner) on the session's private Redis."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from buddy.cli.app import app
from buddy.cli.control import campaign_state
from buddy.coordinator.approvals import APPROVAL_WAIT_FIELD, ApprovalWait
from buddy.infra.transport import redis_client
from buddy.models import Pause, Risk
from buddy.safety.gates import Approvals, operator
from buddy.state.store import Store

runner = CliRunner()
CID = "c-cli"
WIDE = {"COLUMNS": "250"}


@pytest.fixture(autouse=True)
def _no_embedded_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture
def approvals(redis_url: str) -> Approvals:
    a = Approvals(Store(redis_client(redis_url)))
    a.request(CID, [(t, Risk.HIGH, "file.delete", 1, "{}") for t in ("t1", "t2", "t3")])
    return a


def test_the_decision_is_recorded_as_the_os_user_with_the_comment(
    approvals: Approvals, redis_url: str
) -> None:
    ok = runner.invoke(app, ["approvals", "approve", CID, "t1", "-m", "change 42", "--redis-url", redis_url])
    assert ok.exit_code == 0, ok.output
    assert f"t1: approved by {operator()}" in ok.stdout
    no = runner.invoke(
        app, ["approvals", "deny", CID, "t2", "--comment", "not now", "--redis-url", redis_url]
    )
    assert no.exit_code == 0, no.output
    legacy = runner.invoke(app, ["approvals", "approve", CID, "t3", "--reason", "old spelling",
                                 "--redis-url", redis_url])  # fmt: skip
    assert legacy.exit_code == 0, legacy.output
    got = {a.task_id: (a.status, a.by, a.reason) for a in approvals.get(CID)}
    assert got == {
        "t1": ("approved", operator(), "change 42"),
        "t2": ("denied", operator(), "not now"),
        "t3": ("approved", operator(), "old spelling"),
    }


def test_operator_is_the_account_of_the_uid_not_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd
    import socket

    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    assert operator() == f"{pwd.getpwuid(os.getuid()).pw_name}@{socket.gethostname()}"


@pytest.mark.parametrize("command", ["approve", "deny"])
def test_by_is_refused_and_points_to_comment(approvals: Approvals, redis_url: str, command: str) -> None:
    res = runner.invoke(
        app, ["approvals", command, CID, "t1", "--by", "alice", "-m", "x", "--redis-url", redis_url]
    )
    assert res.exit_code == 2
    assert "--by is no longer accepted" in res.stderr and "--comment/-m" in res.stderr
    assert operator() in res.stderr
    assert {a.status for a in approvals.get(CID)} == {"pending"}  # nothing decided
    helped = runner.invoke(app, ["approvals", command, "--help"], env=WIDE)
    assert "--by" not in helped.stdout and "--comment" in helped.stdout


def test_deny_needs_a_comment(approvals: Approvals, redis_url: str) -> None:
    res = runner.invoke(app, ["approvals", "deny", CID, "t1", "--redis-url", redis_url])
    assert res.exit_code == 2 and "--comment/-m is required to deny" in res.stderr


# -- buddy status ------------------------------------------------------------------------------

AT = datetime(2025, 1, 31, 12, 30, tzinfo=UTC)


def test_campaign_state_renders_approval_waits_and_pauses() -> None:
    wait = ApprovalWait(wave=2, tasks=3, task_ids=["a", "b", "c"], timeout_at=AT).model_dump_json()
    pause = Pause(kind="lock", reason="incident 7", by="op@host", since=AT).model_dump_json()
    assert campaign_state({"status": "running"}) == "running"
    assert campaign_state({"status": "running", APPROVAL_WAIT_FIELD: wait}) == (
        "waiting for approval (3 tasks, wave 2, times out at 2025-01-31 12:30:00 UTC)"
    )
    assert campaign_state({"status": "paused", "paused": pause}) == (
        "paused (system locked: incident 7, by op@host, since 2025-01-31 12:30:00 UTC)"
    )
    assert campaign_state({"status": "paused", "paused": pause, APPROVAL_WAIT_FIELD: wait}).endswith(
        "; waiting for approval (3 tasks, wave 2, times out at 2025-01-31 12:30:00 UTC)"
    )
    assert campaign_state({"status": "succeeded", APPROVAL_WAIT_FIELD: wait}) == "succeeded"  # a leftover
    assert campaign_state({"status": "paused", "paused": "{broken"}) == "paused"
    assert campaign_state({}) == "?"


def test_status_shows_what_a_campaign_waits_for(redis_url: str) -> None:
    store = Store(redis_client(redis_url))
    wait = ApprovalWait(wave=2, tasks=1, task_ids=["rm"], timeout_at=AT)
    store.create_campaign(CID, {"status": "running", "mode": "live", "tasks": "4", "waves": "2",
                                "current_wave": "1", APPROVAL_WAIT_FIELD: wait.model_dump_json()})  # fmt: skip
    pause = Pause(kind="operator", reason="[red]freeze[/]", by="op@host", since=AT)
    store.create_campaign("c-paused", {"status": "paused", "paused": pause.model_dump_json(), "mode": "live"})

    listed = runner.invoke(app, ["status", "--redis-url", redis_url], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "waiting for approval (1 task, wave 2, times out at 2025-01-31 12:30:00 UTC)" in listed.stdout
    assert "paused (paused by op@host: [red]freeze[/], since 2025-01-31 12:30:00 UTC)" in listed.stdout
    one = runner.invoke(app, ["status", CID, "--redis-url", redis_url], env=WIDE)
    assert one.exit_code == 0, one.output
    assert f"{CID}: waiting for approval (1 task, wave 2, times out at 2025-01-31 12:30:00 UTC)" in one.stdout
    paused = runner.invoke(app, ["status", "c-paused", "--redis-url", redis_url], env=WIDE)
    assert "c-paused: paused (paused by op@host: [red]freeze[/], since" in paused.stdout  # no markup
