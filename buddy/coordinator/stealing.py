"""Work stealing: an agent that finished its share of a wave takes tasks still queued for a
busy one, so the wave's tail does not wait on one slow agent (docs/architecture.md,
"Learning between waves"). Celery, with one queue per agent, cannot do this on its own.

While a wave runs, :meth:`WorkStealing.check` (about once a second, from
:meth:`~buddy.coordinator.sending.WaveSender.wait`) looks for *idle* agents — healthy, in the
plan, with no task of the wave left without an outcome — and *queued* tasks: sent to another
agent, no outcome, no claim (nobody started them), not pinned, of a tool the idle agent
offers. An idle agent is sent (as a new message on its own queue) up to two tasks per slot,
at most half of one busy agent's queued tasks, the ones that agent would reach last. The
original message stays where it is: whichever delivery claims a task first runs it (the
claims' compare-and-set, :mod:`buddy.state.claims`), the other finds its outcome (or waits
on its claim) and runs nothing, so a task never runs twice and the wave's counters count it
once. Pinned tasks and capability rules are never broken.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from buddy.coordinator.stalls import Sent
from buddy.plan.model import CampaignPlan
from buddy.state.claims import Claims
from buddy.state.store import Store

#: Tasks an idle agent takes per slot at a time.
PER_SLOT = 2


class WorkStealing:
    """Finds tasks an idle agent of one campaign can take from a busy one."""

    def __init__(self, plan: CampaignPlan, store: Store) -> None:
        self.plan = plan
        self.store = store
        self.claims = Claims(store.r)
        self.specs = {a.id: a for a in plan.agents}
        self.stolen: set[str] = set()  # tasks already sent to another agent (once is enough)
        self.done: set[str] = set()  # tasks seen with an outcome (final: never read again)

    def check(
        self, cid: str, ids: list[str], sent: Mapping[str, Sent], healthy: set[str], slots: Mapping[str, int]
    ) -> dict[str, list[str]]:
        """Idle agent → the task ids to send it now (empty when nothing to move). ``ids``: the
        wave's sent tasks; ``sent``: where each went last; ``healthy``: agents with a live
        worker; ``slots``: each agent's live capacity."""
        # each finished task is read once (HMGET of the unfinished only, every check), and the
        # dispatch order comes from one index: a wave of 100,000 tasks stays cheap to check
        pending = [t for t in ids if t not in self.done]
        missing_set = self.store.missing_outcomes(cid, pending)
        self.done.update(t for t in pending if t not in missing_set)
        missing = [t for t in pending if t in missing_set]
        if not missing or any(t not in sent for t in missing):
            return {}  # nothing left, or not known where each task went
        left: dict[str, list[str]] = defaultdict(list)
        for t in missing:
            left[sent[t].agent].append(t)
        idle = sorted(a for a in healthy if a in self.specs and not left.get(a))
        if not idle:
            return {}
        started = self.claims.read(cid, missing)
        queued = {
            agent: [
                t
                for t in tasks
                if t not in started and t not in self.stolen and not self.plan.tasks[t].pinned
            ]
            for agent, tasks in left.items()
        }
        out: dict[str, list[str]] = {}
        for thief in idle:
            # the busiest victim first: the most queued tasks per slot
            victims = sorted(
                (a for a in queued if a != thief and queued[a]),
                key=lambda a: (-len(queued[a]) / max(1, slots.get(a, 1)), a),
            )
            for victim in victims:
                offered = [
                    t for t in queued[victim] if self.specs[thief].offers(self.plan.tasks[t].task.tool)
                ]
                take = min(PER_SLOT * max(1, slots.get(thief, 1)), len(offered) // 2)
                if take <= 0:
                    continue
                got = offered[-take:]  # the ones the victim would reach last
                out[thief] = got
                self.stolen.update(got)
                queued[victim] = [t for t in queued[victim] if t not in set(got)]
                break
        return out
