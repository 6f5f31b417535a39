"""The Celery app Buddy sends and runs tasks with, and Redis URLs for each client.

:func:`make_celery` builds a configured app; the coordinator uses it to send signatures by
task name, so importing :mod:`buddy` needs no worker code (DESIGN.md, "Layout"); the
worker side (:mod:`workers`) builds the same app and registers the task functions.

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

import redis
from celery import Celery
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from buddy.config import Settings, get_settings
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
