"""Benchmarks: ``python -m benchmarks.throughput`` (a raw Celery chord against Buddy on one fleet)."""
