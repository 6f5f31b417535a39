"""The worker's message intake: a message it cannot use is dead-lettered, never fatal.

Celery 5 with kombu's Redis transport stops a worker for good (``Unrecoverable error``) on
a queue item that is not JSON, on a kombu envelope whose ``body`` is not base64, and on a
body that is not the ``(args, kwargs, embed)`` triple; the last one is back in the queue
when the worker dies (kombu restores its unacked messages at shutdown), so it stops every
worker that pops it in turn. Here each bad message is acked, kept as a
:class:`buddy.state.deadletter.DeadLetter` in ``buddy:deadletter``, counted
(``buddy:deadletter:counts``, Prometheus ``buddy_deadletter_total{reason}``) and logged
at WARNING; the worker goes on serving. Two layers, both only in the worker process:

- :class:`Channel` (kombu): wraps ``_brpop_read``, which pops an item (``BRPOP``),
  JSON-decodes it, builds the kombu message (``body`` base64-decoded), records it as
  unacked (``HSET unacked`` + ``ZADD unacked_index``) and hands it to Celery. When that
  raises anything but a Redis or socket error after an item was popped, the item is
  dead-lettered: ``undecodable`` (not JSON), ``bad-envelope`` (not a kombu message) or
  ``bad-message`` (Celery raised on it; it was already unacked, so it is acked:
  ``ZREM``/``HDEL``, and is not redelivered after the visibility timeout). The popped item
  is known from the ``BRPOP`` reply, which :func:`_capturing` keeps on the client; a
  good message costs no extra Redis call.
- :class:`Consumer` (Celery's ``worker_consumer``): Celery already acks (or rejects without
  requeue) a message it can decode but not run: ``on_decode_error`` (bad JSON body, bad
  signature), ``on_invalid_task`` (pickle or other refused content, bad ETA),
  ``on_unknown_message`` (no task name), ``on_unknown_task``. Each is dead-lettered too
  (``decode-error``, ``invalid-task``, ``unknown-message``, ``unknown-task``), and if
  Celery's own handler raises on a forged message, the message is acked anyway.

The third layer, a ``buddy.execute_batch`` whose kwargs do not validate (``invalid-kwargs``),
is in :func:`workers.tasks.execute_batch`.

The consumer's connection gets :class:`Transport` in :meth:`Consumer.connection_for_read`
for ``redis://``, ``rediss://`` and ``redis+socket://`` brokers (any other broker keeps its
transport). It is not chosen with ``broker_transport``: kombu lets a ``redis+socket://`` URL's
prefix override it, and every other connection of the app (the coordinator's, Flower's broker
tab, the producers) would show the class path instead of ``redis://`` in its URL. Only the
consumer reads queues, so only it needs the tolerant channel.

The pub/sub path (``celery.pidbox`` broadcasts, ``PUBLISH /0.celery.pidbox '[1]'`` also
stopped a worker) is guarded the same way: kombu already drops data that is not JSON, and JSON
that is not a kombu message is dead-lettered (the record's ``queue`` is the pub/sub channel).
Not covered: ``Channel._get`` (``basic_get``, which Celery's worker does not use).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import redis
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.url import as_url, maybe_sanitize_url

from buddy.config import get_settings
from buddy.state import deadletter as dl

log = logging.getLogger("buddy.worker")

#: This process's worker name for dead-letter records (set by :class:`Consumer`).
_worker: dict[str, str] = {}

#: kombu transport aliases that are kombu's Redis transport (``redis+socket://`` is ``redis``).
REDIS_TRANSPORTS = frozenset({"redis", "rediss"})
#: How :meth:`Consumer.connection_for_read` names :class:`Transport` (a string, so the
#: connection's ``info()`` stays JSON for ``celery inspect stats`` and Flower).
TRANSPORT_PATH = "workers.transport:Transport"


def worker_name() -> str:
    """The worker's node name (``a1-1@host``), else ``<host>:<pid>``."""
    return _worker.get("name") or f"{socket.gethostname()}:{os.getpid()}"


def refuse(
    reason: str,
    payload: Any,
    *,
    queue: str = "",
    detail: str = "",
    task_name: str | None = None,
    campaign_id: str | None = None,
    worker: str | None = None,
) -> None:
    """Dead-letter ``payload`` into the state Redis (``BUDDY_REDIS_URL``) and log it; never raises."""
    try:
        from workers.tasks import store

        record = dl.DeadLetter.of(
            reason,
            payload,
            queue=queue,
            worker=worker or worker_name(),
            task_name=task_name,
            campaign_id=campaign_id,
            detail=detail,
        )
        dl.dead_letter(store().r, record, get_settings().deadletter_maxlen)
    except Exception:  # e.g. settings that no longer load: log, the worker carries on
        log.exception("could not dead-letter a %s message from %s", reason, queue or "?")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _infrastructure(exc: BaseException) -> bool:
    """An error of Redis or the network, not of the message: kombu and Celery handle it.

    ``DataError`` is redis-py refusing an argument before sending it, e.g. a forged
    ``delivery_tag`` of ``null`` that kombu would record as unacked: the message's fault.
    """
    return isinstance(exc, redis.RedisError | OSError) and not isinstance(exc, redis.DataError)


