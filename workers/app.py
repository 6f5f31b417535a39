"""The Celery app of the worker side: ``celery -A workers worker -Q buddy.agent.a1``.

Built by :func:`buddy.transport.make_celery` from ``BUDDY_*`` settings, so the coordinator
and the workers agree on broker, backend, serializer and ack settings.
"""

from __future__ import annotations

from buddy.transport import make_celery

app = make_celery()
