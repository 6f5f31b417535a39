"""Per-agent and per-wave numbers, each defined once (docs/architecture.md, "Data flow", "Outputs").

Every output that shows one of these numbers reads it from here: the wave summaries of
``execution_summary.json`` and ``report.md`` (:func:`summarize_wave`), the campaign's agents
in ``execution_summary.json`` (:func:`campaign_agents`), the wave and campaign metrics of
``metrics.jsonl``, ``system_health.json`` and ``report.html``
(:mod:`buddy.analysis.wave_metrics`, :mod:`buddy.analysis.campaign_metrics`), and the
feedback's agent records (:mod:`buddy.analysis.feedback`).

Definitions (*executed*: the tool ran, :func:`buddy.analysis.outcomes.executed`)
    - counts by status and ``tasks``: over every outcome, skipped, denied and lost included.
    - ``executed``: the outcomes whose tool ran.
    - agent ``succeeded``: its executed outcomes that succeeded; agent ``success_rate`` =
      succeeded / executed (0–1; 0 when nothing ran): an agent is judged on what it ran.
    - wave and campaign ``success_rate``: succeeded / tasks (0–1; 0 for no task): a skipped
      or denied task did not succeed.
    - ``busy_ms``: Σ ``duration_ms`` of the executed outcomes (milliseconds, last attempt).
    - ``mean_duration_ms``: busy_ms / executed (milliseconds; 0 when nothing ran).
    - wave window: first ``start_time`` to last ``end_time`` of the wave's executed outcomes;
      ``wall_s`` its length (seconds; 0 when nothing ran).
    - ``throughput_tps``: executed / wall_s (tasks per second; 0 when wall_s is 0). An agent's
      is over its wave's wall_s; a campaign's over the sum of its waves' wall_s.
    - ``workers``: the workers named by any of the agent's outcomes, sorted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from buddy.analysis.metrics import throughput_window
from buddy.analysis.outcomes import agent_key, executed, succeeded
from buddy.models import AgentSummary, Outcome, StatusCounts, WaveSummary


def mean_duration_ms(busy_ms: float, executed_n: int) -> float:
    """busy_ms / executed, milliseconds; 0 when nothing ran."""
    return busy_ms / executed_n if executed_n else 0.0


def throughput_tps(executed_n: int, wall_s: float) -> float:
    """executed / wall_s, tasks per second; 0 when wall_s is 0."""
    return executed_n / wall_s if wall_s > 0 else 0.0


def ratio(part: float, whole: float) -> float:
    """part / whole (a 0–1 fraction for counts); 0 when whole is 0."""
    return part / whole if whole else 0.0


def status_counts(outcomes: Iterable[Outcome]) -> StatusCounts:
    """Outcomes per status, over all of them."""
    counts = StatusCounts()
    for o in outcomes:
        counts.add(o.status.value)
    return counts


@dataclass
class AgentTally:
    """One agent's outcomes of a wave (or a campaign), with every number the module defines:
    ``outcomes`` all of them, ``ran`` the executed ones."""

    agent_id: str
    counts: StatusCounts = field(default_factory=StatusCounts)
    outcomes: list[Outcome] = field(default_factory=list)
    ran: list[Outcome] = field(default_factory=list)
    workers: set[str] = field(default_factory=set)

    def add(self, o: Outcome) -> None:
        """Count one outcome of this agent."""
        self.counts.add(o.status.value)
        self.outcomes.append(o)
        if executed(o):
            self.ran.append(o)
        if o.worker:
            self.workers.add(o.worker)

    @property
    def tasks(self) -> int:
        """Outcomes of every status."""
        return self.counts.total

    @property
    def executed(self) -> int:
        """Outcomes whose tool ran."""
        return len(self.ran)

    @property
    def succeeded(self) -> int:
        """Executed outcomes that succeeded."""
        return sum(succeeded(o) for o in self.ran)

    @property
    def busy_ms(self) -> float:
        """Σ ``duration_ms`` of the executed outcomes (milliseconds)."""
        return sum(o.duration_ms for o in self.ran)

    @property
    def mean_duration_ms(self) -> float:
        """busy_ms / executed (milliseconds; 0 when nothing ran)."""
        return mean_duration_ms(self.busy_ms, self.executed)

    @property
    def success_rate(self) -> float:
        """succeeded / executed (0–1; 0 when nothing ran)."""
        return ratio(self.succeeded, self.executed)

    def throughput_tps(self, wall_s: float) -> float:
        """executed / ``wall_s`` (tasks per second; 0 when ``wall_s`` is 0)."""
        return throughput_tps(self.executed, wall_s)

    def summary(self) -> AgentSummary:
        """The :class:`~buddy.models.AgentSummary` of the tally."""
        return AgentSummary(
            agent_id=self.agent_id,
            counts=self.counts.model_copy(deep=True),
            busy_ms=self.busy_ms,
            mean_duration_ms=self.mean_duration_ms,
            workers=sorted(self.workers),
        )


def tally_agents(outcomes: Iterable[Outcome], agent_ids: Iterable[str] = ()) -> dict[str, AgentTally]:
    """One :class:`AgentTally` per agent named by an outcome (``-`` for none) or in
    ``agent_ids`` (an agent in service that got no task), sorted by agent id."""
    out = {aid: AgentTally(aid) for aid in agent_ids}
    for o in outcomes:
        aid = agent_key(o)
        t = out.get(aid)
        if t is None:
            t = out[aid] = AgentTally(aid)
        t.add(o)
    return dict(sorted(out.items()))


def wave_window(outcomes: Iterable[Outcome]) -> tuple[datetime | None, datetime | None, float]:
    """(first ``start_time``, last ``end_time``, wall seconds ≥ 0) of the executed outcomes;
    (None, None, 0) when none ran."""
    starts: list[datetime] = []
    ends: list[datetime] = []
    for o in outcomes:
        if executed(o):
            if o.start_time is not None:
                starts.append(o.start_time)
            if o.end_time is not None:
                ends.append(o.end_time)
    start = min(starts) if starts else None
    end = max(ends) if ends else None
    wall = max((end - start).total_seconds(), 0.0) if start is not None and end is not None else 0.0
    return start, end, wall


def summarize_wave(
    campaign_id: str, wave: int, outcomes: Iterable[Outcome], sent_at: datetime | None = None
) -> WaveSummary:
    """The :class:`~buddy.models.WaveSummary` of one wave's outcomes (module docstring).

    ``throughput_tps`` is executed tasks over the wave's throughput window
    (:func:`buddy.analysis.metrics.throughput_window`: from ``sent_at``, its dispatch, to its
    last end, at least 1 s), the monitor's number. Runs in the chord body (``wave_complete``)
    and in the coordinator when it closes a wave itself."""
    outs = list(outcomes)
    counts = status_counts(outs)
    tallies = tally_agents(outs)
    start, end, wall = wave_window(outs)
    ran = sum(t.executed for t in tallies.values())
    return WaveSummary(
        campaign_id=campaign_id,
        wave=wave,
        counts=counts,
        agents={aid: t.summary() for aid, t in tallies.items()},
        start_time=start,
        end_time=end,
        wall_s=wall,
        success_rate=ratio(counts.succeeded, counts.total),
        throughput_tps=throughput_tps(ran, throughput_window(ran, start, end, sent_at)),
    )


def campaign_agents(outcomes: Iterable[Outcome]) -> dict[str, AgentSummary]:
    """The campaign's per-agent totals for ``execution_summary.json``, from every final
    outcome (module docstring), sorted by agent id.

    Counts by status are the outcomes' final ones (a task rolled back after its wave counts
    as ``rolled_back``), so they add up to the campaign's counts; ``busy_ms`` and
    ``mean_duration_ms`` equal the sums over the waves' metrics."""
    return {aid: t.summary() for aid, t in tally_agents(outcomes).items()}
