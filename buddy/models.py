"""Records that cross a process boundary or land in an output file (docs/architecture.md, "Outputs").

Every record is a pydantic model; JSONL files hold one ``model_dump_json()`` per line,
timestamps are timezone-aware UTC, fractions are 0–1 and health is 0–100.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TASK_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Risk(StrEnum):
    """How much harm a tool's live effect can do; drives escalation (docs/architecture.md, safety gates)."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"


class Mode(StrEnum):
    """Execution mode of a campaign or of one task (docs/architecture.md, "Execution modes")."""

    MOCK = "mock"
    DRY_RUN = "dry_run"
    LIVE = "live"


class TaskStatus(StrEnum):
    """Where a task stands. The last group are final: a task with one never runs again."""

    PENDING = "pending"
    VALIDATED = "validated"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    QUEUED = "queued"
    RUNNING = "running"
    # final
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    DENIED = "denied"
    SKIPPED = "skipped"
    NEEDS_REVIEW = "needs_review"
    ROLLED_BACK = "rolled_back"
    LOST = "lost"
    CANCELLED = "cancelled"


FINAL_STATUSES = frozenset(
    {
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.TIMED_OUT,
        TaskStatus.DENIED,
        TaskStatus.SKIPPED,
        TaskStatus.NEEDS_REVIEW,
        TaskStatus.ROLLED_BACK,
        TaskStatus.LOST,
        TaskStatus.CANCELLED,
    }
)


class Strategy(StrEnum):
    """How unpinned tasks are assigned to agents; see :mod:`buddy.plan.assignment` for definitions."""

    ROUND_ROBIN = "round_robin"
    LOAD_BALANCED = "load_balanced"
    PRIORITY = "priority"
    CONFIDENCE = "confidence"


#: A probability or a share: a finite float in 0..1 (``NaN`` and infinities are errors).
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]

#: The highest wave a plan line or a schedule line may name. Waves are dispatched one after
#: the other and reported one by one, so a wave number is a small positive int; a plan of
#: 100 000 tasks laid out one per wave still fits. Waves computed from dependencies (one
#: after the latest dependency's) are not bounded by it.
MAX_WAVE = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: The ids of the source documents' other phases a plan line may carry: the Phase 21 plan it
#: came from and the Phase 22 validation it belongs to. They ride along from the plan line to
#: the message (:class:`TaskSpec`), the outcome (:class:`Outcome`) and the learning signals.
SEED_IDS = ("phase21_plan_id", "phase22_validation_id")


def _is_none(value: object) -> bool:
    return value is None


def seed_id_field(description: str) -> Any:
    """A field of :data:`SEED_IDS` on a record that crosses a process: None by default, and
    left out of every dump while None, so a record without it serializes (and a message item
    digests, :func:`buddy.state.store.spec_digest`) exactly as before these fields existed.
    Field-level ``exclude_if`` is pydantic ≥ 2.12's; an older pydantic would write them as
    ``null`` (consistently on both sides of a message, but no longer the old digest)."""
    return Field(default=None, exclude_if=_is_none, description=description)


class ResourceClaim(_Strict):
    """A claim a task makes on a named resource: ``write`` is exclusive, ``read`` shared."""

    name: str = Field(min_length=1, max_length=512)
    mode: Literal["read", "write"] = "write"


