"""Infrastructure: Celery transport, security, embedded Redis, local fleet, Prometheus, doctor, logs."""
