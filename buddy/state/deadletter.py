"""Dead letters: messages a worker refused, kept in Redis for an operator to read.

A worker never exits and never loops on a message it cannot use. It acks the message
(removes it from its queue and from kombu's unacked bookkeeping, so it is not redelivered
after the visibility timeout), logs a WARNING and keeps a :class:`DeadLetter` record here.
What is dead-lettered, by ``reason`` (and the layer that catches it, see
:mod:`workers.transport` and :mod:`workers.tasks`):

=================== ============================================================================
``undecodable``     a queue item that is not JSON (``LPUSH buddy.agent.a1 'not json'``): kombu's
                    Redis transport decodes every item it pops (transport)
``bad-envelope``    JSON that is not a kombu message: not an object, no ``properties`` or
                    ``delivery_tag``, a ``body`` that is not base64... (transport); also such a
                    broadcast on Celery's control channel (``queue`` is the pub/sub channel)
``bad-message``     a kombu message Celery cannot turn into a task request, e.g. a body that is
                    not the ``(args, kwargs, embed)`` triple (transport, after Celery raised)
``decode-error``    a body Celery cannot decode: invalid JSON, a bad signature (consumer)
``invalid-task``    a refused serializer (pickle; unsigned JSON when signing is on), a bad ETA
                    or expiry (consumer)
``unknown-message`` a message without a task name (consumer)
``unknown-task``    a task name the worker does not have (consumer; Celery also marks the task
                    id failed in the result backend)
``invalid-kwargs``  a ``buddy.execute_batch`` whose kwargs do not validate (items that are not
                    TaskSpec dicts...): the task returns ``[]`` instead of raising (task)
=================== ============================================================================

Other writers may add reasons of their own (e.g. the executor for a forged batch).

Redis layout (the state Redis, ``BUDDY_REDIS_URL``):

- ``buddy:deadletter`` (list): JSON :class:`DeadLetter` records, newest first. :func:`push`
  runs ``LPUSH`` + ``LTRIM 0 maxlen-1`` (``BUDDY_DEADLETTER_MAXLEN``, default 10000) +
  ``HINCRBY`` in one ``MULTI``/``EXEC`` round trip.
- ``buddy:deadletter:counts`` (hash): reason → records ever pushed. It is what
  ``buddy_deadletter_total{reason}`` (Prometheus, :class:`buddy.infra.prometheus.FleetCollector`)
  reports: a counter, so :func:`purge` leaves it alone.

Inspect with ``buddy deadletter list [--limit N] [--json]``, empty with ``buddy deadletter
purge``. A good message costs no extra Redis call; a refused one costs one pipeline.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from buddy.models import utcnow

log = logging.getLogger("buddy.deadletter")

#: The list of dead letters, newest first.
KEY = "buddy:deadletter"
#: reason -> how many records were ever pushed (monotonic; purge keeps it).
COUNTS_KEY = "buddy:deadletter:counts"
#: The most of a refused message a record keeps (bytes of UTF-8).
PAYLOAD_LIMIT = 64 * 1024
#: The most of an exception's text a record keeps (characters).
DETAIL_LIMIT = 2000

UNDECODABLE = "undecodable"
BAD_ENVELOPE = "bad-envelope"
BAD_MESSAGE = "bad-message"
DECODE_ERROR = "decode-error"
INVALID_TASK = "invalid-task"
UNKNOWN_MESSAGE = "unknown-message"
UNKNOWN_TASK = "unknown-task"
INVALID_KWARGS = "invalid-kwargs"
#: A batch for a campaign that is not running, or tasks not dispatched as sent (the executor).
NOT_DISPATCHED = "not-dispatched"


class DeadLetter(BaseModel):
    """One refused message: why, from which queue, on which worker, when, and what it was.

    ``payload`` is the raw message as text (its first :data:`PAYLOAD_LIMIT` bytes; bytes that
    are not UTF-8 are shown as ``\\xNN``); ``size`` is the whole message's length in bytes and
    ``truncated`` says that ``payload`` holds less than all of it.
    ``detail`` is the error that refused it. ``task_name`` and ``campaign_id`` are set when
    the message got far enough to name them.
    """

    reason: str
    queue: str = ""
    worker: str = ""
    at: datetime = Field(default_factory=utcnow)
    task_name: str | None = None
    campaign_id: str | None = None
    payload: str = ""
    size: int = 0
    truncated: bool = False
    detail: str = ""

    @classmethod
    def of(
        cls,
        reason: str,
        payload: bytes | str | Any,
        *,
        queue: str = "",
        worker: str = "",
        task_name: str | None = None,
        campaign_id: str | None = None,
        detail: str = "",
        limit: int = PAYLOAD_LIMIT,
    ) -> DeadLetter:
        """A record for ``payload`` (bytes, text, or anything JSON can show), cut to ``limit`` bytes."""
        if isinstance(payload, bytes | bytearray | memoryview):
            raw = bytes(payload)
        elif isinstance(payload, str):
            raw = payload.encode("utf-8", "surrogatepass")
        else:
            raw = json.dumps(payload, default=repr, ensure_ascii=False).encode("utf-8", "surrogatepass")
        text = raw[:limit].decode("utf-8", "backslashreplace")
        return cls(
            reason=reason,
            queue=queue,
            worker=worker,
            task_name=task_name if isinstance(task_name, str) else None,
            campaign_id=campaign_id if isinstance(campaign_id, str) else None,
            payload=text,
            size=len(raw),
            truncated=len(raw) > limit,
            detail=detail[:DETAIL_LIMIT],
        )


def push(client: Any, record: DeadLetter, maxlen: int) -> None:
    """Add ``record`` to ``buddy:deadletter`` and count its reason (one ``MULTI``/``EXEC``).

    ``LPUSH`` + ``LTRIM 0 maxlen-1`` keep the newest ``maxlen`` records; ``HINCRBY`` on
    ``buddy:deadletter:counts``. ``client`` is any redis-py client; Redis errors propagate.
    """
    pipe = client.pipeline(transaction=True)
    pipe.lpush(KEY, record.model_dump_json())
    pipe.ltrim(KEY, 0, max(1, maxlen) - 1)
    pipe.hincrby(COUNTS_KEY, record.reason, 1)
    pipe.execute()


def dead_letter(client: Any, record: DeadLetter, maxlen: int) -> bool:
    """:func:`push` ``record`` and log it at WARNING; never raises.

    What a worker calls while refusing a message: a Redis failure here is logged (ERROR,
    with the record's start) and returns False, so the worker still acks and carries on.
    """
    log.warning(
        "dead-lettered a message from queue %s: %s (%s); %d bytes, see `buddy deadletter list`",
        record.queue or "?",
        record.reason,
        record.detail or "no detail",
        record.size,
        extra={"campaign_id": record.campaign_id} if record.campaign_id else None,
    )
    try:
        push(client, record, maxlen)
    except Exception as e:  # a refused message must not take the worker down with it
        log.error("could not store a dead letter (%s): %s %.500s", e, record.reason, record.payload)
        return False
    return True


def list_(client: Any, limit: int = 50) -> list[DeadLetter]:
    """The newest ``limit`` dead letters, newest first (``LRANGE buddy:deadletter 0 limit-1``).

    An entry that is not a record (written by something else) is shown as reason
    ``unreadable-record`` with the entry as payload.
    """
    if limit <= 0:
        return []
    out: list[DeadLetter] = []
    for raw in client.lrange(KEY, 0, limit - 1):
        try:
            out.append(DeadLetter.model_validate_json(raw))
        except (ValidationError, ValueError):
            out.append(DeadLetter.of("unreadable-record", raw))
    return out


def count(client: Any) -> int:
    """How many dead letters are kept (``LLEN buddy:deadletter``)."""
    return int(client.llen(KEY))


def counts(client: Any) -> dict[str, int]:
    """Records ever pushed, by reason (``HGETALL buddy:deadletter:counts``)."""
    return {_text(k): int(v) for k, v in client.hgetall(COUNTS_KEY).items()}


def stats(client: Any) -> tuple[dict[str, int], int]:
    """``(records ever pushed by reason, records kept)``: ``HGETALL`` + ``LLEN`` in one round trip
    (what a metrics scrape reads)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(COUNTS_KEY)
    pipe.llen(KEY)
    by_reason, kept = pipe.execute()
    return {_text(k): int(v) for k, v in by_reason.items()}, int(kept)


def purge(client: Any) -> int:
    """Delete every kept dead letter; returns how many there were (``LLEN`` + ``DEL`` in one
    ``MULTI``/``EXEC``). The per-reason counters stay: they are Prometheus counters."""
    pipe = client.pipeline(transaction=True)
    pipe.llen(KEY)
    pipe.delete(KEY)
    n, _ = pipe.execute()
    return int(n)


def _text(v: bytes | str) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
