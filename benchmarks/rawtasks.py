"""The baseline of :mod:`benchmarks.throughput`: a no-op task and a chord body, as a Celery user writes them.

The benchmark's workers import this module through ``BUDDY_TOOLS`` (a worker imports every module
listed there), which registers both tasks on the workers' Celery app; the benchmark imports it
too, after setting ``BUDDY_REDIS_URL``, to send them. Nothing Buddy-specific happens in either.
"""

from __future__ import annotations

from workers.app import app


@app.task(name="bench.noop")
def noop() -> None:
    """Do nothing."""


@app.task(name="bench.collect")
def collect(results: list[None]) -> int:
    """Chord body: how many header results arrived."""
    return len(results)
