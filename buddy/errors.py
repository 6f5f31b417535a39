"""Errors raised by Buddy.

Every error Buddy raises on purpose derives from :class:`BuddyError`, so a caller can
catch one root. The tree::

    BuddyError
    ├── ConfigError                bad settings or campaign.yaml (exit code 2 at the CLI)
    │   └── CampaignFinished       ``resume`` of a finished campaign (in :mod:`buddy.api.resume`)
    ├── PlanError                  the plan, schedule or conflicts failed validation (exit code 2)
    ├── SpecialFileError           a plan, schedule or config path is a FIFO, device or directory
    ├── ContractError              a tool contract was refused at registration
    ├── UnknownToolError           a tool name that no registry entry has
    ├── IllegalTransition          a task state change that the state machine does not allow
    ├── CampaignAborted            a rule stopped a campaign (thresholds, min health, an operator)
    │   └── LockTimeout            the system lock paused a live campaign past --lock-timeout
    ├── InfrastructureError        Redis or worker processes could not be started or reached
    │   ├── RedisUnavailable       the first connection to a Redis failed: refused, password, TLS
    │   └── BrokerUnavailable      the first connection to an AMQP broker failed
    └── ToolError                  raised *by a tool* to report a failed effect; becomes an outcome
        ├── RetryableToolError     a transient failure: the retry policy applies
        │   └── LeaseConflictError a resource lease stayed taken past ``lease_wait_s``
        ├── ToolDeniedError        a worker policy refused the call: outcome ``denied``
        │   └── OutsideRootError   a path resolves outside ``BUDDY_FILE_ROOT``
        ├── ToolTimeoutError       the call ran past its timeout: outcome ``timed_out``
        ├── NotARegularFileError   a file tool met a FIFO, socket or device
        ├── LeaseLostError         a lease was lost before the effect was committed
        └── StaleCommitError       a lease was found lost just after the effect was committed

Tool errors never travel through Celery: the worker turns them into outcomes
(docs/architecture.md, "Failures are data"). A :class:`PlanError` carries its problems as
data, ``(source, line, message)`` each; :class:`FileErrors` gathers them per file.
"""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from typing import Literal

#: How many problems ``str(PlanError)`` lists before ``… and N more errors``.
MAX_ERRORS = 50


class BuddyError(Exception):
    """Root of every error Buddy raises on purpose."""


class ConfigError(BuddyError):
    """Raised when settings or a campaign config file are invalid."""


#: One problem of a plan: ``(source, line, message)``; ``source`` is the file (or
#: ``<tasks>`` for a plan given in memory), ``line`` is 1-based, 0 for the whole source.
Problem = tuple[str, int, str]


def format_problem(problem: Problem) -> str:
    """``SOURCE:LINE: message``, or ``SOURCE: message`` when the line is 0."""
    source, line, message = problem
    return f"{source}:{line}: {message}" if line else f"{source}: {message}"


class PlanError(BuddyError):
    """Raised when a plan, its schedule or its conflict resolution fails validation.

    ``errors`` holds every problem found as ``(source, line, message)`` (see :data:`Problem`),
    in the order they are listed. ``str(err)`` prints one ``SOURCE:LINE: message`` per problem
    (``SOURCE: message`` for line 0), at most :data:`MAX_ERRORS` of them followed by
    ``… and N more errors``: what the CLI prints.
    """

    def __init__(self, errors: Iterable[Problem]) -> None:
        self.errors: list[Problem] = [(str(s), int(n), str(m)) for s, n, m in errors]
        super().__init__(self.errors)

    @classmethod
    def single(cls, source: PathLike[str] | str, message: str, line: int = 0) -> PlanError:
        """A PlanError holding one problem."""
        return cls([(str(source), line, message)])

    def lines(self, limit: int = MAX_ERRORS) -> list[str]:
        """The problems as printed: the first ``limit``, then ``… and N more errors``."""
        shown = [format_problem(p) for p in self.errors[:limit]]
        rest = len(self.errors) - limit
        if rest > 0:
            shown.append(f"… and {rest} more error{'s' if rest != 1 else ''}")
        return shown

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __reduce__(self) -> tuple[type[PlanError], tuple[list[Problem]]]:
        return type(self), (self.errors,)


class SpecialFileError(BuddyError, OSError):
    """Raised by :func:`buddy.plan.jsonl.read_regular_file` when a plan, schedule or config
    path is not a regular file; ``str()`` says what it is, e.g. ``not a regular file (a FIFO)``.
    An :class:`OSError` too, as every other failure to read the file is."""


class ContractError(BuddyError):
    """Raised when a tool contract is malformed or clashes with a registered one."""


class UnknownToolError(BuddyError):
    """Raised when a tool name is not in the registry; the message lists the known ones."""


class IllegalTransition(BuddyError):
    """Raised when a task would move between two states that
    :data:`buddy.state.lifecycle.LEGAL` does not connect."""


