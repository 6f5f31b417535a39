"""Fenced leases on named resources (docs/architecture.md, "Redis keys": ``buddy:lease:<r>``).

A lease is a time-bounded exclusive claim on a resource (a file, an endpoint); a *fencing
token* is a number that grows with every grant of that resource's lease, so an effect made
under an old token can be told from one made under the current token (Kleppmann's fencing).

- :meth:`LeaseManager.acquire` takes every claim of a task in sorted resource order (no
  deadlock between two tasks that want the same two resources), waiting up to ``wait_s``;
  a task that cannot get them ends ``conflict``, which is retryable.
- The value of ``buddy:lease:<r>`` is ``<owner>|<token>``: a redis-py retry of the acquire
  script (its default ``Retry`` re-sends a command after a connection error) finds its own
  owner id there and gets the same token back instead of reporting a failure while holding
  the key.
- :meth:`Lease.renew` extends every held lease (``PEXPIRE`` if still ours); a background
  thread renews while the tool runs (:meth:`LeaseManager.hold`).
- :meth:`Lease.check` is called by a tool right before it commits an effect: it verifies, in
  one script, that this owner still holds the lease and that its token is the newest for the
  resource; otherwise :class:`~buddy.errors.LeaseLostError` refuses the effect.
- :meth:`Lease.release` deletes only leases still ours (compare-and-delete).

Only ``write`` claims are leased; ``read`` claims are kept apart from writes at plan time
(``read_write`` conflicts), so readers run side by side.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from buddy.errors import LeaseConflictError, LeaseLostError, StaleCommitError
from buddy.models import ResourceClaim
from buddy.state.keys import PREFIX


def lease_key(resource: str) -> str:
    return f"{PREFIX}lease:{resource}"


def fence_key(resource: str) -> str:
    return f"{PREFIX}fence:{resource}"


# KEYS[1] = buddy:lease:<r>, KEYS[2] = buddy:fence:<r>
# ARGV[1] = owner id, ARGV[2] = TTL in milliseconds
# Returns the fencing token (> 0) when the lease is ours (newly granted, or already ours:
# a retried call), 0 when another owner holds it.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, sep + 1))
  end
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS[1] = buddy:lease:<r>; ARGV[1] = owner|token, ARGV[2] = TTL in milliseconds
# Returns 1 when the lease was still ours and now lasts ARGV[2] ms more, else 0.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1] = buddy:lease:<r>; ARGV[1] = owner|token
# Returns 1 when the lease was ours and is deleted, else 0 (expired or someone else's).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] = buddy:lease:<r>, KEYS[2] = buddy:fence:<r>; ARGV[1] = owner|token, ARGV[2] = token
# Returns 1 when the lease is still ours and our token is the newest for the resource,
# 0 otherwise (the effect must be refused).
CHECK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
return 1
"""


