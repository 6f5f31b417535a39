"""What one outcome says to the analysis: did its tool run, how many attempts, which errors.

Every per-task, per-agent and per-wave number of :mod:`buddy.analysis` starts from these
predicates, so each is defined here once (docs/architecture.md, "Failures are data").

*Executed*: a worker produced the outcome (``worker`` set) and its status is not one of
:data:`NOT_RUN` (``denied``, ``skipped``, ``lost``, ``cancelled``): the tool actually ran. A task a worker
denied (``approval_missing``) or the coordinator closed (skipped, denied, lost by the wave
deadline, revoked) is counted by status but never judged as executed work.
"""

from __future__ import annotations

from buddy.models import Outcome, TaskStatus

#: Statuses whose task never ran its tool, whoever recorded the outcome.
NOT_RUN = frozenset({TaskStatus.DENIED, TaskStatus.SKIPPED, TaskStatus.LOST, TaskStatus.CANCELLED})
#: Error types that mean agents got in each other's way rather than the tool failing,
#: mapped to the name of the coordination issue they count as.
COORDINATION_ERRORS = {
    "conflict": "conflict",
    "lease_lost": "lease_lost",
    "WorkerLost": "worker_lost",
    "upstream_failed": "upstream_failed",
}
#: Error types of a resource conflict at run time.
CONFLICT_ERRORS = frozenset({"conflict", "lease_lost"})
#: The agent key of an outcome without an agent.
NO_AGENT = "-"


def executed(o: Outcome) -> bool:
    """True when the outcome's tool ran: a worker recorded it and its status is not in
    :data:`NOT_RUN` (module docstring)."""
    return o.worker is not None and o.status not in NOT_RUN


def succeeded(o: Outcome) -> bool:
    """True when the outcome's status is ``succeeded``."""
    return o.status is TaskStatus.SUCCEEDED


def agent_key(o: Outcome) -> str:
    """The agent an outcome counts for: its ``agent_id``, or :data:`NO_AGENT`."""
    return o.agent_id or NO_AGENT


def failed_attempts(o: Outcome) -> int:
    """Distinct failed attempts recorded in ``o.errors``."""
    return len({e.attempt for e in o.errors}) if o.errors else 0


def attempts_of(o: Outcome) -> int:
    """Attempts of an executed outcome: ``max(attempts, failed attempts, 1)``."""
    return max(o.attempts, failed_attempts(o), 1) if o.errors else max(o.attempts, 1)


def error_types(o: Outcome) -> set[str]:
    """The outcome's final error type and those of its failed attempts."""
    out = {e.error_type for e in o.errors}
    if o.error_type:
        out.add(o.error_type)
    return out
