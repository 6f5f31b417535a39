"""How one campaign runs: its options, its id, its exit codes and the clock it reads.

:class:`CampaignOptions` is stored in Redis with the campaign (``buddy:campaign:<id>``,
field ``options``) so that :func:`buddy.resume` runs the rest of it the same way
(docs/architecture.md, "Redis keys").
"""

from __future__ import annotations

import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from buddy.analysis.monitor import MonitorConfig
from buddy.models import CampaignStatus, Mode, TaskStatus, utcnow
from buddy.safety.gates import EscalationPolicy

#: Exit codes of a campaign (``buddy run`` exits with them; ``CampaignResult.exit_code``):
#: all succeeded, finished with other statuses, invalid input (nothing dispatched), aborted
#: (a rule fired, an operator aborted, or the fleet could not be reached), interrupted.
EXIT_OK, EXIT_FAILURES, EXIT_INVALID, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES: dict[CampaignStatus, int] = {
    "succeeded": EXIT_OK,
    "finished_with_failures": EXIT_FAILURES,
    "aborted": EXIT_ABORTED,
    "interrupted": EXIT_INTERRUPTED,
}

#: Statuses that count against ``max_fail_percentage`` and ``max_failures``: the task's
#: effect failed, was undone after failing, or is unknown.
FAILURE_STATUSES = frozenset(
    {
        TaskStatus.FAILED,
        TaskStatus.TIMED_OUT,
        TaskStatus.NEEDS_REVIEW,
        TaskStatus.ROLLED_BACK,
        TaskStatus.LOST,
    }
)


def new_campaign_id(now: datetime | None = None) -> str:
    """``c-YYYYmmddTHHMMSS-xxxxxx`` (UTC time and 6 random hex digits)."""
    now = now or utcnow()
    return f"c-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class Clock(Protocol):
    """The time the coordinator reads: approval timeouts, worker waits and wave deadlines are
    measured with ``monotonic()`` (seconds) and polled with ``sleep(seconds)``. Tests inject a
    clock that advances when slept, so nothing in them sleeps."""

    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: :func:`time.monotonic` and :func:`time.sleep`."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


#: The events a webhook can receive.
NotifyEvent = Literal["approval_requested", "paused", "resumed", "aborted", "finished"]
ALL_EVENTS: frozenset[NotifyEvent] = frozenset(
    {"approval_requested", "paused", "resumed", "aborted", "finished"}
)
#: Longest wait between two attempts of one document, seconds.
MAX_BACKOFF_S = 60.0


class NotifyConfig(BaseModel):
    """Where and how to notify (``notify:`` in campaign.yaml, ``--notify-url``).

    - ``url``: the webhook, ``http://`` or ``https://``.
    - ``events``: the events sent (default: all of ``NotifyEvent``).
    - ``timeout_s`` (10): seconds one POST may take (connect, send, read), then it is retried.
    - ``retries`` (5): retries of a document after its first attempt, then it is dropped.
    - ``backoff_s`` (1): seconds before the first retry, doubled for each next one.
    - ``flush_s`` (5): seconds ``after_campaign`` waits for the queue to empty.
    - ``headers``: added to each POST (e.g. ``Authorization``); never logged.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: HttpUrl
    events: frozenset[NotifyEvent] = ALL_EVENTS
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=5, ge=0, le=20)
    backoff_s: float = Field(default=1.0, ge=0, le=MAX_BACKOFF_S)
    flush_s: float = Field(default=5.0, ge=0, le=60)
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def shown(self) -> str:
        """The webhook as logs show it: scheme and host, never its path (a token)."""
        parts = urlsplit(str(self.url))
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


class CampaignOptions(BaseModel):
    """How one campaign runs. Seconds for every ``*_s``; ``wave_timeout_s`` overrides the
    computed wave deadline; ``max_fail_percentage`` is 0–100; ``min_health`` a 0–100 score;
    ``lock_timeout_s`` how long the system lock may pause a live campaign before it ends
    ``aborted`` (None: wait for ``buddy unlock``); ``auto_lock`` whether the monitor's
    ``unsafe_escalation`` locks the system; ``monitor`` the anomaly thresholds and health
    weights (campaign.yaml ``monitor:``); ``notify`` the webhook that hears of approvals,
    pauses and the end (:mod:`buddy.coordinator.notify`; not stored with the campaign: its
    headers may hold a token); ``fresh`` ignores the agent and tool profiles earlier
    campaigns left (:mod:`buddy.optimizer.memory`)."""

    mode: Mode = Mode.MOCK
    workdir: Path = Field(default_factory=Path.cwd)
    out_dir: Path | None = None
    outputs_root: Path = Path("outputs")
    batch_size: int | None = None
    worker_wait_s: float = 10.0
    progress: bool = True
    campaign_id: str | None = None
    redis_display: str = ""
    embedded: bool = False
    schedule_path: Path | None = None
    config_path: Path | None = None
    escalation: EscalationPolicy = Field(default_factory=EscalationPolicy)
    approval_timeout_s: float = 600.0
    max_fail_percentage: float | None = None
    max_failures: int | None = None
    rollback_on_abort: bool = False
    rollback_scope: str = "wave"
    wave_timeout_s: float | None = None
    optimize: bool = True
    min_health: float | None = None
    lock_timeout_s: float | None = None
    auto_lock: bool = True
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    notify: NotifyConfig | None = None
    fresh: bool = False
    resume: bool = False
