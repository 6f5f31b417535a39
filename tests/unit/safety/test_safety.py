"""Escalation gates, the system lock and approvals (fakeredis and real Redis)."""

from __future__ import annotations

import pytest

from buddy.models import Mode, Risk
from buddy.safety.gates import Approvals, EscalationPolicy, escalate, lock, unlock
from buddy.state.store import Store

P = EscalationPolicy()


@pytest.mark.parametrize(
    ("risk", "confidence", "mode", "approval"),
    [
        (Risk.LOW, 0.0, Mode.LIVE, False),
        (Risk.MEDIUM, 0.59, Mode.DRY_RUN, False),
        (Risk.MEDIUM, 0.6, Mode.LIVE, False),
        (Risk.HIGH, 0.79, Mode.DRY_RUN, False),
        (Risk.HIGH, 0.8, Mode.LIVE, True),
        (Risk.CRITICAL, 1.0, Mode.DRY_RUN, False),  # never without --allow-critical
    ],
)
def test_live_escalation_defaults(risk: Risk, confidence: float, mode: Mode, approval: bool) -> None:
    gate = escalate(Mode.LIVE, risk, confidence, P)
    assert gate.mode is mode and gate.needs_approval is approval
    if mode is Mode.DRY_RUN:
        assert gate.reason


def test_critical_with_allow_critical_needs_threshold_and_approval() -> None:
    policy = EscalationPolicy(allow_critical=True)
    assert escalate(Mode.LIVE, Risk.CRITICAL, 0.9, policy).mode is Mode.DRY_RUN  # below 0.95
    gate = escalate(Mode.LIVE, Risk.CRITICAL, 0.96, policy)
    assert gate.mode is Mode.LIVE and gate.needs_approval


def test_thresholds_are_configurable() -> None:
    policy = EscalationPolicy(medium=0.2)
    assert escalate(Mode.LIVE, Risk.MEDIUM, 0.3, policy).mode is Mode.LIVE


def test_other_modes_pass_through() -> None:
    assert escalate(Mode.DRY_RUN, Risk.HIGH, 0.0, P).mode is Mode.DRY_RUN
    assert escalate(Mode.MOCK, Risk.CRITICAL, 0.0, P).mode is Mode.MOCK


def test_auto_approve_never_covers_critical() -> None:
    policy = EscalationPolicy(auto_approve="HIGH")
    assert policy.auto_approves(Risk.HIGH) and policy.auto_approves(Risk.LOW)
    assert not policy.auto_approves(Risk.CRITICAL)
    assert not EscalationPolicy(auto_approve="MEDIUM").auto_approves(Risk.HIGH)
    assert not P.auto_approves(Risk.LOW)


def test_lock_and_unlock(store: Store) -> None:
    assert store.system_lock() is None
    got = lock(store, "maintenance", by="ops@host", evidence={"drift": 0.6})
    assert (got.reason, got.by, got.evidence) == ("maintenance", "ops@host", {"drift": 0.6})
    assert store.system_lock() == got
    # the first lock stays until someone unlocks: a second one does not replace its reason
    assert lock(store, "other", by="x@y") == got
    assert "maintenance, by ops@host, since" in got.describe()
    assert unlock(store) == got
    assert store.system_lock() is None and unlock(store) is None


def test_lock_by_defaults_to_the_os_user(store: Store) -> None:
    import getpass

    assert lock(store, "freeze").by.startswith(getpass.getuser() + "@")


def test_approval_request_decide_once_and_expire(store: Store) -> None:
    ap = Approvals(store)
    ap.request(
        "c1", [("t1", Risk.HIGH, "file.delete", 1, '{"path": "/x"}'), ("t2", Risk.CRITICAL, "x.y", 2, "")]
    )
    got = {a.task_id: a for a in ap.get("c1")}
    assert {a.status for a in got.values()} == {"pending"} and got["t2"].risk is Risk.CRITICAL
    assert ap.decide("c1", ["t1"], "approved", by="alice") == {"t1": "decided"}
    # a second decision, by anyone, changes nothing
    assert ap.decide("c1", ["t1"], "denied", by="bob", reason="late") == {"t1": "already decided"}
    assert ap.decide("c1", ["nope"], "approved", by="x") == {"nope": "no request"}
    assert ap.expire("c1", ["t1", "t2"], 5) == ["t2"]
    got = {a.task_id: a for a in ap.get("c1")}
    assert got["t1"].status == "approved" and got["t1"].by == "alice" and got["t1"].decided_at
    assert got["t2"].status == "denied" and "5 s" in (got["t2"].reason or "")
    # a repeated request leaves the decision alone
    ap.request("c1", [("t1", Risk.HIGH, "file.delete", 1, "")])
    assert ap.get("c1", ["t1"])[0].status == "approved"
    assert ap.campaigns() == ["c1"]
