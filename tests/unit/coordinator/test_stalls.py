"""StallWatch: dead attempts and lost messages are found from Redis, after two sightings."""

from __future__ import annotations

import json

import fakeredis

from buddy.coordinator.stalls import UNACKED_KEY, Sent, StallWatch
from buddy.state.claims import Claim, Claims
from buddy.state.keys import Keys

CID = "c1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup() -> tuple[fakeredis.FakeRedis, StallWatch, Clock, dict[str, Sent]]:
    r = fakeredis.FakeRedis()
    clock = Clock()
    watch = StallWatch(Claims(r), stale_s=10.0, every_s=5.0, clock=clock)
    pending = {
        t: Sent("a1", f"m-{t}", {"task_id": t, "tool": "noop"}) for t in ("alive", "dead", "lost", "held")
    }
    fresh = Claim(worker="w1", attempt=1, started_at=990.0, heartbeat=999.0)
    dead = Claim(worker="w2", attempt=1, started_at=900.0, heartbeat=950.0)
    r.set(Keys.claim(CID, "alive"), fresh.dump())
    r.set(Keys.claim(CID, "dead"), dead.dump())
    message = {"headers": {"id": "m-held"}, "body": ""}
    r.hset(UNACKED_KEY, "tag-1", json.dumps([message, "", "buddy.agent.a1"]))
    return r, watch, clock, pending


def test_a_dead_attempt_and_a_lost_message_are_due_after_two_sightings() -> None:
    _r, watch, clock, pending = setup()
    assert watch.due()
    assert watch.check(CID, pending) == {}  # first sighting: not yet
    assert not watch.due()
    clock.now += 5
    assert watch.check(CID, pending) == {}  # 5 s later: still under stale_s
    clock.now += 5
    due = watch.check(CID, pending)
    assert set(due) == {"dead", "lost"}
    assert "w2" in due["dead"] and "lost in transit" in due["lost"]
    # the heartbeat of 'alive' (999) went stale at 1009: first seen stale at 1010, due 10 s later
    assert "alive" not in due
    clock.now += 5
    assert "alive" not in watch.check(CID, {"alive": pending["alive"]})
    clock.now += 5
    assert "alive" in watch.check(CID, {"alive": pending["alive"]})


def test_a_task_whose_queue_is_not_empty_is_not_lost() -> None:
    r, watch, clock, pending = setup()
    r.lpush("buddy.agent.a1", "a message of someone")
    lost = {"lost": pending["lost"]}
    watch.check(CID, lost)
    clock.now += 20
    assert watch.check(CID, lost) == {}


def test_a_recovered_task_is_forgotten() -> None:
    r, watch, clock, pending = setup()
    dead = {"dead": pending["dead"]}
    watch.check(CID, dead)
    r.set(Keys.claim(CID, "dead"), Claim(worker="w3", attempt=2, started_at=1000.0, heartbeat=1009.0).dump())
    clock.now += 10
    assert watch.check(CID, dead) == {}  # taken over by a live attempt meanwhile
    clock.now += 30  # stale again: counted from the new sighting, not the old one
    assert watch.check(CID, dead) == {}
    clock.now += 10
    assert set(watch.check(CID, dead)) == {"dead"}


def test_without_a_redis_broker_unclaimed_tasks_are_not_judged() -> None:
    _r, watch, clock, pending = setup()
    watch.redis_broker = False
    watch.check(CID, pending)
    clock.now += 20
    assert set(watch.check(CID, pending)) == {"dead"}


def test_the_unclaimed_tasks_of_a_dead_batch_are_due_with_it() -> None:
    r, watch, clock, _ = setup()
    # one message of three tasks: the first ran and its worker died; the next two were
    # never claimed (claimed one by one), and the dead worker still holds the message unacked
    pending = {t: Sent("a1", "m-held", {"task_id": t, "tool": "noop"}) for t in ("dead", "next1", "next2")}
    other = {"own": Sent("a1", "m-held-2", {"task_id": "own", "tool": "noop"})}
    r.hset(
        UNACKED_KEY, "tag-2", json.dumps([{"headers": {"id": "m-held-2"}, "body": ""}, "", "buddy.agent.a1"])
    )
    watch.check(CID, pending | other)
    clock.now += 10
    due = watch.check(CID, pending | other)
    assert set(due) == {"dead", "next1", "next2"}  # not `own`: its message is held by a live worker
    assert "batch's worker died" in due["next1"] and "w2" in due["next1"]
