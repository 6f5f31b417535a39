"""Batch sizing and wave deadlines, against hand-computed cases."""

from __future__ import annotations

from buddy.dispatch import MAX_BATCH, batch_size


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
