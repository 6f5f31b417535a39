"""Worker-side execution of a batch of tasks (no Celery here: workers/ wraps it)."""
