"""State in Redis: keys, the store, claims, fenced leases, the task state machine, dead letters."""
