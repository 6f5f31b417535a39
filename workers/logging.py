"""Buddy's log format in the worker processes (Celery's ``setup_logging`` signal).

With a receiver connected to ``setup_logging``, Celery leaves logging alone and this module
installs :func:`buddy.infra.logs.setup_logging` instead: ``BUDDY_LOG_FORMAT`` (``text`` or
``json``) at the worker's ``--loglevel``, with the campaign id, task id and worker name on
every line. ``celeryd_init`` installs it even before that, for the warnings Celery emits first;
``celeryd_after_setup`` names the worker (inherited by the pool's children) and,
with ``json``, turns Celery's multi-line startup banner into one log line, so that a worker's
output is JSON lines (Celery still prints a plain ``worker: Warm shutdown`` line when it stops).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import celeryd_after_setup, celeryd_init
from celery.signals import setup_logging as celery_setup_logging

from buddy.config import get_settings
from buddy.infra.logs import set_worker, setup_logging

log = logging.getLogger("buddy.worker")


@celery_setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, logfile: str | None = None, **_: Any) -> None:
    stream = open(logfile, "a", buffering=1, encoding="utf-8") if logfile else None  # noqa: SIM115
    setup_logging(get_settings(), level=loglevel or None, stream=stream)


@celeryd_init.connect
def _early_logging(sender: Any = None, options: dict[str, Any] | None = None, **_: Any) -> None:
    """Before Celery sets up logging (``celeryd_init``): Buddy's format already, so that warnings
    Celery emits first (e.g. running as root) are log lines too."""
    if sender:
        set_worker(str(sender))
    setup_logging(get_settings(), level=(options or {}).get("loglevel") or None)
    logging.captureWarnings(True)


@celeryd_after_setup.connect
def _name_worker(sender: Any = None, instance: Any = None, **_: Any) -> None:
    if sender:
        set_worker(str(sender))
    if instance is not None and get_settings().log_format == "json":
        instance.quiet = True  # Celery checks it right after this signal, before the banner
        try:
            queues = ", ".join(sorted(instance.app.amqp.queues.consume_from))
        except Exception:  # the banner's facts are nice to have, never worth a failed start
            queues = "?"
        log.info("celery worker %s starting: queues %s, concurrency %s", sender, queues, instance.concurrency)
