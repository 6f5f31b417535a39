"""Buddy: run agent task plans as wave campaigns on a Celery + Redis worker fleet.

The public API for tool authors is :func:`tool` (register a tool contract) with
:class:`ToolContext`, :class:`RetryPolicy`, :class:`Risk` and the errors in
:mod:`buddy.errors`. Everything else is reached through the ``buddy`` CLI.
"""

from __future__ import annotations

from buddy.errors import BuddyError, RetryableToolError, ToolError
from buddy.models import Mode, Risk
from buddy.tools import RetryPolicy, ToolContext, ToolContract, tool

__version__ = "0.1.0"

__all__ = [
    "BuddyError",
    "Mode",
    "RetryPolicy",
    "RetryableToolError",
    "Risk",
    "ToolContext",
    "ToolContract",
    "ToolError",
    "__version__",
    "tool",
]
