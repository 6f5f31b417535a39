"""The ``buddy`` command (typer + rich): the typer app, its entry point, and the command modules
it is made of.

Exit codes: 0 all succeeded, 1 finished with other statuses, 2 invalid input (nothing was
dispatched), 3 aborted (a rule fired, or the fleet could not be reached), 130 interrupted.
A mistake in the input prints ``FILE:LINE: message`` lines, never a traceback.

One module per group of commands, each with a ``register(app)``, in the order they are
registered (``buddy --help`` lists the commands first, then the groups):

- :mod:`buddy.cli.campaign`: ``validate``, ``run``, ``resume``
- :mod:`buddy.cli.control`: ``status``, ``agents``, ``abort``, ``review``, ``rollback``
- :mod:`buddy.cli.steer`: ``lock``, ``unlock``, ``pause``, ``unpause``, ``cancel``
- :mod:`buddy.cli.profiles`: ``profiles``
- :mod:`buddy.cli.approvals`: the ``approvals`` group
- :mod:`buddy.cli.worker`: ``worker``, ``tools``
- :mod:`buddy.cli.ops`: ``flower``, ``exporter``, ``doctor``, the ``deadletter`` group

What they share lives in :mod:`buddy.cli.context` (consoles, exit codes, :func:`fail`, and
:class:`~buddy.cli.context.CliContext`, which resolves and probes the Redis and the broker once)
and :mod:`buddy.cli.options` (the options several commands take).
"""

from __future__ import annotations

import sys

import typer

from buddy.cli import approvals, campaign, control, ops, profiles, steer, worker
from buddy.cli.context import EXIT_ABORTED, EXIT_INTERRUPTED, EXIT_INVALID, err, fail
from buddy.config import get_settings
from buddy.errors import BuddyError, ConfigError, ContractError, PlanError
from buddy.infra.transport import redact_url

__all__ = ["EXIT_ABORTED", "EXIT_INTERRUPTED", "EXIT_INVALID", "app", "fail", "main", "redact_url"]

app = typer.Typer(
    name="buddy",
    help="Run agent task plans as wave campaigns on a Celery + Redis worker fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
campaign.register(app)
control.register(app)
steer.register(app)
profiles.register(app)
approvals.register(app)  # typer lists the groups after the commands, in this order
worker.register(app)
ops.register(app)


def main() -> None:
    """Entry point of the ``buddy`` console script."""
    try:
        from buddy.infra.logs import setup_logging

        setup_logging(get_settings())
        app()
    except BuddyError as e:  # a user-facing error that escaped a command
        err.print(f"error: {e}", markup=False)
        sys.exit(EXIT_INVALID if isinstance(e, (PlanError, ConfigError, ContractError)) else EXIT_ABORTED)
