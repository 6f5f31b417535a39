"""Batch sizing and wave deadlines, against hand-computed cases."""

from __future__ import annotations

from buddy.coordinator.dispatch import MAX_BATCH, batch_size


def test_a_fixed_batch_size_wins() -> None:
    assert batch_size(1000, 8, 0.0, fixed=7) == 7


def test_long_tasks_go_one_per_message() -> None:
    assert batch_size(100, 4, 0.5) == 1 and batch_size(100, 4, 30.0) == 1


def test_known_short_tasks_fill_one_message_per_slot() -> None:
    # 500 sleeps of 20 ms on 8 slots: 10 s of work -> 8 messages of ceil(500/8) = 63 tasks
    assert batch_size(500, 8, 0.02) == 63
    # a 50-task no-op wave's share of 13 tasks: 13 ms of work, under one message's worth -> one message
    assert batch_size(13, 2, 0.0) == 13
    # 500 no-ops on 2 slots: 0.5 s of work -> 2 messages, capped at MAX_BATCH tasks each
    assert batch_size(500, 2, 0.0) == MAX_BATCH


def test_unknown_durations_get_four_messages_per_slot() -> None:
    assert batch_size(320, 8, None) == 10  # ceil(320 / 32)
    assert batch_size(3, 8, None) == 1


def test_slices_keep_a_batch_worst_case_under_the_visibility_timeout() -> None:
    """Five 20 s calls in one message outlasted a 70 s visibility timeout and ran twice."""
    from buddy.coordinator.dispatch import slices

    assert list(slices([20.0] * 5, 5, 70)) == [(0, 2), (2, 4), (4, 5)]  # 2 x 20 s <= 0.8 x 70 s
    assert list(slices([1.0] * 5, 2, 7200)) == [(0, 2), (2, 4), (4, 5)]  # the size still caps
    assert list(slices([100.0, 1.0, 1.0], 64, 70)) == [(0, 1), (1, 3)]  # a long task goes alone
    assert list(slices([], 64, 70)) == []


def test_attempt_worst_s_counts_one_attempt_grace_and_lease_wait() -> None:
    from buddy.coordinator.dispatch import attempt_worst_s
    from buddy.execution.timeouts import HARD_TIMEOUT_GRACE_S
    from buddy.models import PlanTask, ResourceClaim
    from buddy.plan.model import PlannedTask
    from buddy.tools import default_registry

    reg = default_registry()
    shell = PlanTask(task_id="s", tool="shell", args={"argv": ["true"], "timeout_s": 30})
    write = PlanTask(task_id="w", tool="file.write", args={"path": "x", "content": ""})
    pts = [
        PlannedTask(task=shell, line=1, agent="a1", wave=1, pinned=False, claims=[]),
        PlannedTask(
            task=write, line=2, agent="a1", wave=1, pinned=False,
            claims=[ResourceClaim(name="file:x", mode="write")],
        ),
    ]  # fmt: skip
    assert attempt_worst_s(pts, reg, lease_wait_s=10) == [
        30 + HARD_TIMEOUT_GRACE_S,
        reg.get("file.write").timeout_s + HARD_TIMEOUT_GRACE_S + 10,
    ]
