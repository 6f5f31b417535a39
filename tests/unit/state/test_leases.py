"""Fenced leases: grant, retry-safety, renewal, release, fencing checks (fakeredis and real Redis)."""

from __future__ import annotations

import time

import pytest

from buddy.errors import LeaseConflictError, LeaseLostError
from buddy.models import ResourceClaim
from buddy.state.leases import LeaseManager, fence_key, lease_key
from buddy.state.store import Store

W = ResourceClaim


def test_acquire_grants_increasing_tokens_and_release_frees(store: Store) -> None:
    m = LeaseManager(store.r, ttl_s=5, wait_s=0)
    a = m.acquire([W(name="file:/x")], owner="a")
    assert a.tokens == {"file:/x": 1} and a.fencing_token == 1
    with pytest.raises(LeaseConflictError) as e:
        m.acquire([W(name="file:/x")], owner="b")
    assert e.value.error_type == "conflict" and e.value.retryable
    a.release()
    b = m.acquire([W(name="file:/x")], owner="b")
    assert b.fencing_token == 2


def test_a_retried_acquire_by_the_same_owner_gets_its_token_back(store: Store) -> None:
    # redis-py may re-send the script after a connection error: the owner id makes it safe
    m = LeaseManager(store.r, ttl_s=5, wait_s=0)
    first = m.acquire([W(name="r")], owner="o1")
    again = m.acquire([W(name="r")], owner="o1")
    assert first.tokens == again.tokens == {"r": 1}
    assert store.r.get(fence_key("r")) in (b"1", "1")


def test_read_claims_take_no_lease_and_claims_are_taken_in_sorted_order(store: Store) -> None:
    m = LeaseManager(store.r, ttl_s=5, wait_s=0)
    lease = m.acquire([W(name="b"), W(name="a"), W(name="c", mode="read")], owner="o")
    assert list(lease.tokens) == ["a", "b"]
    assert store.r.get(lease_key("c")) is None


def test_partial_acquire_releases_what_it_got(store: Store) -> None:
    m = LeaseManager(store.r, ttl_s=5, wait_s=0)
    m.acquire([W(name="b")], owner="other")
    with pytest.raises(LeaseConflictError):
        m.acquire([W(name="a"), W(name="b")], owner="me")
    assert store.r.get(lease_key("a")) is None  # "a" was taken first, then given back


def test_check_refuses_an_expired_or_superseded_lease(store: Store) -> None:
    m = LeaseManager(store.r, ttl_s=0.2, wait_s=0)
    old = m.acquire([W(name="r")], owner="old")
    old.check()  # still ours and newest
    time.sleep(0.3)  # the lease expires: another owner takes it
    new = m.acquire([W(name="r")], owner="new")
    assert new.fencing_token == 2
    with pytest.raises(LeaseLostError) as e:
        old.check()
    assert e.value.error_type == "lease_lost"
    new.check()
    assert old.renew() is False  # renewing a lease that is gone fails
    old.release()  # and cannot delete the new holder's lease
    assert store.r.get(lease_key("r")) is not None


def test_hold_renews_while_the_block_runs(store: Store) -> None:
    m = LeaseManager(store.r, ttl_s=0.3, wait_s=0)
    with m.hold([W(name="r")], owner="me") as lease:
        time.sleep(0.7)  # more than twice the TTL: the renewal thread keeps it alive
        lease.check()
    assert store.r.get(lease_key("r")) is None


def test_contention_is_counted_and_waiting_succeeds_when_freed(store: Store) -> None:
    seen: list[int] = []
    m = LeaseManager(store.r, ttl_s=0.3, wait_s=2, poll_s=0.05, on_contention=seen.append)
    m.acquire([W(name="r")], owner="first")  # expires after 0.3 s
    lease = m.acquire([W(name="r")], owner="second")
    assert lease.fencing_token == 2 and len(seen) >= 2