class PlanTask(_Strict):
    """One line of a plan (the Phase 20 predictions format). Unknown fields are errors.

    Bounds: ``wave`` an int in 1..:data:`MAX_WAVE`; ``priority`` an int in 0..100;
    ``predicted_success`` and ``confidence`` finite floats in 0..1. Plan lines are read
    strictly: a float is not an int (``"wave": 2.0`` and ``"wave": 1e30`` are errors).
    ``args`` are checked by the tool's own args model. ``phase21_plan_id`` and
    ``phase22_validation_id`` (1–128 characters, optional) are the seeds' ids of the Phase 21
    plan and the Phase 22 validation the line belongs to; Buddy does not interpret them, it
    carries them into the task's outcome and learning signals (:data:`SEED_IDS`).
    """

    task_id: str
    tool: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)
    agent: str | None = None
    wave: int | None = Field(default=None, ge=1, le=MAX_WAVE)
    depends_on: list[str] = Field(default_factory=list)
    resources: list[ResourceClaim] = Field(default_factory=list)
    priority: int = Field(default=50, ge=0, le=100)
    predicted_success: Fraction = 0.5
    confidence: Fraction = 0.5
    trigger_rule: Literal["all_success", "all_done"] = "all_success"
    phase21_plan_id: str | None = Field(default=None, min_length=1, max_length=128)
    phase22_validation_id: str | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, v: str) -> str:
        if not TASK_ID_RE.match(v):
            raise ValueError("task_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        return v

    @field_validator("resources", mode="before")
    @classmethod
    def _resources(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": r} if isinstance(r, str) else r for r in v]
        return v


class ScheduleEntry(_Strict):
    """One line of a schedule file: pins a task to an agent and/or a wave (an int in
    1..:data:`MAX_WAVE`, as on a plan line)."""

    task_id: str
    agent: str | None = None
    wave: int | None = Field(default=None, ge=1, le=MAX_WAVE)


class AgentSpec(_Strict):
    """An agent of the campaign: its id, the tools it offers (None: all) and its concurrency."""

    id: str
    tools: list[str] | None = None
    concurrency: int = Field(default=2, ge=1, le=256)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not AGENT_ID_RE.match(v):
            raise ValueError("agent id must be 1-64 characters of A-Z a-z 0-9 _ . -")
        return v

    @property
    def queue(self) -> str:
        return agent_queue(self.id)

    def offers(self, tool: str) -> bool:
        return self.tools is None or tool in self.tools


def agent_queue(agent_id: str) -> str:
    """The Celery queue of an agent: ``buddy.agent.<id>``."""
    return f"buddy.agent.{agent_id}"


COORDINATOR_QUEUE = "buddy.coordinator"


class TaskSpec(BaseModel):
    """What the coordinator sends a worker for one task (inside a batch message).

    ``phase21_plan_id`` / ``phase22_validation_id``: the plan line's (:data:`SEED_IDS`), left
    out of the message while None. ``max_attempts`` / ``timeout_s``: the agent tuner's
    attempts and timeout (seconds) for the task's agent; the worker applies them only below
    the tool contract's own (:mod:`buddy.optimizer.tuner`), left out while None.
    """

    task_id: str
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    mode: Mode = Mode.MOCK
    mode_reason: str | None = None
    workdir: str = "."
    planned_agent: str | None = None
    planned_wave: int | None = None
    claims: list[ResourceClaim] = Field(default_factory=list)
    phase21_plan_id: str | None = seed_id_field("the plan line's Phase 21 plan id")
    phase22_validation_id: str | None = seed_id_field("the plan line's Phase 22 validation id")
    max_attempts: int | None = Field(default=None, ge=1, exclude_if=_is_none)
    timeout_s: float | None = Field(default=None, gt=0, exclude_if=_is_none)


class AttemptError(BaseModel):
    """One failed attempt of a task (or a failure within it, such as its rollback's).

    ``at``: when the error was recorded; ``start_time``: when its attempt started;
    ``duration_ms``: the attempt's wall time from its start to this error (milliseconds).
    ``start_time`` and ``duration_ms`` are None when they are not known: an attempt that
    died without reporting (``WorkerLost``), or an error recorded before they were kept.
    A line of ``tool_execution_log.jsonl`` per failed attempt is built from them.
    """

    attempt: int
    error_type: str
    error_msg: str
    at: datetime
    start_time: datetime | None = None
    duration_ms: float | None = None


class Outcome(BaseModel):
    """The record of one task's execution; a line of ``executed_tasks.jsonl``.

    ``duration_ms`` is wall time of the last attempt (ms); ``attempts`` counts every try;
    ``start_time`` is when the last attempt started (UTC), None when the tool never ran
    (skipped, denied at the gate, cancelled, lost, revoked); ``mode`` the mode it ran (or
    would have run) in, never ``live`` for work that ran otherwise. ``fencing_token`` is the
    lease token the task held; ``current_fencing_token`` the resource's newest token when a
    lease was found lost (``lease_lost``, ``stale_commit``). ``phase21_plan_id`` /
    ``phase22_validation_id``: the plan line's (:data:`SEED_IDS`), from the task's message;
    left out of the JSON while None.
    """

    task_id: str
    campaign_id: str
    agent_id: str | None
    wave: int
    status: TaskStatus
    mode: Mode
    mode_reason: str | None = None
    attempts: int = 0
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration_ms: float = 0.0
    result: dict[str, Any] | None = None
    error_type: str | None = None
    error_msg: str | None = None
    worker: str | None = None
    tool: str | None = None
    errors: list[AttemptError] = Field(default_factory=list)
    rolled_back: bool = False
    fencing_token: int | None = None
    current_fencing_token: int | None = None
    phase21_plan_id: str | None = seed_id_field("the plan line's Phase 21 plan id")
    phase22_validation_id: str | None = seed_id_field("the plan line's Phase 22 validation id")


class RollbackEvent(BaseModel):
    """One line of ``rollback_events.jsonl``: one compensation of a task's effect.

    ``status``: ``rolled_back`` (undone), ``failed`` (the rollback raised: ``error``),
    ``skipped`` (nothing to undo: ``reason``) or ``not_reversible`` (the tool cannot be
    compensated; listed in the report).
    """

    campaign_id: str
    task_id: str
    tool: str | None
    agent_id: str | None
    wave: int | None
    status: Literal["rolled_back", "failed", "skipped", "not_reversible"]
    at: datetime
    worker: str | None = None
    reason: str | None = None
    error: str | None = None


class ToolExecutionLogEntry(BaseModel):
    """One line of ``tool_execution_log.jsonl``: one attempt of one tool call."""

    campaign_id: str
    task_id: str
    tool: str
    agent_id: str | None
    wave: int
    mode: Mode
    attempt: int
    status: TaskStatus
    start_time: datetime | None
    end_time: datetime | None
    duration_ms: float
    error_type: str | None = None
    error_msg: str | None = None
    worker: str | None = None


class ScheduleAdjustment(BaseModel):
    """One line of ``wave_<n>/agent_<id>/adjusted_schedule.jsonl``: a task moved between agents."""

    task_id: str
    wave: int
    from_agent: str | None
    to_agent: str
    pinned: bool = False
    reason: str
    at: datetime = Field(default_factory=utcnow)


class AgentAssignment(BaseModel):
    """One line of ``wave_<n>/agent_<id>/agent_assignments.jsonl``."""

    task_id: str
    agent_id: str
    wave: int
    tool: str
    pinned: bool
    strategy: Strategy
    priority: int
    predicted_success: float
    confidence: float
    mode: Mode
    mode_reason: str | None = None


class StatusCounts(BaseModel):
    """Tasks per final status."""

    total: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)

    def add(self, status: str) -> None:
        self.total += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1

    @property
    def succeeded(self) -> int:
        return self.by_status.get(TaskStatus.SUCCEEDED.value, 0)


class AgentSummary(BaseModel):
    """Per-agent totals of a wave or a campaign; durations in milliseconds."""

    agent_id: str
    counts: StatusCounts = Field(default_factory=StatusCounts)
    busy_ms: float = 0.0
    mean_duration_ms: float = 0.0
    workers: list[str] = Field(default_factory=list)


class WaveSummary(BaseModel):
    """What ``wave_complete`` computes from the wave's outcomes."""

    campaign_id: str
    wave: int
    counts: StatusCounts
    agents: dict[str, AgentSummary]
    start_time: datetime | None = None
    end_time: datetime | None = None
    wall_s: float = 0.0
    success_rate: float = 0.0
    throughput_tps: float = 0.0


class CampaignInfo(BaseModel):
    """``campaign.json``: the config, plan digest and versions of a campaign."""

    campaign_id: str
    plan_path: str
    plan_digest: str
    schedule_path: str | None = None
    config_path: str | None = None
    mode: Mode
    strategy: Strategy
    agents: list[AgentSpec]
    workdir: str
    tasks: int
    waves: int
    created_at: datetime
    redis: str
    embedded: bool
    versions: dict[str, str]


CampaignStatus = Literal["succeeded", "finished_with_failures", "aborted", "interrupted", "running"]

#: Why a campaign is paused: the system lock (live campaigns only) or ``buddy pause``.
PauseKind = Literal["lock", "operator"]


class Pause(BaseModel):
    """One pause of a campaign: while it lasts no task of the campaign starts (a live
    campaign's tasks while the system is locked; every task after ``buddy pause``), tasks
    already running finish. Stored as JSON in the campaign hash's ``paused`` field while it
    lasts (``status`` reads ``paused`` then), listed in ``execution_summary.json``'s
    ``pauses`` and in report.md once it ended. ``since``: when the lock was set or the pause
    requested (UTC); ``until``: when the campaign went on or ended; ``seconds``: how long the
    campaign was paused (None while it lasts); ``wave``: the wave it held."""

    kind: PauseKind
    reason: str
    by: str
    since: datetime
    until: datetime | None = None
    seconds: float | None = None
    wave: int | None = None

    def describe(self) -> str:
        """``system locked: <reason>, by <who>, since <time>`` or ``paused by <who>: <reason>, since …``."""
        since = self.since.strftime("%Y-%m-%d %H:%M:%S UTC")
        if self.kind == "lock":
            return f"system locked: {self.reason}, by {self.by}, since {since}"
        return f"paused by {self.by}: {self.reason}, since {since}"


class Target(BaseModel):
    """One of the source documents' performance targets, judged for a campaign
    (:mod:`buddy.analysis.targets` says how each is measured and when it is not judged).

    ``target``: the goal as text (``≥ 0.90``, ``0.70–1.00``); ``low`` / ``high``: its bounds
    (None: open), in the unit of ``value``; ``value``: the campaign's measure (None: nothing
    to measure); ``met``: True or False, None when not judged; ``why``: what the verdict
    rests on, in a sentence.
    """

    name: str
    target: str
    low: float | None = None
    high: float | None = None
    unit: str = ""
    value: float | None
    met: bool | None
    why: str


class ExecutionSummary(BaseModel):
    """``execution_summary.json``: totals, per agent, per wave, start and end; ``targets``: the
    source documents' performance targets, met, missed or not judged (:class:`Target`)."""

    campaign_id: str
    status: CampaignStatus
    exit_code: int
    mode: Mode
    counts: StatusCounts
    agents: dict[str, AgentSummary]
    waves: list[WaveSummary]
    start_time: datetime
    end_time: datetime | None
    wall_s: float
    abort_reason: str | None = None
    health: float | None = None
    health_status: str | None = None
    pauses: list[Pause] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
