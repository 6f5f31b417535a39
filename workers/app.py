"""The Celery app of the worker side: ``celery -A workers worker -Q buddy.agent.a1``.

Built by :func:`buddy.infra.transport.make_celery` from ``BUDDY_*`` settings, so the coordinator
and the workers agree on broker, backend, serializer and ack settings. The worker's
consumer is :class:`workers.transport.Consumer` (``worker_consumer``): a message the worker
cannot decode or run is acked and dead-lettered (``buddy:deadletter``) instead of stopping
the worker; see :mod:`workers.transport` and :mod:`buddy.state.deadletter`.
"""

from __future__ import annotations

from buddy.infra.transport import make_celery

app = make_celery()
#: Only the worker reads this setting; Flower and the coordinator are unaffected.
app.conf.worker_consumer = "workers.transport:Consumer"
