"""Plans: load and validate, lay out in waves, assign to agents, resolve conflicts."""
