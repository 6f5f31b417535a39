"""The task state machine: only legal transitions ever happen."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buddy.errors import IllegalTransition
from buddy.models import FINAL_STATUSES, TaskStatus
from buddy.state.lifecycle import LEGAL, TaskLifecycle, check, transition

S = TaskStatus
ALL = list(TaskStatus)


def test_happy_path_is_legal() -> None:
    life = TaskLifecycle("c", ["t"])
    for to in (S.VALIDATED, S.AWAITING_APPROVAL, S.APPROVED, S.QUEUED, S.RUNNING, S.SUCCEEDED, S.ROLLED_BACK):
        life.move("t", to, by="coordinator")
    assert life.state["t"] is S.ROLLED_BACK


@pytest.mark.parametrize(
    ("frm", "to"),
    [
        (S.PENDING, S.RUNNING),
        (S.VALIDATED, S.RUNNING),
        (S.AWAITING_APPROVAL, S.QUEUED),  # an approval is needed before queueing
        (S.DENIED, S.QUEUED),  # denied is final: nothing of the task runs
        (S.SKIPPED, S.RUNNING),
        (S.SUCCEEDED, S.FAILED),
        (S.ROLLED_BACK, S.SUCCEEDED),
        (S.DENIED, S.DENIED),
    ],
)
def test_illegal_transitions_raise(frm: TaskStatus, to: TaskStatus) -> None:
    with pytest.raises(IllegalTransition, match=f"{frm.value} → {to.value}"):
        check(frm, to)


def test_transition_record_serializes_with_from_and_to() -> None:
    t = transition("c1", "t1", S.QUEUED, S.RUNNING, by="worker w1", reason="attempt 1")
    data = t.model_dump(mode="json")
    assert data["from"] == "queued" and data["to"] == "running" and data["by"] == "worker w1"
    assert type(t).model_validate_json(t.model_dump_json()) == t


def test_final_states_only_lead_to_rollback_or_an_operators_decision() -> None:
    for s in FINAL_STATUSES - {S.NEEDS_REVIEW, S.LOST}:
        assert LEGAL[s] <= {S.ROLLED_BACK}
    # the two that wait for someone: settled by review, or sent once more
    assert LEGAL[S.NEEDS_REVIEW] == {S.SUCCEEDED, S.FAILED, S.QUEUED}
    assert LEGAL[S.LOST] == {S.SUCCEEDED, S.FAILED, S.QUEUED}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ALL), max_size=30))
def test_random_event_sequences_only_move_along_legal_edges(events: list[TaskStatus]) -> None:
    life = TaskLifecycle("c", ["t"])
    path = [S.PENDING]
    for to in events:
        before = life.state["t"]
        try:
            t = life.move("t", to, by="fuzz")
        except IllegalTransition:
            assert to not in LEGAL[before]
            assert life.state["t"] is before  # a refused move changes nothing
            continue
        assert to in LEGAL[before]
        assert (t.from_state, t.to_state) == (before, to)
        path.append(to)
    for a, b in itertools.pairwise(path):
        assert b in LEGAL[a]
    # nothing ever leaves a state with no way out
    assert all(LEGAL[a] for a in path[:-1])