class CampaignAborted(BuddyError):
    """Raised inside the coordinator when a rule stops the campaign (``--max-fail-percentage``,
    ``--max-failures``, ``--min-health``, ``buddy abort``, no live agent); ``reason`` goes into
    the summary and the report, and the exit code is 3."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LockTimeout(CampaignAborted):
    """The system stayed locked longer than ``--lock-timeout``: the campaign ends ``aborted``
    and every task that has not started ends ``cancelled`` (:mod:`buddy.coordinator.pausing`)."""


class InfrastructureError(BuddyError):
    """Raised when Redis or worker processes cannot be started, reached or found."""


#: What went wrong when a Redis could not be reached (:attr:`RedisUnavailable.kind`).
RedisFault = Literal["auth", "permission", "refused", "unknown_host", "tls", "timeout", "protocol", "other"]


class RedisUnavailable(InfrastructureError):
    """Raised when a first connection to a Redis fails (:func:`buddy.infra.probes.check_redis`).

    ``url`` is the Redis URL with its password redacted; ``kind`` classifies the fault;
    ``reason`` says what happened and ``fix`` what to change. ``str(err)`` is
    ``cannot reach Redis at URL: reason`` and a ``fix: …`` line; it never holds a password.
    The CLI exits 3 on it.
    """

    def __init__(self, url: str, kind: RedisFault, reason: str, fix: str) -> None:
        self.url, self.kind, self.reason, self.fix = url, kind, reason, fix
        super().__init__(f"cannot reach Redis at {url}: {reason}\nfix: {fix}")

    def __reduce__(self) -> tuple[type[RedisUnavailable], tuple[str, RedisFault, str, str]]:
        return type(self), (self.url, self.kind, self.reason, self.fix)


class BrokerUnavailable(InfrastructureError):
    """Raised when a first connection to an AMQP broker fails (:func:`buddy.infra.probes.check_broker`).

    Like :class:`RedisUnavailable`: ``url`` is redacted, ``kind`` classifies the fault (a
    :data:`RedisFault` value, ``"vhost"`` added), ``reason`` and ``fix`` are for the operator;
    ``str(err)`` never holds a password. The CLI exits 3 on it.
    """

    def __init__(self, url: str, kind: str, reason: str, fix: str) -> None:
        self.url, self.kind, self.reason, self.fix = url, kind, reason, fix
        super().__init__(f"cannot reach the broker at {url}: {reason}\nfix: {fix}")

    def __reduce__(self) -> tuple[type[BrokerUnavailable], tuple[str, str, str, str]]:
        return type(self), (self.url, self.kind, self.reason, self.fix)


class ToolError(BuddyError):
    """Raised by a tool when its effect failed; the worker records it as a ``failed`` outcome.

    ``error_type`` names the failure for the outcome (default: the class name).
    """

    retryable = False

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


class RetryableToolError(ToolError):
    """Raised by a tool for a transient failure (5xx, connection refused, a flaky dependency).

    The tool's retry policy decides whether and when the task runs again.
    """

    retryable = True


class LeaseConflictError(RetryableToolError):
    """Raised when a task could not get its resource leases within ``lease_wait_s``
    (:class:`buddy.state.leases.LeaseManager`); ``error_type`` ``conflict``, retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_type="conflict")


class ToolDeniedError(ToolError):
    """Raised by a tool when a policy of the worker forbids the call (``BUDDY_SHELL_ALLOW``,
    ``BUDDY_PYTHON_ALLOW``); the outcome's status is ``denied`` and nothing ran."""


class OutsideRootError(ToolDeniedError):
    """Raised by a file tool when a path resolves outside ``BUDDY_FILE_ROOT`` (``error_type``
    ``OutsideRoot``; outcome ``denied``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_type="OutsideRoot")


class ToolTimeoutError(ToolError):
    """Raised when a tool ran past its timeout and was stopped; the outcome is ``timed_out``."""


class NotARegularFileError(ToolError):
    """Raised by a file tool when a path names a FIFO, socket or device (``error_type``
    ``NotARegularFile``; outcome ``failed``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_type="NotARegularFile")


class LeaseLostError(ToolError):
    """Raised when a lease expired (or was taken over) before the effect was committed;
    ``error_type`` ``lease_lost``.

    The effect was refused, so nothing is to be undone. ``token`` is the holder's fencing
    token, ``current_token`` the resource's newest (None when unknown).
    """

    def __init__(self, message: str, token: int | None = None, current_token: int | None = None) -> None:
        super().__init__(message, error_type="lease_lost")
        self.token = token
        self.current_token = current_token


class StaleCommitError(ToolError):
    """Raised when a lease is found lost right *after* an effect was committed
    (``stale_commit``).

    The holder was paused between its last check and the commit, so its write may have
    landed on top of a newer holder's. It cannot be excluded, so the task ends
    ``needs_review`` with both tokens; nothing is rolled back (that would be a stale write
    too).
    """

    def __init__(self, message: str, token: int | None = None, current_token: int | None = None) -> None:
        super().__init__(message, error_type="stale_commit")
        self.token = token
        self.current_token = current_token


class FileErrors:
    """The problems of one source (a plan or schedule file, ``<tasks>``), each kept with its
    line (0 for the whole source), listed in line order by :meth:`sorted`."""

    def __init__(self, source: PathLike[str] | str) -> None:
        self.name = str(source)
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        self.items.append((line, message))

    def sorted(self) -> list[Problem]:
        """The problems as ``(source, line, message)``, by line (stable)."""
        name = self.name
        return [(name, line, message) for line, message in sorted(self.items, key=lambda item: item[0])]

    def __bool__(self) -> bool:
        return bool(self.items)
