"""The Celery app Buddy sends and runs tasks with, and Redis URLs for each client.

:func:`make_celery` builds a configured app; the coordinator uses it to send signatures by
task name, so importing :mod:`buddy` needs no worker code (DESIGN.md, "Layout"); the
worker side (:mod:`workers`) builds the same app and registers the task functions.
:func:`redis_client` is the retrying redis-py client of state reads and writes;
:func:`check_redis` is the one fast probe each command runs first (no retries, a few seconds),
so a wrong URL or password is reported at once with :func:`redact_url`'s URL and the fix.

Configuration and where each comes from (Celery settings):

- JSON only (``task_serializer``, ``accept_content``, ``result_accept_content``): a pickle
  message is refused by the worker.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked after the task
  ran, and requeued if the worker process died, so no task is lost (DESIGN.md).
- ``worker_prefetch_multiplier`` 1: a worker reserves one message per process, so long
  batches spread over workers.
- ``broker_transport_options`` / ``result_backend_transport_options``
  ``visibility_timeout``: ``BUDDY_VISIBILITY_TIMEOUT_S``; Redis redelivers an unacked
  message after it, so it must outlast the longest batch (a longer batch is run twice,
  and Buddy's claims make the second delivery wait for the first). kombu's sweep for
  such messages runs every tenth of it (``unacked_restore_interval``, throttle 1).
- ``task_default_queue`` ``buddy.coordinator``: chord bodies and anything unrouted.
- task events on, so Flower shows the fleet.
- ``result_backend_always_retry``: a result write during a Redis restart is retried (up to
  30 times) instead of failing the task, and so the chord.
"""

from __future__ import annotations

import socket
import ssl
import threading
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from buddy.config import Settings, get_settings
from buddy.errors import ConfigError, RedisFault, RedisUnavailable
from buddy.logs import redact_secrets
from buddy.models import COORDINATOR_QUEUE

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

EXECUTE_TASK = "buddy.execute_batch"
WAVE_COMPLETE_TASK = "buddy.wave_complete"
ROLLBACK_TASK = "buddy.rollback"


def celery_url(url: str) -> str:
    """``url`` as Celery's Redis transport and backend spell it (``unix://`` → ``redis+socket://``)."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://") :]
    return url


#: How many times a Redis command is re-sent after a connection error, with exponential
#: backoff capped at 1 s: rides out a Redis restart of about 20 s (an AOF reload).
REDIS_RETRIES = 25


def redis_client(url: str) -> redis.Redis:
    """A redis-py client for ``url`` (``redis://``, ``rediss://`` or ``unix://``).

    Connection and timeout errors are retried (``REDIS_RETRIES`` times, backoff 0.05 s
    doubling to 1 s) so a Redis restart is a pause, not a failure. A retried command may
    have run once already: Buddy's writes are idempotent (``HSET`` of outcomes, claims) or
    carry an owner id (lease acquire); wave counters may overcount, and are display only.
    """
    return redis.Redis.from_url(
        url,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), REDIS_RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, outputs and screens)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def check_redis(url: str, timeout_s: float) -> None:
    """Check that the Redis at ``url`` answers: one ``PING`` on a client without retries.

    The probe a command runs once, before any work, so that a wrong URL fails in
    ``timeout_s`` seconds (``BUDDY_CONNECT_TIMEOUT_S``, 3 by default) rather than after
    :func:`redis_client`'s retries, which are for a Redis that goes away *after* the first
    connection. ``timeout_s`` bounds the socket connect and the reply (redis-py's
    ``socket_connect_timeout`` and ``socket_timeout``) and the whole probe, host name lookup
    and TLS handshake included (the PING runs on a daemon thread that is waited for at most
    ``timeout_s``). A Redis still loading its data (``LOADING``) passes: it is reachable.

    Raises :class:`RedisUnavailable` (an :class:`InfrastructureError`) with the redacted URL,
    what happened and the fix: connection refused or no such socket, no password or a wrong
    one (``NOAUTH``, ``WRONGPASS``, ``invalid password``), an ACL that denies ``PING``, an
    unknown host, a TLS failure, no answer within ``timeout_s``, something that is not Redis.
    Raises :class:`ConfigError` when ``url`` is not a Redis URL at all.
    """
    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
    except ValueError as e:
        raise ConfigError(
            f"bad Redis URL {shown}: {redact_secrets(str(e))}; use redis://[:PASSWORD@]host:port/0, "
            "rediss:// for TLS, or unix://[:PASSWORD@]/path/to/redis.sock"
        ) from None
    done: list[BaseException | None] = []

    def ping() -> None:
        try:
            client.ping()
            done.append(None)
        except BaseException as e:  # handed to the caller's thread
            done.append(e)
        finally:
            client.close()

    probe = threading.Thread(target=ping, name="buddy-redis-probe", daemon=True)
    probe.start()
    probe.join(timeout_s)
    if not done:
        raise RedisUnavailable(shown, *_timeout_advice(url, timeout_s))
    error = done[0]
    if error is None or isinstance(error, redis.BusyLoadingError):
        return
    if not isinstance(error, (redis.RedisError, OSError)):
        raise error
    raise RedisUnavailable(shown, *_advice(url, error, timeout_s)) from None


def _timeout_advice(url: str, timeout_s: float) -> tuple[RedisFault, str, str]:
    if urlsplit(url).scheme == "rediss":
        fix = (
            "a rediss:// URL to a Redis without TLS waits like this: use redis:// unless the server "
            "has TLS on; else check the host, the port and any firewall in between"
        )
    else:
        fix = (
            "check the host and the port, any firewall in between, and whether the server only "
            "accepts TLS (then use rediss://); BUDDY_CONNECT_TIMEOUT_S sets the wait"
        )
    return "timeout", f"no answer within {timeout_s:g} s", fix


def _with_password(url: str) -> str:
    """``url`` with ``PASSWORD`` in place of its password (or added to it), for a fix to quote."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:PASSWORD@{host}", query=""))


