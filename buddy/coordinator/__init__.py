"""The coordinator: the campaign loop that dispatches each wave as a Celery chord and waits for it."""
