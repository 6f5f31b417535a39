"""Stopping work safely: the system lock, campaign pauses and cancel requests
(docs/architecture.md, "Pause, lock and cancel").

Keys (:class:`~buddy.state.keys.Keys`):

- ``buddy:lock:system`` (string, JSON :class:`SystemLock`): while set, no task runs live; a
  live campaign pauses (``buddy lock``, or the monitor's ``unsafe_escalation``).
- ``buddy:campaign:<cid>`` field ``pause_requested`` (JSON :class:`PauseRequest`): ``buddy
  pause`` asks the campaign to pause; ``buddy unpause`` removes it. Fields ``status``
  (``paused`` while it is) and ``paused`` (JSON :class:`~buddy.models.Pause`) are the
  coordinator's.
- ``buddy:campaign:<cid>:cancel`` (hash: task id → who asked): ``buddy cancel`` asked that
  these tasks not start; whoever meets one first (the coordinator before sending it, a worker before
  running it) ends it ``cancelled``.

:class:`CampaignControl` is the part of :class:`~buddy.state.store.Store` that reads and
writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from buddy.models import Pause, utcnow
from buddy.state.keys import Keys, _s


class SystemLock(BaseModel):
    """The system lock: why, who set it, since when (UTC) and, for an automatic lock, the
    evidence (the anomaly's)."""

    reason: str
    by: str
    since: datetime = Field(default_factory=utcnow)
    evidence: dict[str, Any] = Field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.reason}, by {self.by}, since {self.since:%Y-%m-%d %H:%M:%S} UTC"

    @classmethod
    def parse(cls, raw: bytes | str | None) -> SystemLock | None:
        """The stored lock (None when unlocked); a plain string (a lock set by an older
        version, or by hand with ``SET``) is its reason."""
        text = _s(raw)
        if text is None:
            return None
        try:
            return cls.model_validate_json(text)
        except ValidationError:
            return cls(reason=text, by="unknown")


class PauseRequest(BaseModel):
    """``buddy pause``: who asked, why, when (UTC)."""

    reason: str
    by: str
    at: datetime = Field(default_factory=utcnow)


class CampaignControl:
    """Lock, pause and cancel state, a base of :class:`~buddy.state.store.Store` (which
    sets ``r``, the redis-py client)."""

    r: Any
    keys = Keys

    # -- the system lock -----------------------------------------------------------------

    def system_lock(self) -> SystemLock | None:
        """The system lock, or None (GET ``buddy:lock:system``)."""
        return SystemLock.parse(self.r.get(self.keys.system_lock()))

    def set_system_lock(self, lock: SystemLock) -> bool:
        """Lock the system; False (and nothing changes) when it was locked already (SET NX):
        the first reason stays until someone unlocks."""
        return bool(self.r.set(self.keys.system_lock(), lock.model_dump_json(), nx=True))

    def clear_system_lock(self) -> SystemLock | None:
        """Unlock; returns the lock that was set (GETDEL), None when there was none."""
        return SystemLock.parse(self.r.getdel(self.keys.system_lock()))

    # -- pause requests ------------------------------------------------------------------

    def request_pause(self, cid: str, request: PauseRequest) -> None:
        """``buddy pause``: HSET ``pause_requested`` on the campaign hash."""
        self.r.hset(self.keys.campaign(cid), "pause_requested", request.model_dump_json())

    def clear_pause(self, cid: str) -> bool:
        """``buddy unpause``: HDEL ``pause_requested``; False when none was set."""
        return bool(self.r.hdel(self.keys.campaign(cid), "pause_requested"))

    def pause_state(self, cid: str) -> tuple[SystemLock | None, PauseRequest | None]:
        """The system lock and the campaign's pause request, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.system_lock())
        pipe.hget(self.keys.campaign(cid), "pause_requested")
        lock, req = pipe.execute()
        return SystemLock.parse(lock), _pause_request(req)

    @staticmethod
    def pause_state_of(raw: bytes | str | None) -> PauseRequest | None:
        """A stored ``pause_requested`` field, parsed (None: not requested)."""
        return _pause_request(raw)

    def set_paused(self, cid: str, pause: Pause | None) -> None:
        """Record that the campaign is paused (``status`` ``paused``, ``paused`` the
        :class:`~buddy.models.Pause`), or running again (None)."""
        key = self.keys.campaign(cid)
        if pause is None:
            pipe = self.r.pipeline(transaction=True)
            pipe.hset(key, "status", "running")
            pipe.hdel(key, "paused")
            pipe.execute()
        else:
            self.r.hset(key, mapping={"status": "paused", "paused": pause.model_dump_json()})

    # -- cancel requests -----------------------------------------------------------------

    def request_cancel(self, cid: str, task_ids: Iterable[str], by: str) -> None:
        """``buddy cancel``: HSET each task → ``by`` on ``:cancel``."""
        ids = list(task_ids)
        if ids:
            self.r.hset(self.keys.cancel(cid), mapping=dict.fromkeys(ids, by))

    def cancel_requested(self, cid: str, task_ids: list[str]) -> dict[str, str]:
        """The tasks among ``task_ids`` an operator asked to cancel, and who asked (HMGET)."""
        if not task_ids:
            return {}
        who = self.r.hmget(self.keys.cancel(cid), task_ids)
        return {t: _s(w) or "" for t, w in zip(task_ids, who, strict=True) if w is not None}

    def task_gate(self, cid: str, task_id: str) -> tuple[SystemLock | None, PauseRequest | None, bool]:
        """Right before a live task starts: the system lock, the campaign's pause request and
        whether the task was cancelled, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.system_lock())
        pipe.hget(self.keys.campaign(cid), "pause_requested")
        pipe.hexists(self.keys.cancel(cid), task_id)
        lock, req, cancelled = pipe.execute()
        return SystemLock.parse(lock), _pause_request(req), bool(cancelled)


def _pause_request(raw: bytes | str | None) -> PauseRequest | None:
    text = _s(raw)
    if not text:
        return None
    try:
        return PauseRequest.model_validate_json(text)
    except ValidationError:
        try:
            reason = str(json.loads(text))
        except ValueError:
            reason = text
        return PauseRequest(reason=reason, by="unknown")
