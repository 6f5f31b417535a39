"""Errors raised by Buddy.

Every error Buddy raises on purpose derives from :class:`BuddyError`, so a caller can
catch one root. The tree::

    BuddyError
    ├── ConfigError            bad settings or campaign.yaml (exit code 2 at the CLI)
    ├── PlanError              the plan, schedule or config failed validation (exit code 2)
    ├── ContractError          a tool contract was refused at registration
    ├── UnknownToolError       a tool name that no registry entry has
    ├── ToolError              raised *by a tool* to report a failed effect; becomes an outcome
    │   ├── RetryableToolError a transient failure: the retry policy applies
    │   ├── ToolDeniedError    a worker policy refused the call (allow-lists): outcome ``denied``
    │   └── ToolTimeoutError   the call ran past its timeout: outcome ``timed_out``
    ├── StateError             Redis state is not what the caller required
    ├── CampaignAborted        a rule stopped a campaign (thresholds, min health, an operator)
    └── InfrastructureError    Redis or worker processes could not be started or reached
        └── RedisUnavailable   the first connection to a Redis failed: refused, password, host, TLS

Tool errors never travel through Celery: the worker turns them into outcomes
(docs/architecture.md, "Failures are data").

A :class:`PlanError`'s messages are gathered per file by :class:`FileErrors` and capped at
:data:`MAX_ERRORS` by :func:`cap_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Literal

#: How many errors a :class:`PlanError` lists before ``… and N more errors``.
MAX_ERRORS = 50


class BuddyError(Exception):
    """Root of every error Buddy raises on purpose."""


class ConfigError(BuddyError):
    """Raised when settings or a campaign config file are invalid."""


class PlanError(BuddyError):
    """Raised when a plan fails validation.

    ``errors`` holds every problem found (at most :data:`MAX_ERRORS`), each already formatted as
    ``FILE:LINE: message``; ``str(err)`` joins them with newlines.
    """

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


class ContractError(BuddyError):
    """Raised when a tool contract is malformed or clashes with a registered one."""


class UnknownToolError(BuddyError):
    """Raised when a tool name is not in the registry; the message lists the known ones."""


class ToolError(BuddyError):
    """Raised by a tool when its effect failed; the worker records it as a ``failed`` outcome.

    ``error_type`` names the failure for the outcome (default: the class name).
    """

    retryable = False

    def __init__(self, message: str, *, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type or type(self).__name__


class RetryableToolError(ToolError):
    """A transient tool failure (5xx, connection refused, a flaky dependency).

    The tool's retry policy decides whether and when the task runs again.
    """

    retryable = True


class ToolDeniedError(ToolError):
    """Raised by a tool when a policy of the worker forbids the call (``BUDDY_SHELL_ALLOW``,
    ``BUDDY_PYTHON_ALLOW``); the outcome's status is ``denied`` and nothing ran."""


class ToolTimeoutError(ToolError):
    """Raised when a tool ran past its timeout and was stopped; the outcome is ``timed_out``."""


class CampaignAborted(BuddyError):
    """Raised inside the coordinator when a rule stops the campaign (``--max-fail-percentage``,
    ``--max-failures``, ``--min-health``, ``buddy abort``, no live agent); ``reason`` goes into
    the summary and the report, and the exit code is 3."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StateError(BuddyError):
    """Raised when Redis state does not match what an operation requires."""


class InfrastructureError(BuddyError):
    """Raised when Redis or worker processes cannot be started, reached or found."""


#: What went wrong when a Redis could not be reached (:attr:`RedisUnavailable.kind`).
RedisFault = Literal["auth", "permission", "refused", "unknown_host", "tls", "timeout", "protocol", "other"]


class RedisUnavailable(InfrastructureError):
    """Raised when a first connection to a Redis fails (:func:`buddy.transport.check_redis`).

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


class FileErrors:
    """The validation errors of one file (a plan, a schedule), each kept with its line (0 for
    the whole file) so they can be listed in line order as ``FILE:LINE: message``."""

    def __init__(self, path: PathLike[str] | str) -> None:
        self.name = str(path)
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, message: str) -> None:
        where = f"{self.name}:{line}" if line else self.name
        self.items.append((line, f"{where}: {message}"))

    def sorted(self) -> list[str]:
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]

    def __bool__(self) -> bool:
        return bool(self.items)


def cap_errors(errors: Sequence[str], limit: int = MAX_ERRORS) -> list[str]:
    """The first ``limit`` errors, then ``… and N more errors`` when there were more."""
    if len(errors) <= limit:
        return list(errors)
    rest = len(errors) - limit
    return [*errors[:limit], f"… and {rest} more error{'s' if rest != 1 else ''}"]