# -- kombu layer --------------------------------------------------------------------------


@functools.cache
def _capturing(base: type) -> type:
    """``base`` (a redis-py client class) that keeps its last ``BRPOP`` reply as ``last_brpop``.

    kombu's ``_brpop_read`` reads the reply with ``parse_response(connection, 'BRPOP')``
    and decodes it in the same call; when decoding raises, this is how the channel still has
    the popped ``(queue, item)`` to dead-letter. One attribute store per read.
    """

    class Client(base):
        last_brpop: Any = None

        def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
            reply = super().parse_response(connection, command_name, **options)
            if command_name == "BRPOP":
                self.last_brpop = reply
            return reply

    Client.__name__ = Client.__qualname__ = f"DeadLetter{getattr(base, '__name__', 'Redis')}"
    return Client


def _envelope(item: bytes) -> tuple[str, Any, str | None]:
    """What a popped item is: ``(reason, delivery_tag, task_name)`` for a refused item."""
    try:
        payload = json.loads(item)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return dl.UNDECODABLE, None, None
    if not isinstance(payload, dict):
        return dl.BAD_ENVELOPE, None, None
    props, headers = payload.get("properties"), payload.get("headers")
    tag = props.get("delivery_tag") if isinstance(props, dict) else None
    task = headers.get("task") if isinstance(headers, dict) else None
    return dl.BAD_ENVELOPE, tag, task if isinstance(task, str) else None


