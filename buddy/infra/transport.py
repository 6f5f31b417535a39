"""The Celery app Buddy sends and runs tasks with, and Redis URLs for each client.

:func:`make_celery` builds a configured app; the coordinator uses it to send signatures by
task name, so importing :mod:`buddy` needs no worker code (docs/architecture.md, "Layout"); the
worker side (:mod:`workers`) builds the same app and registers the task functions.
:func:`redis_client` is the retrying redis-py client of state reads and writes; the one fast
probe each command runs first (no retries, a few seconds) is :mod:`buddy.infra.probes`.

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
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from buddy.config import Settings, get_settings
from buddy.errors import ConfigError
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
