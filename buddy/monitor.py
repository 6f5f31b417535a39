"""Wave summaries computed from outcomes (the monitor's first part; DESIGN.md, data flow).

``summarize_wave`` runs in the chord body (``wave_complete``) and in the coordinator when it
closes a wave itself. Definitions:

- ``success_rate``: succeeded / total (0–1); 0 for an empty wave.
- ``wall_s``: last ``end_time`` − first ``start_time`` over the wave's outcomes, seconds.
- ``throughput_tps``: total / ``wall_s`` (tasks per second); 0 when ``wall_s`` is 0.
- per agent ``busy_ms``: sum of ``duration_ms``; ``mean_duration_ms``: busy / tasks run.
"""

from __future__ import annotations

from collections.abc import Iterable

from buddy.models import AgentSummary, Outcome, StatusCounts, TaskStatus, WaveSummary


def summarize_wave(campaign_id: str, wave: int, outcomes: Iterable[Outcome]) -> WaveSummary:
    """The :class:`WaveSummary` of one wave's outcomes."""
    counts = StatusCounts()
    agents: dict[str, AgentSummary] = {}
    starts, ends = [], []
    for o in outcomes:
        counts.add(o.status.value)
        if o.start_time is not None and o.worker is not None:
            starts.append(o.start_time)
        if o.end_time is not None and o.worker is not None:
            ends.append(o.end_time)
        aid = o.agent_id or "-"
        a = agents.setdefault(aid, AgentSummary(agent_id=aid))
        a.counts.add(o.status.value)
        a.busy_ms += o.duration_ms
        if o.worker and o.worker not in a.workers:
            a.workers.append(o.worker)
    for a in agents.values():
        ran = a.counts.total - a.counts.by_status.get(TaskStatus.SKIPPED.value, 0)
        a.mean_duration_ms = a.busy_ms / ran if ran else 0.0
        a.workers.sort()
    start = min(starts) if starts else None
    end = max(ends) if ends else None
    wall = (end - start).total_seconds() if start and end else 0.0
    return WaveSummary(
        campaign_id=campaign_id,
        wave=wave,
        counts=counts,
        agents=dict(sorted(agents.items())),
        start_time=start,
        end_time=end,
        wall_s=wall,
        success_rate=counts.succeeded / counts.total if counts.total else 0.0,
        throughput_tps=counts.total / wall if wall > 0 else 0.0,
    )
