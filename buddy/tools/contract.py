"""Tool contracts: what a tool takes, returns, risks and promises (docs/architecture.md, "Words": tool).

A :class:`ToolContract` binds a function to its argument and result models (pydantic),
its risk level, reversibility (with its rollback), idempotency, exclusivity, default
timeout, retry policy, the resources it claims, and its ``mock`` and ``dry_run``
behaviours. Contracts are checked when they are built, so a bad one is refused at
registration with a message that says what to fix (:class:`buddy.errors.ContractError`).
"""

from __future__ import annotations

import inspect
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from buddy.errors import ContractError, ToolError
from buddy.models import Mode, ResourceClaim, Risk

TOOL_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")


class RetryPolicy(BaseModel):
    """When and how often a failed tool call is tried again (driven by Celery's ``retry``).

    ``max_attempts`` counts the first try (3 = two retries). The delay before attempt
    ``n + 1`` after failed attempt ``n`` is, in seconds, ``initial_s * 2**(n-1)``
    (exponential), ``initial_s * n`` (linear) or ``initial_s`` (fixed), capped at ``max_s``,
    then spread by ``± jitter`` (a 0–1 fraction of the delay). Errors whose type is in
    ``non_retryable`` are never retried; only errors a tool marks retryable
    (:class:`buddy.errors.RetryableToolError`) are retried at all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["exponential", "linear", "fixed"] = "exponential"
    initial_s: float = Field(default=0.5, ge=0.0)
    max_s: float = Field(default=30.0, ge=0.0)
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)
    non_retryable: tuple[str, ...] = ()

    def delay_s(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` (1-based) failed."""
        n = max(1, failed_attempt)
        if self.backoff == "exponential":
            delay = self.initial_s * (2 ** (n - 1))
        elif self.backoff == "linear":
            delay = self.initial_s * n
        else:
            delay = self.initial_s
        delay = min(delay, self.max_s)
        if self.jitter:
            spread = delay * self.jitter
            delay = max(0.0, delay + (rng or random).uniform(-spread, spread))
        return delay

    def should_retry(self, failed_attempt: int, error_type: str, retryable: bool) -> bool:
        """True when attempt ``failed_attempt`` (1-based) failing with ``error_type`` earns another try."""
        return retryable and error_type not in self.non_retryable and failed_attempt < self.max_attempts


@dataclass
class ToolContext:
    """What a running tool knows about its call.

    ``workdir`` is where relative paths resolve (``--workdir`` of the campaign);
    ``fencing_token`` is the newest lease token held for the task's resources (or None);
    a tool calls :meth:`check_lease` right before it commits an effect on them;
    ``deadline`` is a ``time.monotonic()`` value after which the tool should give up.
    A reversible tool calls :meth:`record_undo` with JSON-able data *before* its effect;
    the data is handed back to its rollback.
    """

    campaign_id: str
    task_id: str
    attempt: int = 1
    workdir: Path = field(default_factory=Path.cwd)
    mode: Mode = Mode.LIVE
    worker: str | None = None
    fencing_token: int | None = None
    deadline: float | None = None
    undo: dict[str, Any] | None = None
    on_undo: Callable[[dict[str, Any]], None] | None = field(default=None, repr=False)
    lease_check: Callable[[], None] | None = field(default=None, repr=False)
    lease_confirm: Callable[[], None] | None = field(default=None, repr=False)

    def path(self, p: str | Path) -> Path:
        """``p`` made absolute against the campaign's workdir."""
        q = Path(p).expanduser()
        return q if q.is_absolute() else (self.workdir / q)

    def check_lease(self) -> None:
        """Call right before committing an effect on a leased resource: raises
        :class:`~buddy.errors.LeaseLostError` (``lease_lost``) when this task's lease expired or
        a newer fencing token exists, so a stale holder's effect is refused. No-op unleased."""
        if self.lease_check is not None:
            self.lease_check()

    def confirm_lease(self) -> None:
        """Call right *after* committing an effect on a leased resource: raises
        :class:`~buddy.errors.StaleCommitError` (``stale_commit``) when the lease was lost
        between :meth:`check_lease` and the commit (the worker was paused there), so the task
        ends ``needs_review`` instead of reporting a success that may have overwritten a newer
        holder's effect. No-op unleased."""
        if self.lease_confirm is not None:
            self.lease_confirm()

    def record_undo(self, data: dict[str, Any]) -> None:
        """Keep ``data`` (JSON-able) for this call's rollback; the worker persists it in Redis
        before the tool goes on, so a rollback works even after the worker died."""
        self.undo = data
        if self.on_undo is not None:
            self.on_undo(data)


ArgsFn = Callable[[Any], Any]


def _no_resources(args: Any, workdir: Path) -> list[ResourceClaim]:
    return []