class Channel(kombu_redis.Channel):
    """kombu's Redis channel; a popped item that cannot be delivered is dead-lettered."""

    _fanout_payload: Any = None

    def _connparams(self, asynchronous: bool = False) -> Any:
        """kombu's connection parameters; a connection error once the connection was released.

        When Redis goes away while a worker holds messages, Celery releases the connection
        (kombu clears ``connection.client``); a later ack of a finished task, or the channel's
        close restoring unacked messages, then asked kombu for a new Redis client and failed
        with ``AttributeError`` ('NoneType' object has no attribute 'hostname'): the worker
        ended with "Unrecoverable error" (kombu 5.7; plain Celery dies the same way). As a
        connection error it is what kombu and Celery expect then: logged, and the worker
        reconnects. The message stays unacked in Redis: the visibility-timeout sweep restores
        it, and its task's outcome and claim make that delivery a no-op.
        """
        if getattr(self.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("the broker connection was released (Redis went away)")
        return super()._connparams(asynchronous)

    def _get_client(self) -> Any:
        base = super()._get_client()
        if isinstance(base, functools.partial):  # PrefixedStrictRedis with global_keyprefix
            return functools.partial(_capturing(base.func), *base.args, **base.keywords)
        return _capturing(base)

    def _brpop_read(self, **options: Any) -> Any:
        client = self.client
        client.last_brpop = None
        try:
            return super()._brpop_read(**options)
        except Exception as exc:
            popped, client.last_brpop = client.last_brpop, None
            if not popped or _infrastructure(exc):
                raise
            self._refuse(popped, exc)
            raise kombu_redis.Empty() from None

    def _handle_message(self, client: Any, r: Any) -> Any:
        payload = super()._handle_message(client, r)
        self._fanout_payload = payload  # the pub/sub message _receive_one is delivering
        return payload

    def _receive_one(self, c: Any) -> Any:
        """kombu's pub/sub read (``celery.pidbox`` broadcasts): kombu drops data that is not
        JSON; JSON that is not a kombu message is dead-lettered here (kombu would raise)."""
        self._fanout_payload = None
        try:
            return super()._receive_one(c)
        except Exception as exc:
            payload, self._fanout_payload = self._fanout_payload, None
            kind = str(bytes_to_str(payload.get("type") or b"")) if isinstance(payload, dict) else ""
            if not kind.endswith("message") or not payload.get("data") or _infrastructure(exc):
                raise
            data = payload["data"]
            reason, _, task = _envelope(data if isinstance(data, bytes) else str(data).encode())
            channel = str(bytes_to_str(payload.get("channel") or b""))
            refuse(reason, data, queue=channel, detail=_error(exc), task_name=task)
            return False

    def delivering_from(self) -> str | None:
        """The queue of the item being delivered now (while Celery handles it), else None.

        A message's ``delivery_info`` says where its sender routed it, which a forged
        envelope can make up; this is the list it was popped from.
        """
        popped = getattr(self.client, "last_brpop", None)
        return self._queue_of(popped[0]) if popped else None

    def _queue_of(self, dest: Any) -> str:
        return str(bytes_to_str(dest)).rsplit(self.sep, 1)[0]

    def _refuse(self, popped: Any, exc: Exception) -> None:
        dest, item = popped
        queue = self._queue_of(dest)
        reason, tag, task = _envelope(item)
        if self._unacked(tag):  # kombu recorded it before Celery raised: ack, no redelivery
            reason = dl.BAD_MESSAGE
            try:
                self.qos.ack(tag)
            except Exception:
                log.exception("could not ack refused message %r", tag)
        refuse(reason, item, queue=queue, detail=_error(exc), task_name=task)

    def _unacked(self, tag: Any) -> bool:
        if tag is None:
            return False
        try:
            self.qos.get(tag)
        except (KeyError, TypeError):  # not delivered (or an unhashable forged tag)
            return False
        return True


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`.

    Set on an already-built connection (``connection.transport_cls``), so the URL was
    parsed the way kombu parses ``redis://``, ``rediss://`` and ``redis+socket://``;
    ``can_parse_url`` only routes :meth:`as_uri` here, which shows the URL as kombu's
    Redis transport would (not as the class path).
    """

    Channel = Channel
    can_parse_url = True

    def as_uri(self, uri: str, include_password: bool = False, mask: str = "**") -> str:
        """The URL as kombu shows it for its own Redis transport (``Connection.as_uri``)."""
        c: Any = self.client
        if c.uri_prefix:  # redis+socket:///path: the host part is the socket URL
            url = f"{c.uri_prefix}+{uri}"
            return url if include_password else str(maybe_sanitize_url(url, mask))
        info = c.info()
        password = info["password"]
        if not include_password:
            password = mask
        elif callable(password):
            password = password()
        return str(
            as_url(
                "rediss" if c.ssl else "redis",
                c.hostname or "localhost",
                info["port"],
                info["userid"],
                password,
                quote(str(info["virtual_host"])),
                sanitize=not include_password,
                mask=mask,
            )
        )


def use_transport(connection: Any) -> Any:
    """Give ``connection`` (a kombu Connection not yet connected) :class:`Transport` when it is
    kombu's Redis transport; any other broker is left alone. Returns ``connection``."""
    if connection.transport_cls in REDIS_TRANSPORTS:
        connection.transport_cls = TRANSPORT_PATH
    return connection


# -- Celery layer -------------------------------------------------------------------------


def _message_facts(message: Any) -> tuple[Any, str, str | None]:
    """``(raw payload, queue, task name)`` of a kombu message, for a dead-letter record."""
    raw = getattr(message, "_raw", None)  # virtual transports keep the whole envelope
    if raw is None:
        body = message.body
        raw = {
            "headers": message.headers,
            "properties": message.properties,
            "body": bytes_to_str(body) if isinstance(body, bytes) else body,
        }
    channel = getattr(message, "channel", None)
    queue = channel.delivering_from() if isinstance(channel, Channel) else None
    if not queue:
        info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
        queue = info.get("routing_key") or ""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task = headers.get("task")
    return raw, str(queue), task if isinstance(task, str) else None


class Consumer(CeleryConsumer):
    """Celery's worker consumer: dead-letters what Celery refuses, and reads queues through
    :class:`Transport`. Installed with ``worker_consumer`` (:mod:`workers.app`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _worker["name"] = str(self.hostname)

    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        conn = use_transport(self.app.connection_for_read(heartbeat=heartbeat))
        return self.ensure_connected(conn)

    def _dead_letter(self, reason: str, message: Any, exc: BaseException | None) -> None:
        try:
            raw, queue, task = _message_facts(message)
        except Exception:
            raw, queue, task = repr(message), "", None
        refuse(reason, raw, queue=queue, task_name=task, detail=_error(exc) if exc else reason)

    @contextmanager
    def _settled(self, message: Any) -> Iterator[None]:
        """Run Celery's handler (which acks or rejects); if it chokes on a forged message, ack."""
        try:
            yield
        except Exception as e:
            if _infrastructure(e):
                raise
            log.warning("Celery could not handle a refused message (%s); acking it", _error(e))
            if not message.acknowledged:
                message.ack()

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self._dead_letter(dl.DECODE_ERROR, message, exc)
        with self._settled(message):
            super().on_decode_error(message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._dead_letter(dl.INVALID_TASK, message, exc)
        with self._settled(message):
            super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._dead_letter(dl.UNKNOWN_MESSAGE, message, None)
        with self._settled(message):
            super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self._dead_letter(dl.UNKNOWN_TASK, message, exc)
        with self._settled(message):
            super().on_unknown_task(body, message, exc)
