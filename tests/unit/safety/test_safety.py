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


def test_lock_wins_over_everything_and_other_modes_pass_through() -> None:
    gate = escalate(Mode.LIVE, Risk.LOW, 1.0, P, locked="freeze")
    assert gate.mode is Mode.MOCK and "freeze" in (gate.reason or "")
    assert escalate(Mode.DRY_RUN, Risk.HIGH, 0.0, P).mode is Mode.DRY_RUN
    assert escalate(Mode.MOCK, Risk.CRITICAL, 0.0, P).mode is Mode.MOCK


def test_auto_approve_never_covers_critical() -> None:
    policy = EscalationPolicy(auto_approve="HIGH")
    assert policy.auto_approves(Risk.HIGH) and policy.auto_approves(Risk.LOW)
    assert not policy.auto_approves(Risk.CRITICAL)
    assert not EscalationPolicy(auto_approve="MEDIUM").auto_approves(Risk.HIGH)
    assert not P.auto_approves(Risk.LOW)


def test_lock_and_unlock(store: Store) -> None:
    assert store.lock_reason() is None
    lock(store, "maintenance", by="ops@host")
    assert "maintenance" in (store.lock_reason() or "") and "ops@host" in (store.lock_reason() or "")
    assert unlock(store) is True
    assert store.lock_reason() is None and unlock(store) is False


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
