"""Safety gates: modes, escalation, approvals and the system lock."""
