"""Buddy's Celery side: ``celery -A workers worker -Q buddy.agent.a1,buddy.coordinator``.

``app`` is the configured Celery app; importing this package registers the tasks
(:mod:`workers.tasks`) and the heartbeat signal handlers (:mod:`workers.heartbeat`).
"""

from __future__ import annotations

from workers import heartbeat, tasks
from workers import logging as worker_logging  # noqa: F401  (log format: Celery's setup_logging signal)
from workers.app import app

__all__ = ["app", "heartbeat", "tasks"]
