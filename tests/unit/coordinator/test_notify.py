"""Webhook notifications (:mod:`buddy.coordinator.notify`) against a local HTTP server on a free
127.0.0.1 port: what each event sends, the retries after a 5xx, and that a dead or silent
webhook never holds the campaign longer than the bounded flush."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest
from pydantic import ValidationError

from buddy.coordinator.approvals import ApprovalRequest, approval_commands
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.notify import NotifyConfig, WebhookNotifier
from buddy.coordinator.options import CampaignOptions
from buddy.coordinator.result import CampaignResult
from buddy.models import ExecutionSummary, Mode, Pause, Risk, StatusCounts
from buddy.state.store import Store
from tests.helpers import free_port

CID = "c-notify"
NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


class Webhook:
    """What the local webhook received (JSON bodies and headers) and the statuses it answers
    with, in order (then 200)."""

    def __init__(self) -> None:
        self.url = ""
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.statuses: deque[int] = deque()
        self.got = threading.Condition()

    def wait_for(self, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        with self.got:
            assert self.got.wait_for(lambda: len(self.bodies) >= n, timeout_s), self.bodies
            return list(self.bodies)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with hook.got:  # recorded before the answer: a flush that returned has seen it here
                hook.bodies.append(body)
                hook.headers.append(dict(self.headers))
                status = hook.statuses.popleft() if hook.statuses else 200
                hook.got.notify_all()
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0K3N"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


def context(**options: Any) -> CampaignContext:
    opts = CampaignOptions(mode=Mode.LIVE, **options)
    return CampaignContext(CID, cast(Any, None), opts, Store(fakeredis.FakeRedis()), wave=2)


def requests(n: int) -> list[ApprovalRequest]:
    return [
        ApprovalRequest(campaign_id=CID, task_id=f"rm-{i}", wave=2, tool="file.delete", risk=Risk.HIGH,
                        confidence=0.9, args={"path": f"{i}.txt"}, agent="a1")
        for i in range(n)
    ]  # fmt: skip


def result(status: str = "finished_with_failures", exit_code: int = 1, reason: str | None = None) -> Any:
    summary = ExecutionSummary(
        campaign_id=CID, status=cast(Any, status), exit_code=exit_code, mode=Mode.LIVE,
        counts=StatusCounts(total=3, by_status={"succeeded": 2, "denied": 1}), agents={}, waves=[],
        start_time=NOW, end_time=NOW, wall_s=1.0, abort_reason=reason,
    )  # fmt: skip
    return CampaignResult(
        campaign_id=CID, status=cast(Any, status), exit_code=exit_code, out_dir=Path("/tmp/out"),
        summary=summary, outcomes={}, health=None, waves=[], abort_reason=reason,
    )  # fmt: skip


STARTED: list[WebhookNotifier] = []


@pytest.fixture(autouse=True)
def _close_notifiers() -> Iterator[None]:
    yield
    while STARTED:
        STARTED.pop().close(0)


def notifier(url: str, **config: Any) -> WebhookNotifier:
    n = WebhookNotifier(NotifyConfig(url=url, **config), now=lambda: NOW)
    STARTED.append(n)
    return n


def test_the_approval_request_reaches_the_webhook_with_the_command_that_approves(webhook: Webhook) -> None:
    n = notifier(webhook.url)
    ctx = context(redis_display="redis://fleet-host:6379/0")
    timeout_at = NOW + timedelta(seconds=600)

    HookRunner([n]).emit("on_approval_request", ctx, requests(2), timeout_at)

    [doc] = webhook.wait_for(1)
    assert n.flush(5.0)
    assert (doc["event"], doc["campaign_id"], doc["time"]) == ("approval_requested", CID, NOW.isoformat())
    details = doc["details"]
    assert (details["wave"], details["count"], details["timeout_at"]) == (2, 2, timeout_at.isoformat())
    assert details["tasks"] == [
        {
            "task_id": f"rm-{i}",
            "tool": "file.delete",
            "risk": "HIGH",
            "wave": 2,
            "agent": "a1",
            "confidence": 0.9,
        }
        for i in range(2)
    ]
    list_cmd, approve_cmd = approval_commands(CID, 2, "redis://fleet-host:6379/0")
    assert (
        details["approve_command"]
        == approve_cmd
        == (f"buddy approvals approve {CID} --wave 2 --redis-url redis://fleet-host:6379/0")
    )
    assert details["list_command"] == list_cmd and details["note"] is None
    assert webhook.headers[0]["X-Buddy-Event"] == "approval_requested"
    assert webhook.headers[0]["Content-Type"] == "application/json"


def test_a_redis_password_is_never_sent(webhook: Webhook) -> None:
    n = notifier(webhook.url)
    n.on_approval_request(context(redis_display="redis://:***@fleet-host:6379/0"), requests(1), NOW)

    [doc] = webhook.wait_for(1)
    details = doc["details"]
    assert details["approve_command"] == f"buddy approvals approve {CID} --wave 2"
    assert "password is not printed" in details["note"]
    assert "--redis-url" not in details["approve_command"]


def test_a_5xx_is_retried_with_the_same_document(webhook: Webhook) -> None:
    webhook.statuses.extend([500, 503])
    n = notifier(webhook.url, backoff_s=0.01)

    n.on_pause(context(), Pause(kind="operator", reason="change freeze", by="op@host", since=NOW))

    first, second, third = webhook.wait_for(3)
    assert n.flush(5.0)
    assert first == second == third  # the same id: the webhook can tell a retry
    assert first["event"] == "paused"
    assert first["details"]["pause"]["reason"] == "change freeze"
    assert first["details"]["pause"]["by"] == "op@host"


def test_a_4xx_is_not_retried_and_is_logged_without_the_token(
    webhook: Webhook, caplog: pytest.LogCaptureFixture
) -> None:
    webhook.statuses.append(404)
    caplog.set_level(logging.WARNING, logger="buddy.notify")
    n = notifier(webhook.url, backoff_s=0.01)

    n.on_resume(
        context(), Pause(kind="lock", reason="incident", by="op@host", since=NOW, until=NOW, seconds=0)
    )
    assert n.flush(5.0)

    assert len(webhook.bodies) == 1
    [warning] = [r.getMessage() for r in caplog.records]
    assert "resumed" in warning and "HTTP 404" in warning and "T0K3N" not in warning


def test_the_end_of_a_campaign_is_sent_and_flushed(webhook: Webhook) -> None:
    n = notifier(webhook.url)
    ctx = context()

    n.after_campaign(ctx, result())  # returns once sent: the flush waits for it
    n.after_campaign(ctx, result("aborted", 3, "max failures"))  # a reused notifier sends again

    finished, aborted = webhook.bodies
    assert finished["event"] == "finished"
    assert finished["details"] == {
        "status": "finished_with_failures", "exit_code": 1, "counts": {"total": 3, "by_status":
        {"succeeded": 2, "denied": 1}}, "abort_reason": None, "health": None, "out_dir": "/tmp/out",
    }  # fmt: skip
    assert aborted["event"] == "aborted"
    assert (aborted["details"]["status"], aborted["details"]["abort_reason"]) == ("aborted", "max failures")


def test_only_the_configured_events_are_sent(webhook: Webhook) -> None:
    n = notifier(webhook.url, events={"finished"})
    n.on_approval_request(context(), requests(1), NOW)
    n.on_pause(context(), Pause(kind="operator", reason="r", by="b", since=NOW))
    n.after_campaign(context(), result())
    assert [b["event"] for b in webhook.bodies] == ["finished"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_a_dead_webhook_never_holds_the_campaign_beyond_the_flush(
    kind: str, silent_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    port = silent_port if kind == "silent" else free_port()
    caplog.set_level(logging.WARNING, logger="buddy.notify")
    n = notifier(f"http://127.0.0.1:{port}/hook", timeout_s=30, retries=5, backoff_s=5, flush_s=0.5)
    ctx = context()

    started = time.monotonic()
    n.on_approval_request(ctx, requests(3), NOW)  # never waits for the webhook
    assert time.monotonic() - started < 0.2
    n.after_campaign(ctx, result())
    assert time.monotonic() - started < 2.0  # the flush's 0.5 s, not 30 s of timeout or 5 retries

    assert any("not delivered within 0.5 s" in r.getMessage() for r in caplog.records)


def test_the_config_refuses_what_is_not_a_webhook() -> None:
    with pytest.raises(ValidationError):
        NotifyConfig(url=cast(Any, "ftp://example.com/x"))
    with pytest.raises(ValidationError):
        NotifyConfig(url=cast(Any, "https://example.com/x"), events=cast(Any, {"exploded"}))
    with pytest.raises(ValidationError):
        NotifyConfig(url=cast(Any, "https://example.com/x"), bogus=1)  # type: ignore[call-arg]
    config = NotifyConfig(url=cast(Any, "https://hooks.example.com/services/T0K3N"))
    assert config.shown == "https://hooks.example.com" and config.retries == 5
    assert config.events == {"approval_requested", "paused", "resumed", "aborted", "finished"}
