"""The Celery app Buddy sends and runs tasks with, and Redis URLs for each client.

:func:`make_celery` builds a configured app; the coordinator uses it to send signatures by
task name, so importing :mod:`buddy` needs no worker code (docs/architecture.md, "Layout"); the
worker side (:mod:`workers`) builds the same app and registers the task functions.
:func:`redis_client` is the retrying redis-py client of state reads and writes;
:func:`check_redis` is the one fast probe each command runs first (no retries, a few seconds),
so a wrong URL or password is reported at once with :func:`redact_url`'s URL and the fix.

Configuration and where each comes from (Celery settings):

- JSON only (``task_serializer``, ``accept_content``, ``result_accept_content``): a pickle
  message is refused by the worker.
- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acked after the task
  ran, and requeued if the worker process died, so no task is lost (docs/architecture.md).
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

The broker is ``BUDDY_BROKER_URL`` when it is set (:func:`broker_url_of`), else the state
Redis; the result backend and all of Buddy's state stay on the Redis in both cases. With an
AMQP broker (RabbitMQ: ``amqp://``, ``amqps://``, ``pyamqp://``, :func:`amqp_settings`) the
Redis-only transport options above are not set, and instead:

- ``task_default_queue_type`` / ``task_create_missing_queue_type`` ``quorum`` (Celery ≥ 5.5):
  ``buddy.coordinator`` and the agent queues (created from their names, ``-Q`` and
  ``queue=``) are durable quorum queues, replicated on a RabbitMQ cluster. Celery then turns
  global QoS off (``worker_detect_quorum_queues``: quorum queues have none), so the prefetch
  is per consumer: ``worker_prefetch_multiplier`` 1 still holds.
- ``task_default_exchange_type`` / ``task_create_missing_queue_exchange_type`` ``topic`` and
  ``broker_native_delayed_delivery_queue_type`` ``quorum``: a countdown (the retries'
  backoff, ``self.retry(countdown=...)``) goes through RabbitMQ's native delayed delivery
  (the ``celery_delayed_*`` queues the workers declare) instead of a worker holding the
  message; it needs topic exchanges, whole seconds (:class:`WholeSecondCelery`) and the
  retry routed back to its agent queue (``task_routes``: :func:`route_batch_retries`).
- ``broker_transport_options`` ``confirm_publish``: publisher confirms (py-amqp waits for the
  broker's ``basic.ack``; a nack raises instead of losing the message).
- ``worker_cancel_long_running_tasks_on_connection_loss`` off: after a lost connection the
  running attempt finishes; RabbitMQ requeues its message and the second delivery waits on
  the task's claim, so the work is not done twice.
- ``broker_use_ssl`` for ``amqps://``: the server's certificate and host name are checked
  against the system CAs, or the ``ssl_ca_certs`` file named in the URL's query.
"""

from __future__ import annotations

import math
import socket
import ssl
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from buddy.config import Settings, get_settings
from buddy.errors import ConfigError, InfrastructureError, RedisFault, RedisUnavailable
from buddy.infra.logs import redact_secrets
from buddy.models import COORDINATOR_QUEUE, agent_queue

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


