"""Options that several ``buddy`` commands take, declared once (typer ``Annotated`` aliases),
and the two helpers that read them: :func:`split_values` and :func:`set_root`.

Where the Redis and the broker options lead is :mod:`buddy.cli.context`'s business.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from buddy.config import get_settings
from buddy.models import Strategy

# -- shared by many commands ------------------------------------------------------------------

RedisOpt = Annotated[str | None, typer.Option("--redis-url", help="Default: BUDDY_REDIS_URL.")]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-url",
        help="Celery broker when not the Redis, e.g. amqp://USER:PASSWORD@host:5672/VHOST (RabbitMQ). "
        "Default: BUDDY_BROKER_URL.",
    ),
]
ToolsOpt = Annotated[
    list[str] | None, typer.Option("--tools", help="Module(s) to import for their @buddy.tool contracts.")
]
RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Confine the file tools to this directory (BUDDY_FILE_ROOT): paths outside it are refused.",
    ),
]


def split_values(values: list[str] | None) -> list[str]:
    """A repeatable option whose values may also be comma-separated (``--tools a,b --tools c``),
    as one list without blanks."""
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def set_root(root: Path | None) -> str | None:
    """Apply ``--root`` to this process's settings (BUDDY_FILE_ROOT); the root in force, if any."""
    if root is not None:
        os.environ["BUDDY_FILE_ROOT"] = str(root.expanduser().resolve())
        get_settings.cache_clear()
    return get_settings().file_root


# -- the commands that read a plan: validate, run, resume -------------------------------------

PlanArg = Annotated[Path, typer.Argument(help="The plan: JSONL, one task per line.")]
ScheduleOpt = Annotated[
    Path | None, typer.Option("--schedule", help="JSONL lines {task_id, agent, wave} that pin tasks.")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="campaign.yaml: agents, strategy, mode, defaults.")
]
AgentsOpt = Annotated[
    str | None, typer.Option("--agents", help="Agent ids 'a1,a2,a3' or a count '3' (→ a1..a3). Default 3.")
]
StrategyOpt = Annotated[
    Strategy | None,
    typer.Option("--strategy", help="How unpinned tasks are assigned (see README). Default round_robin."),
]
WorkdirOpt = Annotated[
    Path | None, typer.Option("--workdir", help="Where relative paths in tool args resolve. Default: cwd.")
]
ConflictOpt = Annotated[
    list[str] | None,
    typer.Option("--conflict", help="TYPE=RESOLUTION, e.g. write_write=priority (repeatable; see README)."),
]


class AutoApprove(StrEnum):
    """``buddy run --auto-approve``: the highest risk approved without an operator."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class RollbackScope(StrEnum):
    """``buddy run --rollback-scope``: what an abort compensates."""

    wave = "wave"
    campaign = "campaign"