@dataclass(frozen=True)
class ToolContract:
    """A registered tool. Build it through :func:`buddy.tools.tool` or directly; both check it.

    ``run(args, ctx)`` performs the live effect and returns the result model (or a dict of it);
    ``rollback(args, undo, ctx)`` undoes it (reversible tools only); ``resources(args, workdir)``
    lists the claims the call needs; ``mock(args)`` returns a synthetic result;
    ``dry_run(args, ctx)`` returns a JSON-able preview of the effect without making it.
    ``risk_of`` / ``idempotent_of`` refine ``risk`` / ``idempotent`` from the arguments
    (``http.request`` GET is LOW and idempotent, POST is MEDIUM and not).
    ``expected_duration(args)`` gives seconds when known (used by ``load_balanced``);
    ``timeout_of(args)`` gives the call's timeout in seconds when the arguments set one
    (``shell``'s ``timeout_s``), else ``timeout_s`` applies.
    """

    name: str
    description: str
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    run: Callable[[Any, ToolContext], Any]
    risk: Risk = Risk.LOW
    reversible: bool = False
    rollback: Callable[[Any, dict[str, Any], ToolContext], None] | None = None
    idempotent: bool = False
    exclusive: bool = False
    timeout_s: float = 60.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    resources: Callable[[Any, Path], list[ResourceClaim]] = _no_resources
    mock: Callable[[Any], Any] | None = None
    dry_run: Callable[[Any, ToolContext], dict[str, Any]] | None = None
    risk_of: Callable[[Any], Risk] | None = None
    idempotent_of: Callable[[Any], bool] | None = None
    expected_duration: Callable[[Any], float | None] | None = None
    timeout_of: Callable[[Any], float] | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ContractError:
            return ContractError(f"tool {self.name!r}: {msg}")

        if not isinstance(self.name, str) or not TOOL_NAME_RE.match(self.name):
            raise bad("name must be lowercase dotted words, e.g. 'file.sha256'")
        for what, model in (("args", self.args_model), ("result", self.result_model)):
            if not (inspect.isclass(model) and issubclass(model, BaseModel)):
                raise bad(f"{what} must be a pydantic BaseModel subclass, got {model!r}")
        if not callable(self.run):
            raise bad("run must be callable as run(args, ctx)")
        try:
            risk = Risk(self.risk)
        except ValueError:
            raise bad(f"risk must be one of {', '.join(r.value for r in Risk)}") from None
        object.__setattr__(self, "risk", risk)
        if self.reversible and self.rollback is None:
            raise bad("reversible=True needs a rollback(args, undo, ctx)")
        if self.rollback is not None and not self.reversible:
            raise bad("a rollback was given but reversible=False")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise bad("timeout_s must be a number of seconds > 0")
        if isinstance(self.retry, dict):
            try:
                object.__setattr__(self, "retry", RetryPolicy(**self.retry))
            except ValidationError as e:
                raise bad(f"bad retry policy: {_first_error(e)}") from None
        elif not isinstance(self.retry, RetryPolicy):
            raise bad("retry must be a RetryPolicy or a dict of its fields")
        if self.mock is None:
            try:
                self.result_model()
            except ValidationError:
                raise bad(
                    "its result model has required fields, so it needs mock=callable(args) "
                    "returning a synthetic result"
                ) from None

    # -- arguments and classification -------------------------------------------------

    def parse_args(self, args: dict[str, Any]) -> BaseModel:
        """Validate ``args`` against the argument model; raises ``pydantic.ValidationError``."""
        return self.args_model.model_validate(args)

    def risk_for(self, args: BaseModel) -> Risk:
        return Risk(self.risk_of(args)) if self.risk_of else self.risk

    def is_idempotent(self, args: BaseModel) -> bool:
        return bool(self.idempotent_of(args)) if self.idempotent_of else self.idempotent

    def claims(self, args: BaseModel, workdir: Path) -> list[ResourceClaim]:
        return list(self.resources(args, workdir))

    def timeout_for(self, args: BaseModel) -> float:
        """The call's timeout in seconds: ``timeout_of(args)`` when given, else ``timeout_s``."""
        return float(self.timeout_of(args)) if self.timeout_of else float(self.timeout_s)

    def expected_duration_s(self, args: BaseModel) -> float | None:
        return self.expected_duration(args) if self.expected_duration else None

    # -- the three modes ---------------------------------------------------------------

    def execute(self, args: BaseModel, ctx: ToolContext) -> dict[str, Any]:
        """Run the live effect; the result is checked against the result model.

        Raises :class:`ToolError` (or a subclass) for a failed effect, including a result
        that does not match the result model (``error_type`` ``ResultValidationError``).
        """
        return self._check_result(self.run(args, ctx))

    def mock_result(self, args: BaseModel) -> dict[str, Any]:
        """The synthetic result of ``mock`` mode: touches nothing."""
        if self.mock is None:
            return self.result_model().model_dump(mode="json")
        return self._check_result(self.mock(args))

    def preview(self, args: BaseModel, ctx: ToolContext) -> dict[str, Any]:
        """The ``dry_run`` preview: what the live call would do, without doing it."""
        if self.dry_run is None:
            return {"would_run": self.name, "args": args.model_dump(mode="json")}
        return dict(self.dry_run(args, ctx))

    def _check_result(self, value: Any) -> dict[str, Any]:
        try:
            model = value if isinstance(value, self.result_model) else self.result_model.model_validate(value)
        except ValidationError as e:
            raise ToolError(
                f"tool {self.name!r} returned a result that does not match its result model: "
                f"{_first_error(e)}",
                error_type="ResultValidationError",
            ) from None
        return model.model_dump(mode="json")

    def describe(self) -> dict[str, Any]:
        """A JSON-able description: the contract fields and the argument schema."""
        return {
            "name": self.name,
            "description": self.description,
            "risk": self.risk.value,
            "reversible": self.reversible,
            "idempotent": self.idempotent,
            "exclusive": self.exclusive,
            "timeout_s": self.timeout_s,
            "retry": self.retry.model_dump(mode="json"),
            "args_schema": self.args_model.model_json_schema(),
            "result_schema": self.result_model.model_json_schema(),
        }


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(root)"
    return f"{loc}: {err['msg']}"


def format_validation_error(e: ValidationError, prefix: str = "") -> list[str]:
    """Each pydantic error as ``field.path: message`` (with ``prefix`` before the path)."""
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(root)"
        out.append(f"{where}: {err['msg']}")
    return out