@dataclass
class Lease:
    """The leases one task holds: resource → fencing token, owned by ``owner``."""

    manager: LeaseManager
    owner: str
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def fencing_token(self) -> int | None:
        """The highest token held (what ``ctx.fencing_token`` and the outcome carry)."""
        return max(self.tokens.values()) if self.tokens else None

    def check(self, resource: str | None = None) -> None:
        """Raise :class:`~buddy.errors.LeaseLostError` unless every lease (or ``resource``'s) is
        still ours and newest."""
        lost = self._lost(resource)
        if lost is not None:
            r, token, current = lost
            raise LeaseLostError(
                f"lease on {r} (token {token}) expired or was taken over (newest token {current}); "
                "the effect was refused",
                token,
                current,
            )

    def confirm(self) -> None:
        """Call right *after* committing an effect: raise :class:`~buddy.errors.StaleCommitError` when a lease
        was lost meanwhile (the commit may have overwritten a newer holder's effect)."""
        lost = self._lost(None)
        if lost is not None:
            r, token, current = lost
            raise StaleCommitError(
                f"lease on {r} (token {token}) was lost while the effect was committed (newest token "
                f"{current}): a newer holder's effect may have been overwritten; settle it with "
                "`buddy review`",
                token,
                current,
            )

    def _lost(self, resource: str | None) -> tuple[str, int, int | None] | None:
        """(resource, our token, newest token) of the first lease no longer ours, else None."""
        for r, token in self.tokens.items():
            if resource is not None and r != resource:
                continue
            ok = self.manager._check(keys=[lease_key(r), fence_key(r)], args=[f"{self.owner}|{token}", token])
            if not int(ok):
                current = self.manager.r.get(fence_key(r))
                return r, token, int(current) if current is not None else None
        return None

    def renew(self) -> bool:
        """Extend every lease by the TTL; False if any is no longer ours."""
        ok = True
        for r, token in self.tokens.items():
            res = self.manager._renew(
                keys=[lease_key(r)], args=[f"{self.owner}|{token}", self.manager.ttl_ms]
            )
            ok = ok and bool(int(res))
        return ok

    def release(self) -> None:
        for r, token in self.tokens.items():
            self.manager._release(keys=[lease_key(r)], args=[f"{self.owner}|{token}"])
        self.tokens.clear()


class LeaseManager:
    """Acquires fenced leases in Redis. ``ttl_s``: lease lifetime (seconds) between renewals;
    ``wait_s``: how long :meth:`acquire` keeps trying; ``poll_s``: pause between tries.
    ``on_contention`` is called with 1 each time a try finds a lease held by someone else."""

    def __init__(
        self,
        client: Any,
        *,
        ttl_s: float = 30.0,
        wait_s: float = 10.0,
        poll_s: float = 0.05,
        on_contention: Callable[[int], None] | None = None,
    ) -> None:
        self.r = client
        self.ttl_ms = int(ttl_s * 1000)
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.on_contention = on_contention
        self._acquire = client.register_script(ACQUIRE)
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._check = client.register_script(CHECK)

    def acquire(
        self,
        claims: Iterable[ResourceClaim],
        owner: str | None = None,
        on_contention: Callable[[int], None] | None = None,
    ) -> Lease:
        """Lease every ``write`` claim, in sorted order; raises :class:`~buddy.errors.LeaseConflictError`
        (after releasing what it got) when one stays held by another owner past ``wait_s``.
        ``on_contention`` (default: the manager's) is called with 1 per try that found a holder."""
        contended = on_contention or self.on_contention
        lease = Lease(self, owner or uuid.uuid4().hex)
        resources = sorted({c.name for c in claims if c.mode == "write"})
        deadline = time.monotonic() + self.wait_s
        for r in resources:
            while True:
                token = int(self._acquire(keys=[lease_key(r), fence_key(r)], args=[lease.owner, self.ttl_ms]))
                if token > 0:
                    lease.tokens[r] = token
                    break
                if contended:
                    contended(1)
                if time.monotonic() >= deadline:
                    lease.release()
                    raise LeaseConflictError(f"{r} stayed leased by another task for {self.wait_s:g} s")
                time.sleep(self.poll_s)
        return lease

    @contextmanager
    def hold(
        self,
        claims: Iterable[ResourceClaim],
        owner: str | None = None,
        on_contention: Callable[[int], None] | None = None,
    ) -> Iterator[Lease]:
        """Acquire, renew every ``ttl_s / 3`` seconds in a thread while the block runs, release."""
        lease = self.acquire(claims, owner, on_contention)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.ttl_s / 3):
                try:
                    lease.renew()
                except Exception:  # a Redis blip; the check before the commit decides
                    pass

        thread = threading.Thread(target=renew, name="buddy-lease-renew", daemon=True)
        if lease.tokens:
            thread.start()
        try:
            yield lease
        finally:
            stop.set()
            if lease.tokens:
                thread.join(timeout=1)
            lease.release()