def _within(call: Any, close: Any, timeout_s: float, name: str) -> list[BaseException | None]:
    """Run ``call`` then ``close`` in a daemon thread, waiting at most ``timeout_s`` seconds (a DNS
    lookup or TLS handshake is cut off too). Returns ``[]`` on timeout, else ``[None]`` or
    ``[the exception call raised]``."""
    done: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            done.append(None)
        except BaseException as e:  # handed to the caller's thread
            done.append(e)
        finally:
            close()

    probe = threading.Thread(target=run, name=name, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return done


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
    done = _within(client.ping, client.close, timeout_s, "buddy-redis-probe")
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


#: URL schemes of an AMQP broker (RabbitMQ through kombu's py-amqp transport).
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
#: URL schemes of a Redis (``unix://`` is Buddy's spelling of ``redis+socket://``).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+socket"})


def broker_url_of(redis_url: str, settings: Settings) -> str:
    """The broker's URL: ``BUDDY_BROKER_URL`` when set, else the state Redis ``redis_url``."""
    return settings.broker_url or redis_url


def is_amqp(url: str) -> bool:
    """True for an AMQP (RabbitMQ) broker URL: ``amqp://``, ``amqps://`` or ``pyamqp://``."""
    return urlsplit(url).scheme.lower() in AMQP_SCHEMES


def broker_kind(url: str) -> str:
    """``"amqp"`` or ``"redis"`` for a broker URL; raises :class:`ConfigError` for any other."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in AMQP_SCHEMES:
        return "amqp"
    if scheme in REDIS_SCHEMES:
        return "redis"
    raise ConfigError(
        f"bad broker URL {redact_url(url)}: use amqp://USER:PASSWORD@host:5672/VHOST (RabbitMQ), "
        "amqps:// for TLS, or a redis:// URL (BUDDY_BROKER_URL, --broker-url)"
    )


def amqp_connection_url(url: str) -> str:
    """``url`` without its query: kombu would read ``ssl_*`` keys there as py-amqp TLS options
    under Redis's names; :func:`amqp_tls` reads them instead."""
    return urlunsplit(urlsplit(url)._replace(query=""))


def amqp_tls(url: str) -> dict[str, Any] | bool:
    """Celery's ``broker_use_ssl`` for an AMQP ``url``: False for ``amqp://``; for ``amqps://`` a
    TLS context that checks the server's certificate and host name (py-amqp's ``context`` options
    of :func:`ssl.create_default_context`: the system CAs, or ``ssl_ca_certs`` from the URL's query).
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "amqps":
        return False
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    context: dict[str, Any] = {"check_hostname": True}
    if query.get("ssl_ca_certs"):
        context["cafile"] = query["ssl_ca_certs"]
    # server_hostname None: kombu puts the URL's host name there (SNI and the host name check)
    return {"context": context, "server_hostname": None}


def route_batch_retries(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str] | None:
    """Celery router (``task_routes``) of an AMQP broker: a ``buddy.execute_batch`` sent without
    a queue (its retry: ``self.retry`` copies the delivery's exchange and routing key, not the
    queue) goes to its agent's queue (``kwargs['agent_id']``).

    Without it Celery routes the retry to the default queue (``buddy.coordinator``) as soon as
    the countdown takes the native delayed delivery path, which reads the queue's routing key.
    An explicit ``queue=`` (every first send) is kept: Celery merges it over this route.
    """
    if name != EXECUTE_TASK or not isinstance(kwargs, dict):
        return None
    agent = kwargs.get("agent_id")
    return {"queue": agent_queue(agent)} if isinstance(agent, str) and agent else None


class WholeSecondCelery(Celery):
    """The Celery app of an AMQP broker: a countdown is rounded up to whole seconds.

    Celery's native delayed delivery (quorum queues) encodes the delay in whole seconds in the
    routing key and raises ``ValueError`` for ``0 < countdown < 1`` (``int(countdown)`` is 0);
    a retry's backoff is often a fraction of a second (0.5 s first). Rounding up never
    shortens a backoff.
    """

    def send_task(self, name: str, *args: Any, countdown: float | None = None, **options: Any) -> Any:
        if countdown is not None and countdown > 0:
            countdown = math.ceil(countdown)
        return super().send_task(name, *args, countdown=countdown, **options)


def amqp_settings(url: str) -> dict[str, Any]:
    """The Celery settings of an AMQP broker at ``url`` (see the module docstring)."""
    return {
        # quorum queues: durable, replicated; agent queues and buddy.coordinator alike
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        # native delayed delivery (countdowns) routes through topic exchanges only
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        "broker_native_delayed_delivery_queue_type": "quorum",
        "task_routes": ["buddy.infra.transport.route_batch_retries"],
        # per-consumer prefetch (quorum queues have no global QoS); Celery's default, made explicit
        "worker_detect_quorum_queues": True,
        "broker_transport_options": {"confirm_publish": True},
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_use_ssl": amqp_tls(url),
    }


class BrokerUnavailable(InfrastructureError):
    """Raised when a first connection to an AMQP broker fails (:func:`check_broker`).

    Like :class:`RedisUnavailable`: ``url`` is redacted, ``kind`` classifies the fault (a
    :data:`RedisFault` value, ``"vhost"`` added), ``reason`` and ``fix`` are for the operator;
    ``str(err)`` never holds a password. The CLI exits 3 on it.
    """

    def __init__(self, url: str, kind: str, reason: str, fix: str) -> None:
        self.url, self.kind, self.reason, self.fix = url, kind, reason, fix
        super().__init__(f"cannot reach the broker at {url}: {reason}\nfix: {fix}")

    def __reduce__(self) -> tuple[type[BrokerUnavailable], tuple[str, str, str, str]]:
        return type(self), (self.url, self.kind, self.reason, self.fix)


def check_broker(url: str, timeout_s: float) -> None:
    """Check that the broker at ``url`` (``BUDDY_BROKER_URL``) accepts a connection: one AMQP
    handshake (login and virtual host included) without retries, within ``timeout_s`` seconds
    (``BUDDY_CONNECT_TIMEOUT_S``); a Redis URL is :func:`check_redis`'s.

    Raises :class:`BrokerUnavailable` (or :class:`RedisUnavailable`) with the redacted URL, what
    happened and the fix: refused, unknown host, login refused, no such virtual host or no
    access to it, TLS failure, no answer. Raises :class:`ConfigError` for a URL that is not a
    broker URL.
    """
    if broker_kind(url) == "redis":
        check_redis(url, timeout_s)
        return
    from kombu import Connection

    shown = redact_url(url)
    try:
        conn = Connection(amqp_connection_url(url), connect_timeout=timeout_s, ssl=amqp_tls(url))
    except ValueError as e:  # e.g. a port that is not a number
        raise ConfigError(f"bad broker URL {shown}: {redact_secrets(str(e))}") from None
    done = _within(
        lambda: conn.ensure_connection(max_retries=0), conn.release, timeout_s, "buddy-broker-probe"
    )
    if not done:
        raise BrokerUnavailable(
            shown,
            "timeout",
            f"no answer within {timeout_s:g} s",
            "check the host and the port (5672, 5671 for amqps://) and any firewall in between; "
            "BUDDY_CONNECT_TIMEOUT_S sets the wait",
        )
    error = done[0]
    if error is None:
        return
    if not isinstance(error, Exception):
        raise error
    raise BrokerUnavailable(shown, *_broker_advice(url, error)) from None


def _broker_advice(url: str, error: Exception) -> tuple[str, str, str]:
    """``(kind, reason, fix)`` for the ``error`` a first AMQP connection to ``url`` raised."""
    parts = urlsplit(url)
    cause = error.__cause__ or error.__context__ or error
    text = redact_secrets(str(getattr(error, "reply_text", None) or error)).rstrip(".")
    low = text.lower()
    where = f"{parts.hostname or '?'}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
    vhost = parts.path[1:] or "/"
    fix_url = "in BUDDY_BROKER_URL (or --broker-url)"
    code = getattr(error, "reply_code", None)  # py-amqp's AMQPError: the broker's reply code
    if code == 403:  # ACCESS_REFUSED: the login
        return (
            "auth",
            f"the broker refused the login ({text})",
            f"put the right user and password in the URL: amqp://USER:PASSWORD@{where}/{vhost}, {fix_url}; "
            "RabbitMQ's guest user may log in from localhost only",
        )
    if code == 530:  # NOT_ALLOWED: no such virtual host, or the user may not use it
        return (
            "vhost",
            f"no access to the virtual host {vhost!r} ({text})",
            f"create it and let the user in: rabbitmqctl add_vhost {vhost}; rabbitmqctl set_permissions "
            f"-p {vhost} USER '.*' '.*' '.*' (or name another virtual host {fix_url})",
        )
    if isinstance(cause, socket.gaierror) or "name or service not known" in low:
        return (
            "unknown_host",
            f"unknown host {parts.hostname or '?'!r} ({text})",
            f"check the host name {fix_url}",
        )
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in low:
        return (
            "refused",
            f"connection refused: nothing listens on {where}",
            "start RabbitMQ there, or point BUDDY_BROKER_URL (--broker-url) at the fleet's broker",
        )
    if isinstance(cause, ssl.SSLError):
        return (
            "tls",
            f"the TLS handshake failed ({text})",
            "use amqps:// only for a TLS listener (5671), amqp:// otherwise; name the CA that signed the "
            "server's certificate with ?ssl_ca_certs=/path/to/ca.pem",
        )
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return (
            "timeout",
            f"no AMQP answer from {where} ({text})",
            f"check the port {fix_url} (RabbitMQ listens on 5672, 5671 with TLS)",
        )
    return "other", text, f"check the URL {fix_url} and that RabbitMQ runs there"


def make_celery(url: str | None = None, settings: Settings | None = None) -> Celery:
    """A Celery app whose results (and Buddy's state) are on the Redis at ``url`` (default
    ``BUDDY_REDIS_URL``, else localhost:6379) and whose broker is ``BUDDY_BROKER_URL`` when set
    (RabbitMQ: :func:`amqp_settings`), else that same Redis.

    Raises :class:`ConfigError` for a ``BUDDY_BROKER_URL`` that is neither AMQP nor Redis.
    """
    settings = settings or get_settings()
    url = url or settings.redis_url or DEFAULT_REDIS_URL
    curl = celery_url(url)
    broker = broker_url_of(url, settings)
    amqp = broker_kind(broker) == "amqp"
    cls = WholeSecondCelery if amqp else Celery
    app = cls(
        "buddy",
        broker=amqp_connection_url(broker) if amqp else celery_url(broker),
        backend=curl,
        set_as_current=False,
    )
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
    from buddy.infra.security import apply_security, tls_settings

    apply_security(app, url, settings)  # TLS of the state Redis (backend), signing
    if amqp:  # after apply_security: its broker_use_ssl is for a rediss:// broker
        app.conf.update(amqp_settings(broker))
    elif broker != url:  # another Redis as broker: its own TLS settings
        app.conf.broker_use_ssl = tls_settings(broker).get("broker_use_ssl", False)
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