def _advice(url: str, error: BaseException, timeout_s: float) -> tuple[RedisFault, str, str]:
    """``(kind, reason, fix)`` for the ``error`` a first PING of ``url`` raised."""
    parts = urlsplit(url)
    text = redact_secrets(str(error)).rstrip(".")
    low = text.lower()
    cause = error.__cause__ or error.__context__
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname or '?'}:{parts.port or 6379}"
    fix_url = "in --redis-url or BUDDY_REDIS_URL"
    if isinstance(error, redis.AuthenticationError) or any(
        s in text for s in ("NOAUTH", "WRONGPASS", "invalid password")
    ):
        if "without any password configured" in low or "no password is set" in low:
            return (
                "auth",
                f"the URL has a password but this Redis requires none ({text})",
                f"remove the password from the URL {fix_url}, or check that it names the right Redis",
            )
        if parts.password is None:
            return (
                "auth",
                "this Redis requires a password and the URL has none",
                f"put the password in the URL: {_with_password(url)}, in --redis-url or BUDDY_REDIS_URL",
            )
        return (
            "auth",
            f"the password (or user) in the URL was refused ({text})",
            f"put the right password in the URL: {_with_password(url)} (USER:PASSWORD@ for an ACL "
            f"user), {fix_url}",
        )
    if isinstance(error, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (
            "permission",
            f"the URL's user may not run PING ({text})",
            "grant the URL's user the commands Buddy runs (ACL SETUSER), or put another user in the URL",
        )
    if isinstance(error, (redis.TimeoutError, TimeoutError, socket.timeout)):
        return _timeout_advice(url, timeout_s)
    if isinstance(cause, socket.gaierror) or any(
        s in low for s in ("name or service not known", "nodename nor servname", "temporary failure in name")
    ):
        return (
            "unknown_host",
            f"unknown host {parts.hostname or '?'!r} ({text})",
            f"check the host name {fix_url} (and that this machine can resolve it)",
        )
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in low:
        return (
            "refused",
            f"connection refused: nothing listens on {where}",
            f"start Redis there, or point --redis-url / BUDDY_REDIS_URL at the fleet's Redis "
            f"({_example(parts.scheme)})",
        )
    if isinstance(cause, ssl.SSLError) or isinstance(error, ssl.SSLError) or "[ssl" in low:
        if isinstance(cause, ssl.SSLCertVerificationError) or "certificate verify failed" in low:
            return (
                "tls",
                f"the server's TLS certificate was not accepted ({text})",
                "name the CA that signed it: rediss://host:port/0?ssl_ca_certs=/path/to/ca.pem "
                "(ssl_cert_reqs=none skips the check: for tests only)",
            )
        return (
            "tls",
            f"the TLS handshake failed ({text})",
            "use rediss:// only for a Redis with TLS on (tls-port), redis:// otherwise; check the "
            "ssl_ca_certs, ssl_certfile and ssl_keyfile in the URL",
        )
    if isinstance(cause, FileNotFoundError):
        if parts.scheme == "unix":
            return (
                "refused",
                f"no Redis socket at {where}",
                f"start Redis with `unixsocket {where}`, or point --redis-url / BUDDY_REDIS_URL at the "
                f"fleet's Redis ({_example(parts.scheme)})",
            )
        return (
            "tls",
            f"a file named in the URL does not exist ({text})",
            "check the ssl_ca_certs, ssl_certfile and ssl_keyfile paths in the URL",
        )
    if isinstance(cause, PermissionError):
        return (
            "permission",
            f"permission denied on {where} ({text})",
            "run as a user that may open the socket (see unixsocketperm in redis.conf)",
        )
    if isinstance(cause, ConnectionResetError) or "closed by server" in low or "reset by peer" in low:
        return (
            "protocol",
            f"the server at {where} closed the connection ({text})",
            "check that host:port is a Redis; if it accepts TLS only, use rediss://",
        )
    if isinstance(error, redis.exceptions.InvalidResponse) or "protocol error" in low:
        return (
            "protocol",
            f"what answers at {where} is not Redis ({text})",
            f"check the port {fix_url} (Redis listens on 6379 by default)",
        )
    if isinstance(error, redis.ResponseError):
        return (
            "other",
            f"Redis refused the connection's setup ({text})",
            "check the URL's database number (/0 … /15 by default) and the user's ACL",
        )
    return "other", text, f"check the URL {fix_url} and that Redis runs there"


def _example(scheme: str) -> str:
    if scheme == "unix":
        return "unix://[:PASSWORD@]/path/to/redis.sock"
    return f"{scheme or 'redis'}://[:PASSWORD@]host:6379/0"


def make_celery(url: str | None = None, settings: Settings | None = None) -> Celery:
    """A Celery app on the Redis at ``url`` (default ``BUDDY_REDIS_URL``, else localhost:6379)."""
    settings = settings or get_settings()
    url = url or settings.redis_url or DEFAULT_REDIS_URL
    curl = celery_url(url)
    app = Celery("buddy", broker=curl, backend=curl, set_as_current=False)
    vt = settings.visibility_timeout_s
    transport_opts = {
        "visibility_timeout": vt,
        # kombu sweeps for unacked messages past the visibility timeout every
        # interval x throttle seconds (10 x 10 by default): a message of a killed worker
        # would wait up to 100 s beyond its timeout. Sweep every tenth of the timeout
        # (1-10 s), each sweep one ZRANGE on the unacked index.
        "unacked_restore_interval": max(1, min(10, vt // 10)),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport_opts,
        result_backend_transport_options=transport_opts,
        broker_connection_retry_on_startup=True,
        # a Redis restart must not fail a chord: result writes are retried, not dropped
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        task_default_queue=COORDINATOR_QUEUE,
        result_expires=settings.result_expires_s,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        enable_utc=True,
        timezone="UTC",
    )
    from buddy.security import apply_security

    apply_security(app, url, settings)
    return app


def make_dispatcher(url: str | None = None, settings: Settings | None = None) -> Celery:
    """A Celery app for the coordinator: sends tasks, never subscribes to their results.

    Celery's Redis backend SUBSCRIBEs to every task's result channel as it is sent
    (``RedisBackend.on_task_call``, and ``ResultConsumer.consume_from`` for each member of a
    chord's group) so that ``AsyncResult.get()`` can wait on pub/sub. The
    coordinator never calls ``get()``: it learns of a finished wave from the wave's
    ``:done`` list, so the subscriptions would cost one Redis command per message and a
    pub/sub connection that outlives the campaign. Reading a result's state still works.
    """
    app = make_celery(url, settings)
    # The workers still send received/started/succeeded events (Flower); the dispatcher's
    # own task-sent event is one PUBLISH per message that nobody needs.
    app.conf.task_send_sent_event = False
    backend = app.backend
    backend.on_task_call = lambda producer, task_id: None
    backend.result_consumer.consume_from = lambda task_id: None
    return app
