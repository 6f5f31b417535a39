"""Webhook notifications: one JSON document POSTed per campaign event, so that the people who
must approve, or who watch a campaign, hear of it without watching its terminal.

:class:`WebhookNotifier` is a hook (:class:`~buddy.coordinator.hooks.CampaignHooks`); it never
blocks the campaign: documents go to a queue that one background thread sends, retrying a
connection error, a timeout, a 429 or a 5xx with exponential backoff (``backoff_s`` doubling,
at most :data:`MAX_BACKOFF_S`) and giving up after ``retries`` retries with a logged warning; any
other 4xx is not retried. ``after_campaign`` waits for the queue at most ``flush_s`` seconds,
then leaves what is left (logged).

The document (``Content-Type: application/json``)::

    {"id": "<uuid4, the same on every retry>", "event": "approval_requested",
     "campaign_id": "c-…", "time": "<UTC ISO-8601>", "details": {…}}

``details`` per event (``NotifyEvent``):

- ``approval_requested`` (hook ``on_approval_request``): ``wave``, ``timeout_at``, ``count``,
  ``tasks`` (the first :data:`MAX_TASKS`: ``task_id``, ``tool``, ``risk``, ``wave``, ``agent``,
  ``confidence``), ``list_command`` and ``approve_command`` (the commands the coordinator
  prints, :func:`~buddy.coordinator.approvals.approval_commands`) and ``note``;
- ``paused`` / ``resumed`` (``on_pause`` / ``on_resume``): ``pause`` (:class:`~buddy.models.Pause`);
- ``aborted`` / ``finished`` (``after_campaign``; ``aborted`` when the status is, every other
  end is ``finished``): ``status``, ``exit_code``, ``counts`` (total and by status),
  ``abort_reason``, ``health`` (score 0–100 and status, or None), ``out_dir``.

No password is ever sent: a Redis URL with one is left out of the commands. The webhook URL
itself may hold a token (Slack's do): it is logged as scheme and host only.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx

from buddy.coordinator.approvals import approval_commands, hint_redis_url
from buddy.coordinator.hooks import CampaignContext, CampaignHooks
from buddy.coordinator.options import MAX_BACKOFF_S, NotifyConfig, NotifyEvent
from buddy.models import Pause, utcnow

if TYPE_CHECKING:
    from buddy.coordinator.approvals import ApprovalRequest
    from buddy.coordinator.result import CampaignResult

log = logging.getLogger("buddy.notify")

#: Tasks an ``approval_requested`` document lists at most (``count`` counts them all).
MAX_TASKS = 100


class _Sender(threading.Thread):
    """One daemon thread that POSTs queued documents in order; :meth:`close` makes it drop
    what is left and end."""

    def __init__(self, config: NotifyConfig, client: httpx.Client, *, owns_client: bool) -> None:
        super().__init__(name="buddy-notify", daemon=True)
        self.config, self.client, self.owns_client = config, client, owns_client
        self.queue: deque[dict[str, Any]] = deque()
        self.pending = 0  # queued and in flight
        self.cond = threading.Condition()
        self.closed = threading.Event()

    def put(self, doc: dict[str, Any]) -> None:
        with self.cond:
            self.queue.append(doc)
            self.pending += 1
            self.cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every queued document is sent or dropped, at most ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self) -> int:
        """Stop: documents not sent yet are dropped. Returns how many are left."""
        self.closed.set()
        with self.cond:
            self.cond.notify_all()
            return self.pending

    def run(self) -> None:
        try:
            self._loop()
        finally:
            if self.owns_client:
                self.client.close()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.closed.is_set():
                    self.cond.wait()
                if self.closed.is_set():
                    self.pending -= len(self.queue)
                    self.queue.clear()
                    self.cond.notify_all()
                    return
                doc = self.queue.popleft()
            try:
                self._deliver(doc)
            except Exception:  # a bug here must not end the thread with documents queued
                log.exception("notification %s of campaign %s failed", doc["event"], doc["campaign_id"])
            finally:
                with self.cond:
                    self.pending -= 1
                    self.cond.notify_all()

    def _deliver(self, doc: dict[str, Any]) -> None:
        cfg = self.config
        headers = {**cfg.headers, "X-Buddy-Event": doc["event"]}
        last = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                delay = min(cfg.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if self.closed.wait(delay):
                    last += "; dropped at the end of the campaign"
                    break
            try:
                response = self.client.post(str(cfg.url), json=doc, headers=headers, timeout=cfg.timeout_s)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if response.is_success:
                return
            last = f"HTTP {response.status_code}"
            if response.status_code != 429 and response.status_code < 500:
                break  # the webhook refuses this document: sending it again changes nothing
        log.warning(
            "notification %s of campaign %s not delivered to %s: %s",
            doc["event"],
            doc["campaign_id"],
            cfg.shown,
            last,
        )


class WebhookNotifier(CampaignHooks):
    """POSTs a JSON document per event of ``config.events`` to ``config.url`` (module docstring:
    the documents, the retries). ``client``: the :class:`httpx.Client` to send with (tests);
    ``now``: the clock of the documents' ``time`` (UTC). One notifier may serve several
    campaigns one after the other (a :class:`~buddy.api.fleet.Fleet` reused)."""

    name = "notify"

    def __init__(
        self,
        config: NotifyConfig,
        *,
        client: httpx.Client | None = None,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.now = now
        self._client = client
        self._sender: _Sender | None = None
        self._lock = threading.Lock()

    # -- hooks ---------------------------------------------------------------------------

    def on_approval_request(
        self, ctx: CampaignContext, requests: list[ApprovalRequest], timeout_at: datetime
    ) -> None:
        """``approval_requested``: the tasks, the deadline and the commands that decide."""
        wave = min((r.wave for r in requests), default=ctx.wave or 0)
        url, note = hint_redis_url(ctx.options, ctx.store)
        list_command, approve_command = approval_commands(ctx.campaign_id, wave, url)
        tasks = [
            {"task_id": r.task_id, "tool": r.tool, "risk": r.risk.value, "wave": r.wave, "agent": r.agent,
             "confidence": r.confidence}
            for r in requests[:MAX_TASKS]
        ]  # fmt: skip
        details = {
            "wave": wave,
            "timeout_at": timeout_at.isoformat(),
            "count": len(requests),
            "tasks": tasks,
            "list_command": list_command,
            "approve_command": approve_command,
            "note": note or None,
        }
        self.send("approval_requested", ctx.campaign_id, details)

    def on_pause(self, ctx: CampaignContext, pause: Pause) -> None:
        """``paused``: the :class:`~buddy.models.Pause` (why, by whom, since)."""
        self.send("paused", ctx.campaign_id, {"pause": pause.model_dump(mode="json")})

    def on_resume(self, ctx: CampaignContext, pause: Pause) -> None:
        """``resumed``: the pause that ended (with ``until`` and ``seconds``)."""
        self.send("resumed", ctx.campaign_id, {"pause": pause.model_dump(mode="json")})

    def after_campaign(self, ctx: CampaignContext, result: CampaignResult) -> None:
        """``aborted`` or ``finished``, then wait at most ``flush_s`` for the queue (the
        campaign's end is never delayed longer), and stop the thread."""
        health = result.health
        details = {
            "status": result.status,
            "exit_code": result.exit_code,
            "counts": result.summary.counts.model_dump(mode="json"),
            "abort_reason": result.abort_reason,
            "health": None if health is None else {"score": health.score, "status": health.status},
            "out_dir": str(result.out_dir),
        }
        self.send("aborted" if result.status == "aborted" else "finished", ctx.campaign_id, details)
        self.close(self.config.flush_s)

    # -- sending -------------------------------------------------------------------------

    def send(self, event: NotifyEvent, campaign_id: str, details: Mapping[str, Any]) -> None:
        """Queue the document of ``event`` (nothing when ``config.events`` leaves it out);
        returns at once."""
        if event not in self.config.events:
            return
        doc = {
            "id": str(uuid.uuid4()),
            "event": event,
            "campaign_id": campaign_id,
            "time": self.now().isoformat(),
            "details": dict(details),
        }
        with self._lock:
            if self._sender is None or not self._sender.is_alive():
                client = self._client or httpx.Client()
                self._sender = _Sender(self.config, client, owns_client=self._client is None)
                self._sender.start()
            self._sender.put(doc)

    def flush(self, timeout_s: float) -> bool:
        """Wait at most ``timeout_s`` seconds until every queued document is sent or given up;
        True when none is left."""
        with self._lock:
            sender = self._sender
        return sender is None or sender.flush(timeout_s)

    def close(self, timeout_s: float) -> None:
        """:meth:`flush` for at most ``timeout_s`` seconds, then drop what is left (logged) and
        end the thread; a later event starts a new one."""
        done = self.flush(timeout_s)
        with self._lock:
            sender, self._sender = self._sender, None
        if sender is None:
            return
        left = sender.close()
        if not done and left:
            log.warning(
                "%d notification(s) to %s not delivered within %g s; dropped",
                left,
                self.config.shown,
                timeout_s,
            )
