"""Structured logging: ``BUDDY_LOG_FORMAT=text`` (default) or ``json``, with ids on every line.

:func:`setup_logging` installs one handler on the root logger. Every record that reaches it
carries ``campaign_id``, ``task_id`` and ``worker``, taken in this order from:

1. the ``extra=`` of the logging call;
2. :func:`log_context` (context variables ``campaign_id_var``, ``task_id_var``, ``worker_var``),
   which the coordinator and the executor set around a campaign and each task;
3. the Celery task running in this thread, when Celery is loaded (its ``campaign_id`` /
   ``task_id`` keyword arguments, and the worker's node name); its Celery id is
   ``celery_task_id``;
4. the process's worker name (:func:`set_worker`).

``json`` writes one object per line: ``ts`` (UTC ISO-8601, milliseconds), ``level``,
``logger``, ``msg``, ``campaign_id``, ``task_id``, ``worker`` (``null`` when unknown), plus
``celery_task_id`` and ``exc`` (the formatted traceback) when present. ``text`` writes
``<ts> <LEVEL> <logger> campaign=<id> task=<id> [worker=<name>]: <message>`` with ``-`` for
an unknown id.

Both formats replace the password of any Redis URL in a line with ``***``
(:func:`redact_secrets`), so a URL that slips into a message does not leak its credentials.
Workers install this through Celery's ``setup_logging`` signal (:mod:`workers.logging`).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import IO, Any

from buddy.config import Settings, get_settings

campaign_id_var: ContextVar[str | None] = ContextVar("buddy_campaign_id", default=None)
task_id_var: ContextVar[str | None] = ContextVar("buddy_task_id", default=None)
worker_var: ContextVar[str | None] = ContextVar("buddy_worker", default=None)

_process_worker: str | None = None

#: ``scheme://user:password@`` in Redis-style URLs; group 1 keeps ``scheme://user:``.
_URL_PASSWORD = re.compile(r"((?:rediss?|redis\+socket|unix|sentinel|amqps?)://[^:@/\s]*:)[^@\s]+@")


def redact_secrets(text: str) -> str:
    """``text`` with the password of every ``redis://user:password@…`` style URL replaced by ``***``."""
    if "@" not in text:
        return text
    return _URL_PASSWORD.sub(r"\1***@", text)


def set_worker(name: str | None) -> None:
    """Name this process's worker (the default ``worker`` of every line it logs)."""
    global _process_worker
    _process_worker = name


@contextmanager
def log_context(
    *, campaign_id: str | None = None, task_id: str | None = None, worker: str | None = None
) -> Iterator[None]:
    """Within the block, every log line of this thread (or task) carries the given ids.

    Ids left as None keep the value of an enclosing block.
    """
    tokens: list[tuple[ContextVar[str | None], Token[str | None]]] = []
    for var, value in ((campaign_id_var, campaign_id), (task_id_var, task_id), (worker_var, worker)):
        if value is not None:
            tokens.append((var, var.set(value)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _celery_request() -> Any:
    """The request of the Celery task running here, or None (never imports Celery itself)."""
    state = sys.modules.get("celery._state")
    if state is None:
        return None
    try:
        task = state.get_current_task()
    except Exception:
        return None
    if task is None:
        return None
    return getattr(task, "request", None)


class ContextFilter(logging.Filter):
    """Adds ``campaign_id``, ``task_id``, ``worker`` and ``celery_task_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        req = None
        cid = getattr(record, "campaign_id", None) or campaign_id_var.get()
        tid = getattr(record, "task_id", None) or task_id_var.get()
        worker = getattr(record, "worker", None) or worker_var.get()
        celery_id = getattr(record, "celery_task_id", None)
        if cid is None or tid is None or worker is None or celery_id is None:
            req = _celery_request()
        if req is not None:
            kwargs = getattr(req, "kwargs", None) or {}
            if isinstance(kwargs, dict):
                cid = cid or _str_or_none(kwargs.get("campaign_id"))
                tid = tid or _str_or_none(kwargs.get("task_id"))
            worker = worker or _str_or_none(getattr(req, "hostname", None))
            celery_id = celery_id or _str_or_none(getattr(req, "id", None))
        record.campaign_id = cid
        record.task_id = tid
        record.worker = worker or _process_worker
        record.celery_task_id = celery_id
        return True


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "campaign_id": getattr(record, "campaign_id", None),
            "task_id": getattr(record, "task_id", None),
            "worker": getattr(record, "worker", None),
        }
        celery_id = getattr(record, "celery_task_id", None)
        if celery_id:
            obj["celery_task_id"] = celery_id
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = self.formatStack(record.stack_info)
        return redact_secrets(json.dumps(obj, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> campaign=<id> task=<id> [worker=<name>]: <message>``."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)  # the message plus any traceback
        cid = getattr(record, "campaign_id", None) or "-"
        ids = f"campaign={cid} task={getattr(record, 'task_id', None) or '-'}"
        worker = getattr(record, "worker", None)
        if worker:
            ids += f" worker={worker}"
        return redact_secrets(f"{_iso(record.created)} {record.levelname} {record.name} {ids}: {message}")


def make_formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``BUDDY_LOG_FORMAT`` ``text`` or ``json``; raises ValueError otherwise."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")


def setup_logging(
    settings: Settings | None = None,
    *,
    level: str | int | None = None,
    fmt: str | None = None,
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install Buddy's handler on the root logger (replacing one installed before) and return it.

    ``level`` (default ``BUDDY_LOG_LEVEL``) and ``fmt`` (default ``BUDDY_LOG_FORMAT``) override
    the settings; ``stream`` defaults to standard error. Handlers others installed stay.
    """
    settings = settings or get_settings()
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_buddy", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(make_formatter(fmt or settings.log_format))
    handler.addFilter(ContextFilter())
    handler._buddy = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    lvl = level if level is not None else settings.log_level
    root.setLevel(lvl.upper() if isinstance(lvl, str) else lvl)
    return handler
