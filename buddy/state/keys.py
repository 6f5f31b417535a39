"""Every Redis key Buddy uses (docs/architecture.md, "Redis layout"), and how stored values are read.

All keys start with :data:`PREFIX`; :class:`Keys` builds them (the keys beyond the table in
docs/architecture.md are listed in :mod:`buddy.state.store`).
"""

from __future__ import annotations

#: The prefix of every Redis key Buddy writes.
PREFIX = "buddy:"


class Keys:
    """Builders for every Redis key Buddy uses."""

    @staticmethod
    def campaign(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}"

    @staticmethod
    def campaigns() -> str:
        return f"{PREFIX}campaigns"

    @staticmethod
    def wave(cid: str, n: int) -> str:
        return f"{PREFIX}campaign:{cid}:wave:{n}"

    @staticmethod
    def wave_done(cid: str, n: int) -> str:
        return f"{PREFIX}campaign:{cid}:wave:{n}:done"

    @staticmethod
    def outcomes(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:outcomes"

    @staticmethod
    def undo(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:undo"

    @staticmethod
    def dispatched(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:dispatched"

    @staticmethod
    def claim(cid: str, task_id: str) -> str:
        return f"{PREFIX}campaign:{cid}:claim:{task_id}"

    @staticmethod
    def rollbacks(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:rollbacks"

    @staticmethod
    def transitions(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:transitions"

    @staticmethod
    def events(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:events"

    @staticmethod
    def agent(aid: str) -> str:
        return f"{PREFIX}agent:{aid}"

    @staticmethod
    def agent_workers(aid: str) -> str:
        return f"{PREFIX}agent:{aid}:workers"

    @staticmethod
    def agents() -> str:
        return f"{PREFIX}agents"

    @staticmethod
    def system_lock() -> str:
        return f"{PREFIX}lock:system"

    @staticmethod
    def cancel(cid: str) -> str:
        return f"{PREFIX}campaign:{cid}:cancel"


def _s(v: bytes | str | None) -> str | None:
    """A stored value as text (None stays None), whether the client decodes responses or not."""
    if v is None:
        return None
    return v.decode() if isinstance(v, bytes) else v


def _b(v: bytes | str) -> bytes:
    """A stored value as bytes, whether the client decodes responses or not."""
    return v.encode() if isinstance(v, str) else v
