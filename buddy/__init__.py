"""Buddy: run agent task plans as wave campaigns on a Celery + Redis worker fleet.

The library first, the ``buddy`` CLI second (it is a shell over this API)::

    import buddy

    camp = buddy.Campaign(tasks, agents=["a1", "a2"], mode="live", approver=my_approver)
    camp.validate()                      # raises buddy.PlanError; nothing dispatched
    result = camp.run()                  # embedded Redis + local workers by default
    result.status, result.exit_code, result.outcomes["t1"].result, result.health.score

- campaigns: :class:`Campaign`, :class:`CampaignResult`, :func:`resume`, :class:`Fleet`;
- extension: :class:`CampaignHooks` (``before_wave``, ``after_wave``, ``after_campaign``, …),
  :class:`ApprovalRequest` (what an ``approver`` callable is asked);
- tool authors: :func:`tool` (register a tool contract), :class:`ToolContext`,
  :class:`RetryPolicy`, :class:`Risk`, :class:`ToolError`, :class:`RetryableToolError`;
- records and errors: :class:`Outcome`, :class:`TaskStatus`, :class:`Mode`,
  :class:`BuddyError` (the root of every error), :class:`PlanError` (``.errors``: (source,
  line, message) each), :class:`ConfigError`, :class:`InfrastructureError`.

The architecture: docs/architecture.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from buddy.errors import (
    BuddyError,
    ConfigError,
    InfrastructureError,
    PlanError,
    RetryableToolError,
    ToolError,
)
from buddy.models import Mode, Outcome, Risk, TaskStatus
from buddy.tools import RetryPolicy, ToolContext, ToolContract, tool

if TYPE_CHECKING:
    from buddy.api.campaign import Campaign, PlanSummary
    from buddy.api.fleet import Fleet
    from buddy.api.resume import resume
    from buddy.coordinator.approvals import ApprovalRequest
    from buddy.coordinator.hooks import CampaignContext, CampaignHooks
    from buddy.coordinator.result import CampaignResult

__version__ = "0.1.0"

#: Names imported on first use (PEP 562), so that ``import buddy`` in a tool module or a
#: worker does not load the coordinator.
_LAZY = {
    "Campaign": "buddy.api.campaign",
    "PlanSummary": "buddy.api.campaign",
    "Fleet": "buddy.api.fleet",
    "resume": "buddy.api.resume",
    "ApprovalRequest": "buddy.coordinator.approvals",
    "CampaignContext": "buddy.coordinator.hooks",
    "CampaignHooks": "buddy.coordinator.hooks",
    "CampaignResult": "buddy.coordinator.result",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'buddy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ApprovalRequest",
    "BuddyError",
    "Campaign",
    "CampaignContext",
    "CampaignHooks",
    "CampaignResult",
    "ConfigError",
    "Fleet",
    "InfrastructureError",
    "Mode",
    "Outcome",
    "PlanError",
    "PlanSummary",
    "RetryPolicy",
    "RetryableToolError",
    "Risk",
    "TaskStatus",
    "ToolContext",
    "ToolContract",
    "ToolError",
    "__version__",
    "resume",
    "tool",
]
