"""The monitor: wave summaries, metrics, anomalies and a health score (DESIGN.md, data flow).

Everything here is pure (no Redis, no Celery, files only in :func:`write_monitoring`).

- :func:`summarize_wave`: the short :class:`~buddy.models.WaveSummary` of a wave.
- :func:`compute_wave_metrics`: every metric of a wave (:class:`Metrics` defines each in one
  line); :func:`campaign_metrics` the same over a campaign.
- :func:`detect_anomalies`: the 13 anomaly types, thresholds in :class:`MonitorConfig`.
- :func:`health`: a score 0–100 from configurable weights, minus a penalty per anomaly.
- :func:`write_monitoring`: ``metrics.jsonl``, ``anomalies.jsonl``, ``system_health.json`` and
  ``wave_<n>/agent_<id>/agent_metrics.jsonl``.

``summarize_wave`` runs in the chord body (``wave_complete``) and in the coordinator when it
closes a wave itself. Definitions:

- ``success_rate``: succeeded / total (0–1); 0 for an empty wave.
- ``wall_s``: last ``end_time`` − first ``start_time`` over the wave's outcomes, seconds.
- ``throughput_tps``: total / ``wall_s`` (tasks per second); 0 when ``wall_s`` is 0.
- per agent ``busy_ms``: sum of ``duration_ms``; ``mean_duration_ms``: busy / tasks run.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from buddy.feedback import (
    CONFLICT_ERRORS,
    COORDINATION_ERRORS,
    Calibration,
    attempts_of,
    calibration_of,
    error_types,
    executed,
    failed_attempts,
)
from buddy.models import (
    AgentSpec,
    AgentSummary,
    Mode,
    Outcome,
    StatusCounts,
    TaskStatus,
    WaveSummary,
    utcnow,
)


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


# == metrics ==================================================================================
#
# The one-line definitions in the docstring of ``Metrics`` are the contract.


class AgentWaveMetrics(BaseModel):
    """One agent in one wave; a line of ``wave_<n>/agent_<id>/agent_metrics.jsonl``.

    - ``in_service``: the agent was among the wave's agents (False: only named by an outcome).

    - ``tasks``: outcomes attributed to the agent; ``executed``: those a worker ran.
    - ``success_rate``: succeeded / executed (0–1; 0 when nothing ran).
    - ``attempt_success_rate``: (attempts − failed attempts) / attempts (0–1; 1 when nothing ran):
      transient failures that a retry repaired still count against it.
    - ``busy_s``: Σ ``duration_ms`` / 1000 over executed tasks (seconds, last attempt only).
    - ``mean_duration_ms``: busy / executed (ms).
    - ``utilization``: busy_s / (wave wall_s × concurrency), clipped to 0–1.
    - ``slot_s``: wave wall_s × concurrency (seconds of execution slots offered).
    - ``throughput_tps``: executed / wave wall_s (tasks per second).
    - ``retries``: Σ (attempts − 1); ``retried``: tasks with more than one attempt;
      ``retried_succeeded``: those of them that succeeded.
    - ``predicted_n`` / ``predicted_sum`` / ``predicted_succeeded``: executed tasks with a
      prediction, the sum of their predictions, and how many of them succeeded.
    - ``latency_p95_ms`` / ``latency_p99_ms``: percentiles of ``duration_ms`` (ms).
    """

    agent_id: str
    wave: int
    concurrency: int
    in_service: bool = True
    tasks: int = 0
    executed: int = 0
    succeeded: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    success_rate: float = 0.0
    attempt_success_rate: float = 1.0
    busy_s: float = 0.0
    mean_duration_ms: float = 0.0
    slot_s: float = 0.0
    utilization: float = 0.0
    throughput_tps: float = 0.0
    retries: int = 0
    retried: int = 0
    retried_succeeded: int = 0
    predicted_n: int = 0
    predicted_sum: float = 0.0
    predicted_succeeded: int = 0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0


class ToolWaveMetrics(BaseModel):
    """One tool in one wave: executed tasks, successes, attempts and failed attempts."""

    tool: str
    executed: int = 0
    succeeded: int = 0
    attempts: int = 0
    failed_attempts: int = 0


class Metrics(BaseModel):
    """The monitor's metrics of a wave or of a campaign. Fractions are 0–1, times as named.

    Counts: ``tasks`` (outcomes), ``executed`` (a worker ran them: ``worker`` set; skipped
    and denied tasks did not run), ``succeeded``, ``by_status``.

    - ``success_rate``: succeeded / tasks (0 when there are none); skipped and denied count as
      not succeeded.
    - ``wall_s``: last ``end_time`` − first ``start_time`` of the executed tasks (seconds; for a
      campaign Σ of the waves').
    - ``throughput_tps``: executed / wall_s (tasks per second; 0 when wall_s is 0).
    - ``busy_s``: Σ ``duration_ms`` / 1000 of the executed tasks (seconds; last attempt of each).
    - ``slots``: Σ concurrency of the agents in service; ``slot_s``: wall_s × slots (slot-seconds).
    - ``agent_utilization``: busy_s / slot_s = busy time / (wall × concurrency), clipped to 0–1.
    - ``load_balance``: 1 − coefficient of variation (population σ / mean) of the in-service
      agents' utilization, clipped to 0–1; 1 with fewer than two agents or no work.
    - ``calibration``: Brier score and ECE (10 bins) of ``predicted_success`` over the executed
      tasks (:mod:`buddy.feedback`); ``brier`` and ``ece`` repeat its two numbers.
    - ``confidence``: 1 − ECE, the Phase 22 "confidence trajectory" made precise (target ≥ 0.95:
      predictions within 5 points of the observed success, averaged over the bins).
    - ``prediction_bias``: mean predicted − observed success of the predicted tasks (−1…1;
      positive: overconfident).
    - ``schedule_adherence``: share of the executed tasks with a planned entry that ran on the
      planned agent in the planned wave (1 when none is planned).
    - ``retry_rate``: Σ (attempts − 1) / Σ attempts over the executed tasks: the share of
      attempts that were retries.
    - ``latency_p50_ms`` / ``latency_p95_ms`` / ``latency_p99_ms``: percentiles of the executed
      tasks' ``duration_ms`` (ms; linear interpolation between closest ranks).
    - ``rollback_frequency``: executed tasks rolled back (``rolled_back`` set or status
      ``rolled_back``) / executed.
    - ``conflict_rate``: (conflicts the planner reported + tasks that met ``conflict`` or
      ``lease_lost`` at run time) / tasks, clipped to 1.
    - ``live_execution_ratio``: executed tasks in mode ``live`` / executed.
    - ``approval_rate``: approvals granted / requested (1 when none was requested).
    - ``ideal_makespan_s``: executed / Σ_agents (concurrency / mean duration in s): the makespan
      of a split in proportion to each in-service agent's observed capacity (an agent that ran
      nothing counts at the wave's mean duration).
    - ``assigned_makespan_s``: max over in-service agents of busy_s / concurrency: the makespan
      the actual split implies, dispatch overhead left out.
    - ``optimization_efficiency``: ideal_makespan_s / assigned_makespan_s, clipped to 0–1 (1 when
      nothing was busy): how well the assignment matched work to capacity.
    - ``coordination_issues``: tasks whose errors include ``conflict``, ``lease_lost``,
      ``WorkerLost`` or ``upstream_failed``.
    - ``live_failed_unrolled``: live tasks that did not succeed and were not rolled back (an
      effect may be left behind).
    - ``live_min_predicted``: the lowest ``predicted_success`` among executed live tasks (None:
      no live task ran).
    - ``failure_patterns``: ``"<tool>:<error_type>"`` → failed tasks that ended with that error.
    """

    campaign_id: str = ""
    tasks: int = 0
    executed: int = 0
    succeeded: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    success_rate: float = 0.0
    wall_s: float = 0.0
    throughput_tps: float = 0.0
    busy_s: float = 0.0
    slots: int = 0
    slot_s: float = 0.0
    agent_utilization: float = 0.0
    load_balance: float = 1.0
    calibration: Calibration = Field(default_factory=Calibration)
    brier: float = 0.0
    ece: float = 0.0
    confidence: float = 1.0
    prediction_bias: float = 0.0
    planned: int = 0
    on_plan: int = 0
    schedule_adherence: float = 1.0
    attempts: int = 0
    retries: int = 0
    retry_rate: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    rolled_back: int = 0
    rollback_frequency: float = 0.0
    conflicts: int = 0
    conflict_rate: float = 0.0
    live: int = 0
    live_execution_ratio: float = 0.0
    approvals_requested: int = 0
    approvals_granted: int = 0
    approval_rate: float = 1.0
    ideal_makespan_s: float = 0.0
    assigned_makespan_s: float = 0.0
    optimization_efficiency: float = 1.0
    coordination_issues: int = 0
    live_failed_unrolled: int = 0
    live_min_predicted: float | None = None
    failure_patterns: dict[str, int] = Field(default_factory=dict)
    agents: dict[str, AgentWaveMetrics] = Field(default_factory=dict)
    tools: dict[str, ToolWaveMetrics] = Field(default_factory=dict)


class WaveMetrics(Metrics):
    """The metrics of one wave (a line of ``metrics.jsonl``); :class:`Metrics` defines each.

    ``running_calibration`` merges this wave's calibration with every earlier wave's.
    """

    wave: int
    running_calibration: Calibration = Field(default_factory=Calibration)


class CampaignMetrics(Metrics):
    """The metrics of a whole campaign, from its waves (:func:`campaign_metrics`).

    Sums are over waves; ``wall_s`` is Σ of the waves' wall times (the time between waves,
    spent planning and waiting for approvals, is left out); ratios are recomputed from the
    sums; latencies are over every executed outcome.
    """

    waves: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, linear between closest ranks
    (numpy's default, Excel's PERCENTILE.INC); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _balance(utilizations: Sequence[float]) -> float:
    """1 − population σ / mean of ``utilizations``, clipped to 0–1; 1 for < 2 values or mean 0."""
    if len(utilizations) < 2:
        return 1.0
    mean = sum(utilizations) / len(utilizations)
    if mean <= 0:
        return 1.0
    var = sum((u - mean) ** 2 for u in utilizations) / len(utilizations)
    return _clip(1.0 - math.sqrt(var) / mean)


def compute_wave_metrics(
    wave: int,
    outcomes: Sequence[Outcome],
    planned: Mapping[str, tuple[str, int]],
    predicted: Mapping[str, float],
    agents: Sequence[AgentSpec],
    *,
    approvals_requested: int = 0,
    approvals_granted: int = 0,
    conflicts: int = 0,
    previous: Sequence[WaveMetrics] = (),
    campaign_id: str | None = None,
) -> WaveMetrics:
    """The :class:`WaveMetrics` of one wave (definitions in :class:`Metrics`).

    ``outcomes``: every outcome of the wave, skipped and denied included. ``planned``: task id
    → ``(agent, wave)`` as dispatched (after the optimizer), so adherence measures what
    happened at execution. ``predicted``: task id → ``predicted_success``. ``agents``: the
    agents in service for this wave with their concurrency (an agent drained on purpose and
    left out does not count as idle). ``approvals_*``: this wave's approval requests and
    grants; ``conflicts``: tasks the planner found in a resource conflict. ``previous``: the
    earlier waves' metrics (oldest first; the last one's ``running_calibration`` already
    holds every wave before it).
    """
    cid = campaign_id if campaign_id is not None else (outcomes[0].campaign_id if outcomes else "")
    counts = StatusCounts()
    ran: list[Outcome] = []
    for o in outcomes:
        counts.add(o.status.value)
        if executed(o):
            ran.append(o)
    starts = [o.start_time for o in ran if o.start_time is not None]
    ends = [o.end_time for o in ran if o.end_time is not None]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else 0.0
    wall = max(wall, 0.0)
    conc = {a.id: a.concurrency for a in agents}
    per_agent: dict[str, list[Outcome]] = {a.id: [] for a in agents}
    for o in outcomes:
        if o.agent_id is not None:
            per_agent.setdefault(o.agent_id, [])
    for o in ran:
        if o.agent_id is not None:
            per_agent[o.agent_id].append(o)
    tasks_of = Counter(o.agent_id for o in outcomes if o.agent_id is not None)
    agent_rows = {
        aid: _agent_metrics(aid, wave, conc.get(aid, 1), tasks_of[aid], outs, wall, predicted)
        for aid, outs in sorted(per_agent.items())
    }
    for aid, row in agent_rows.items():
        row.in_service = aid in conc
    busy = sum(o.duration_ms for o in ran) / 1000.0
    slots = sum(conc.values())
    attempts = sum(attempts_of(o) for o in ran)
    retries = sum(attempts_of(o) - 1 for o in ran)
    durations = [o.duration_ms for o in ran]
    cal = calibration_of(ran, predicted)
    in_plan = [o for o in ran if o.task_id in planned]
    on_plan = sum(tuple(planned[o.task_id]) == (o.agent_id, o.wave) for o in in_plan)  # lists from JSON too
    rolled = sum(o.rolled_back or o.status is TaskStatus.ROLLED_BACK for o in ran)
    runtime_conflicts = sum(bool(error_types(o) & CONFLICT_ERRORS) for o in outcomes)
    conflict_total = conflicts + runtime_conflicts
    live = [o for o in ran if o.mode is Mode.LIVE]
    live_unrolled = sum(
        o.status is not TaskStatus.SUCCEEDED and not o.rolled_back and o.status is not TaskStatus.ROLLED_BACK
        for o in live
    )
    live_preds = [predicted[o.task_id] for o in live if o.task_id in predicted]
    patterns: Counter[str] = Counter(
        f"{o.tool or '-'}:{o.error_type}"
        for o in ran
        if o.status is not TaskStatus.SUCCEEDED and o.error_type is not None
    )
    coordination = sum(bool(error_types(o) & set(COORDINATION_ERRORS)) for o in outcomes)
    tools: dict[str, ToolWaveMetrics] = {}
    for o in ran:
        t = tools.setdefault(o.tool or "-", ToolWaveMetrics(tool=o.tool or "-"))
        t.executed += 1
        t.succeeded += o.status is TaskStatus.SUCCEEDED
        t.attempts += attempts_of(o)
        t.failed_attempts += failed_attempts(o)
    in_service = [agent_rows[a.id] for a in agents]
    ideal, assigned = _makespans(in_service, len(ran), busy)
    # the latest earlier wave carries the running total of all before it
    running = previous[-1].running_calibration.merge(cal) if previous else cal
    return WaveMetrics(
        campaign_id=cid,
        wave=wave,
        tasks=counts.total,
        executed=len(ran),
        succeeded=counts.succeeded,
        by_status=dict(sorted(counts.by_status.items())),
        success_rate=counts.succeeded / counts.total if counts.total else 0.0,
        wall_s=wall,
        throughput_tps=len(ran) / wall if wall > 0 else 0.0,
        busy_s=busy,
        slots=slots,
        slot_s=wall * slots,
        agent_utilization=_clip(busy / (wall * slots)) if wall > 0 and slots else 0.0,
        load_balance=_balance([r.utilization for r in in_service]),
        calibration=cal,
        brier=cal.brier,
        ece=cal.ece,
        confidence=1.0 - cal.ece,
        prediction_bias=cal.mean_predicted - cal.observed if cal.n else 0.0,
        planned=len(in_plan),
        on_plan=on_plan,
        schedule_adherence=on_plan / len(in_plan) if in_plan else 1.0,
        attempts=attempts,
        retries=retries,
        retry_rate=retries / attempts if attempts else 0.0,
        latency_p50_ms=percentile(durations, 50),
        latency_p95_ms=percentile(durations, 95),
        latency_p99_ms=percentile(durations, 99),
        rolled_back=rolled,
        rollback_frequency=rolled / len(ran) if ran else 0.0,
        conflicts=conflict_total,
        conflict_rate=min(1.0, conflict_total / counts.total) if counts.total else 0.0,
        live=len(live),
        live_execution_ratio=len(live) / len(ran) if ran else 0.0,
        approvals_requested=approvals_requested,
        approvals_granted=approvals_granted,
        approval_rate=min(1.0, approvals_granted / approvals_requested) if approvals_requested else 1.0,
        ideal_makespan_s=ideal,
        assigned_makespan_s=assigned,
        optimization_efficiency=_clip(ideal / assigned) if assigned > 0 else 1.0,
        coordination_issues=coordination,
        live_failed_unrolled=live_unrolled,
        live_min_predicted=min(live_preds) if live_preds else None,
        failure_patterns=dict(sorted(patterns.items())),
        agents=agent_rows,
        tools=dict(sorted(tools.items())),
        running_calibration=running,
    )


def _agent_metrics(
    aid: str,
    wave: int,
    concurrency: int,
    tasks: int,
    ran: Sequence[Outcome],
    wall: float,
    predicted: Mapping[str, float],
) -> AgentWaveMetrics:
    busy = sum(o.duration_ms for o in ran) / 1000.0
    attempts = sum(attempts_of(o) for o in ran)
    failed = sum(failed_attempts(o) for o in ran)
    ok = sum(o.status is TaskStatus.SUCCEEDED for o in ran)
    retried = [o for o in ran if attempts_of(o) > 1]
    preds = [(predicted[o.task_id], o.status is TaskStatus.SUCCEEDED) for o in ran if o.task_id in predicted]
    durations = [o.duration_ms for o in ran]
    return AgentWaveMetrics(
        agent_id=aid,
        wave=wave,
        concurrency=concurrency,
        tasks=tasks,
        executed=len(ran),
        succeeded=ok,
        attempts=attempts,
        failed_attempts=failed,
        success_rate=ok / len(ran) if ran else 0.0,
        attempt_success_rate=_clip((attempts - failed) / attempts) if attempts else 1.0,
        busy_s=busy,
        mean_duration_ms=busy * 1000.0 / len(ran) if ran else 0.0,
        slot_s=wall * concurrency,
        utilization=_clip(busy / (wall * concurrency)) if wall > 0 else 0.0,
        throughput_tps=len(ran) / wall if wall > 0 else 0.0,
        retries=attempts - len(ran),
        retried=len(retried),
        retried_succeeded=sum(o.status is TaskStatus.SUCCEEDED for o in retried),
        predicted_n=len(preds),
        predicted_sum=sum(p for p, _ in preds),
        predicted_succeeded=sum(y for _, y in preds),
        latency_p95_ms=percentile(durations, 95),
        latency_p99_ms=percentile(durations, 99),
    )


def _makespans(rows: Sequence[AgentWaveMetrics], executed_n: int, busy_s: float) -> tuple[float, float]:
    """(ideal, assigned) makespan in seconds over the agents in service (:class:`Metrics`)."""
    if not rows or executed_n == 0 or busy_s <= 0:
        return 0.0, 0.0
    wave_mean = busy_s / executed_n
    capacity = 0.0
    for r in rows:
        mean_s = r.busy_s / r.executed if r.executed else wave_mean
        capacity += r.concurrency / mean_s if mean_s > 0 else 0.0
    ideal = executed_n / capacity if capacity > 0 else 0.0
    assigned = max(r.busy_s / r.concurrency for r in rows)
    return ideal, assigned


def campaign_metrics(waves: Sequence[WaveMetrics], outcomes: Iterable[Outcome]) -> CampaignMetrics:
    """The :class:`CampaignMetrics` of the campaign's waves; ``outcomes`` (every wave's) give
    the latency percentiles."""
    m = CampaignMetrics(campaign_id=waves[0].campaign_id if waves else "", waves=len(waves))
    status: Counter[str] = Counter()
    cal = Calibration()
    agents: dict[str, AgentWaveMetrics] = {}
    tools: dict[str, ToolWaveMetrics] = {}
    patterns: Counter[str] = Counter()
    live_min: list[float] = []
    for w in waves:
        for f in _SUMMED:
            setattr(m, f, getattr(m, f) + getattr(w, f))
        status.update(w.by_status)
        patterns.update(w.failure_patterns)
        cal = cal.merge(w.calibration)
        m.ideal_makespan_s += w.ideal_makespan_s
        m.assigned_makespan_s += w.assigned_makespan_s
        if w.live_min_predicted is not None:
            live_min.append(w.live_min_predicted)
        for aid, a in w.agents.items():
            acc = agents.setdefault(
                aid, AgentWaveMetrics(agent_id=aid, wave=0, concurrency=a.concurrency, in_service=False)
            )
            acc.concurrency = a.concurrency  # the latest (tuned) value
            acc.in_service = acc.in_service or a.in_service
            for f in _AGENT_SUMMED:
                setattr(acc, f, getattr(acc, f) + getattr(a, f))
        for name, t in w.tools.items():
            tacc = tools.setdefault(name, ToolWaveMetrics(tool=name))
            for f in ("executed", "succeeded", "attempts", "failed_attempts"):
                setattr(tacc, f, getattr(tacc, f) + getattr(t, f))
    m.slots = max((w.slots for w in waves), default=0)
    outs = list(outcomes)
    durations = [o.duration_ms for o in outs if executed(o)]
    by_agent: dict[str, list[float]] = {}
    for o in outs:
        if executed(o) and o.agent_id is not None:
            by_agent.setdefault(o.agent_id, []).append(o.duration_ms)
    for aid, a in agents.items():
        a.success_rate = a.succeeded / a.executed if a.executed else 0.0
        a.attempt_success_rate = _clip((a.attempts - a.failed_attempts) / a.attempts) if a.attempts else 1.0
        a.mean_duration_ms = a.busy_s * 1000.0 / a.executed if a.executed else 0.0
        a.utilization = _clip(a.busy_s / a.slot_s) if a.slot_s > 0 else 0.0
        a.throughput_tps = a.executed / m.wall_s if m.wall_s > 0 else 0.0
        ds = by_agent.get(aid, [])
        a.latency_p95_ms, a.latency_p99_ms = percentile(ds, 95), percentile(ds, 99)
    m.by_status = dict(sorted(status.items()))
    m.success_rate = m.succeeded / m.tasks if m.tasks else 0.0
    m.throughput_tps = m.executed / m.wall_s if m.wall_s > 0 else 0.0
    m.agent_utilization = _clip(m.busy_s / m.slot_s) if m.slot_s > 0 else 0.0
    m.load_balance = _balance([a.utilization for a in agents.values() if a.in_service])
    m.calibration, m.brier, m.ece, m.confidence = cal, cal.brier, cal.ece, 1.0 - cal.ece
    m.prediction_bias = cal.mean_predicted - cal.observed if cal.n else 0.0
    m.schedule_adherence = m.on_plan / m.planned if m.planned else 1.0
    m.retry_rate = m.retries / m.attempts if m.attempts else 0.0
    m.latency_p50_ms, m.latency_p95_ms = percentile(durations, 50), percentile(durations, 95)
    m.latency_p99_ms = percentile(durations, 99)
    m.rollback_frequency = m.rolled_back / m.executed if m.executed else 0.0
    m.conflict_rate = min(1.0, m.conflicts / m.tasks) if m.tasks else 0.0
    m.live_execution_ratio = m.live / m.executed if m.executed else 0.0
    m.approval_rate = min(1.0, m.approvals_granted / m.approvals_requested) if m.approvals_requested else 1.0
    m.optimization_efficiency = (
        _clip(m.ideal_makespan_s / m.assigned_makespan_s) if m.assigned_makespan_s > 0 else 1.0
    )
    m.live_min_predicted = min(live_min) if live_min else None
    m.failure_patterns = dict(sorted(patterns.items()))
    m.agents = dict(sorted(agents.items()))
    m.tools = dict(sorted(tools.items()))
    return m


_SUMMED = (
    "tasks",
    "executed",
    "succeeded",
    "wall_s",
    "busy_s",
    "slot_s",
    "planned",
    "on_plan",
    "attempts",
    "retries",
    "rolled_back",
    "conflicts",
    "live",
    "approvals_requested",
    "approvals_granted",
    "coordination_issues",
    "live_failed_unrolled",
)
_AGENT_SUMMED = (
    "tasks",
    "executed",
    "succeeded",
    "attempts",
    "failed_attempts",
    "busy_s",
    "slot_s",
    "retries",
    "retried",
    "retried_succeeded",
    "predicted_n",
    "predicted_sum",
    "predicted_succeeded",
)


# == anomalies and health =====================================================================

AnomalyType = Literal[
    "high_failure",
    "schedule_drift",
    "confidence_drop",
    "excessive_retries",
    "optimization_failure",
    "agent_failure",
    "coordination_issue",
    "prediction_drift",
    "load_imbalance",
    "unsafe_escalation",
    "repeated_failures",
    "high_rollback",
    "high_conflict",
]
HealthStatus = Literal["EXCELLENT", "GOOD", "FAIR", "POOR"]


class HealthWeights(BaseModel):
    """Weight of each health component (any non-negative numbers; normalized by their sum).

    Components, each 0–1: ``success`` = success_rate; ``schedule_adherence``;
    ``calibration`` = confidence (1 − ECE); ``retries`` = 1 − retry_rate;
    ``optimization_efficiency``; ``load_balance``; ``rollback`` = 1 − rollback_frequency;
    ``conflict`` = 1 − conflict_rate.
    """

    model_config = ConfigDict(extra="forbid")

    success: float = Field(default=0.30, ge=0)
    schedule_adherence: float = Field(default=0.10, ge=0)
    calibration: float = Field(default=0.10, ge=0)
    retries: float = Field(default=0.10, ge=0)
    optimization_efficiency: float = Field(default=0.10, ge=0)
    load_balance: float = Field(default=0.10, ge=0)
    rollback: float = Field(default=0.10, ge=0)
    conflict: float = Field(default=0.10, ge=0)

    @model_validator(mode="after")
    def _some_weight(self) -> HealthWeights:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("health weights must not all be zero")
        return self


class MonitorConfig(BaseModel):
    """Anomaly thresholds and health weights. Defaults are the source documents' targets
    where they give one (success ≥ 0.90, schedule adherence ≥ 0.95, rollback ≤ 30 %,
    conflict ≤ 50 %, confidence ≥ 0.95 as 1 − ECE); the others are ours, and say so.

    Severity of an anomaly (1–10): ``1 + round(9 · excess / room)``, where ``excess`` is how
    far the value is past its threshold and ``room`` the distance from the threshold to the
    worst possible value (0 for a floor on a 0–1 metric, 1 for a ceiling); the exceptions
    say so in :func:`detect_anomalies`.
    """

    model_config = ConfigDict(extra="forbid")

    min_tasks: int = Field(default=1, ge=1, description="a wave's rate anomalies need this many tasks")
    min_success_rate: float = Field(
        default=0.90, ge=0, le=1, description="high_failure below (source target)"
    )
    min_schedule_adherence: float = Field(
        default=0.95, ge=0, le=1, description="schedule_drift below (source)"
    )
    max_retry_rate: float = Field(default=0.20, ge=0, le=1, description="excessive_retries above (ours)")
    min_optimization_efficiency: float = Field(
        default=0.50, ge=0, le=1, description="optimization_failure below, ≥ 2 agents (ours)"
    )
    min_agent_success_rate: float = Field(default=0.50, ge=0, le=1, description="agent_failure below (ours)")
    min_agent_tasks: int = Field(default=3, ge=1, description="agent_failure needs this many executed tasks")
    max_coordination_rate: float = Field(
        default=0.10, ge=0, le=1, description="coordination_issue above: such tasks / tasks (ours)"
    )
    target_confidence: float = Field(
        default=0.95, ge=0, le=1, description="1 − ECE the predictions should reach (source target)"
    )
    max_confidence_drop: float = Field(
        default=0.10, ge=0, le=1, description="confidence_drop: fall from the previous calibrated wave (ours)"
    )
    max_prediction_bias: float = Field(
        default=0.15, ge=0, le=1, description="prediction_drift above |predicted − observed| (ours)"
    )
    min_calibration_tasks: int = Field(
        default=10, ge=1, description="confidence and prediction anomalies need this many predicted tasks"
    )
    min_load_balance: float = Field(default=0.50, ge=0, le=1, description="load_imbalance below (ours)")
    min_live_predicted: float = Field(
        default=0.50, ge=0, le=1, description="unsafe_escalation: a live task predicted below this (ours)"
    )
    repeated_failure_count: int = Field(
        default=3, ge=2, description="repeated_failures: this many tasks failing with one tool and error"
    )
    max_rollback_frequency: float = Field(
        default=0.30, ge=0, le=1, description="high_rollback above (source)"
    )
    max_conflict_rate: float = Field(default=0.50, ge=0, le=1, description="high_conflict above (source)")
    weights: HealthWeights = Field(default_factory=HealthWeights)
    penalty_per_severity: float = Field(default=1.0, ge=0, description="health points off per severity point")
    max_penalty: float = Field(default=30.0, ge=0, le=100, description="cap of the anomaly penalty, points")
    excellent: float = Field(default=90.0, description="EXCELLENT at or above")
    good: float = Field(default=75.0, description="GOOD at or above")
    fair: float = Field(default=50.0, description="FAIR at or above; POOR below")


class Anomaly(BaseModel):
    """One anomaly of a wave; a line of ``anomalies.jsonl``."""

    type: AnomalyType
    severity: int = Field(ge=1, le=10)
    campaign_id: str = ""
    wave: int | None = None
    agent_id: str | None = None
    message: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    recommended_action: str
    detected_at: datetime


def severity(excess: float, room: float) -> int:
    """``1 + round(9 · excess / room)``, within 1–10 (:class:`MonitorConfig`)."""
    if room <= 0:
        return 10
    return max(1, min(10, 1 + round(9 * min(1.0, max(0.0, excess) / room))))


def detect_anomalies(
    metrics: WaveMetrics,
    history: Sequence[WaveMetrics] = (),
    config: MonitorConfig | None = None,
    *,
    now: datetime | None = None,
) -> list[Anomaly]:
    """The anomalies of one wave, most severe first (then by type, agent).

    ``history``: the earlier waves' metrics, oldest first (``confidence_drop`` compares with
    the latest of them that has ``min_calibration_tasks`` predictions). Rules (``c`` the
    config; rate anomalies need ``c.min_tasks`` tasks):

    - high_failure: success_rate < c.min_success_rate.
    - schedule_drift: schedule_adherence < c.min_schedule_adherence (over ≥ min_tasks planned tasks).
    - confidence_drop: confidence (1 − ECE) fell more than c.max_confidence_drop below that of
      the previous calibrated wave.
    - excessive_retries: retry_rate > c.max_retry_rate.
    - optimization_failure: optimization_efficiency < c.min_optimization_efficiency, ≥ 2 agents.
    - agent_failure: an agent's success_rate < c.min_agent_success_rate over at least
      c.min_agent_tasks executed tasks (one anomaly per agent).
    - coordination_issue: coordination_issues / tasks > c.max_coordination_rate.
    - prediction_drift: |prediction_bias| > c.max_prediction_bias (≥ c.min_calibration_tasks).
    - load_imbalance: load_balance < c.min_load_balance with ≥ 2 agents in service.
    - unsafe_escalation: a live task failed and was not rolled back (severity 7, +1 per further one, ≤ 10),
      or a live task's predicted_success < c.min_live_predicted (severity by the usual rule).
    - repeated_failures: ≥ c.repeated_failure_count tasks failed with the same tool and error type
      (one per pattern; severity 1 + round(9 · those tasks / executed)).
    - high_rollback: rollback_frequency > c.max_rollback_frequency.
    - high_conflict: conflict_rate > c.max_conflict_rate.
    """
    c = config or MonitorConfig()
    m = metrics
    at = now or utcnow()
    out: list[Anomaly] = []

    def add(
        kind: AnomalyType, sev: int, message: str, action: str, agent: str | None = None, **ev: Any
    ) -> None:
        out.append(
            Anomaly(
                type=kind,
                severity=sev,
                campaign_id=m.campaign_id,
                wave=m.wave,
                agent_id=agent,
                message=message,
                evidence=ev,
                recommended_action=action,
                detected_at=at,
            )
        )

    enough = m.tasks >= c.min_tasks
    in_service = [a for a in m.agents.values() if a.in_service]
    if enough and m.success_rate < c.min_success_rate:
        add(
            "high_failure",
            severity(c.min_success_rate - m.success_rate, c.min_success_rate),
            f"success rate {m.success_rate:.2f} < {c.min_success_rate:.2f}",
            "read failure_patterns and the failed tasks' errors; the optimizer moves to maximize_success; "
            "set --max-fail-percentage to stop a campaign that keeps failing",
            success_rate=m.success_rate,
            threshold=c.min_success_rate,
            by_status=m.by_status,
        )
    if m.planned >= c.min_tasks and m.schedule_adherence < c.min_schedule_adherence:
        add(
            "schedule_drift",
            severity(c.min_schedule_adherence - m.schedule_adherence, c.min_schedule_adherence),
            f"schedule adherence {m.schedule_adherence:.2f} < {c.min_schedule_adherence:.2f}",
            "tasks ran on another agent or wave than planned: check which workers consume which queues "
            "(buddy fleet) and whether tasks were resumed or failed over",
            schedule_adherence=m.schedule_adherence,
            off_plan=m.planned - m.on_plan,
            planned=m.planned,
            threshold=c.min_schedule_adherence,
        )
    if m.calibration.n >= c.min_calibration_tasks:
        prev = next((h for h in reversed(history) if h.calibration.n >= c.min_calibration_tasks), None)
        if prev is not None and prev.confidence - m.confidence > c.max_confidence_drop:
            drop = prev.confidence - m.confidence
            add(
                "confidence_drop",
                severity(drop - c.max_confidence_drop, 1 - c.max_confidence_drop),
                f"confidence (1 − ECE) fell from {prev.confidence:.2f} (wave {prev.wave}) "
                f"to {m.confidence:.2f}",
                "predictions stopped matching results: re-estimate predicted_success (phase 20 feedback); "
                "the optimizer moves to maximize_confidence",
                confidence=m.confidence,
                previous=prev.confidence,
                previous_wave=prev.wave,
                ece=m.ece,
                threshold=c.max_confidence_drop,
            )
        if abs(m.prediction_bias) > c.max_prediction_bias:
            over = "overconfident" if m.prediction_bias > 0 else "underconfident"
            add(
                "prediction_drift",
                severity(abs(m.prediction_bias) - c.max_prediction_bias, 1 - c.max_prediction_bias),
                f"predictions are {over}: mean predicted {m.calibration.mean_predicted:.2f}, "
                f"observed {m.calibration.observed:.2f}",
                "feed prediction_validation_feedback.jsonl back to the predictor; until then, lower the "
                "confidence weights of the agents concerned",
                bias=m.prediction_bias,
                mean_predicted=m.calibration.mean_predicted,
                observed=m.calibration.observed,
                n=m.calibration.n,
                threshold=c.max_prediction_bias,
            )
    if enough and m.retry_rate > c.max_retry_rate:
        add(
            "excessive_retries",
            severity(m.retry_rate - c.max_retry_rate, 1 - c.max_retry_rate),
            f"{m.retries} retries: {m.retry_rate:.2f} of attempts > {c.max_retry_rate:.2f}",
            "find the transient error (failure_patterns, tool_execution_log.jsonl); the optimizer moves to "
            "minimize_retries and the tuner lowers max retries where they do not help",
            retry_rate=m.retry_rate,
            retries=m.retries,
            attempts=m.attempts,
            threshold=c.max_retry_rate,
        )
    if (
        m.executed >= c.min_tasks
        and len(in_service) >= 2
        and m.optimization_efficiency < c.min_optimization_efficiency
    ):
        add(
            "optimization_failure",
            severity(
                c.min_optimization_efficiency - m.optimization_efficiency, c.min_optimization_efficiency
            ),
            f"optimization efficiency {m.optimization_efficiency:.2f} < {c.min_optimization_efficiency:.2f}: "
            f"the busiest agent needed {m.assigned_makespan_s:.3g} s per slot, a split by capacity "
            f"{m.ideal_makespan_s:.3g} s",
            "let the adaptive scheduler assign (drop --no-optimize) or pin fewer tasks to slow agents",
            efficiency=m.optimization_efficiency,
            ideal_makespan_s=m.ideal_makespan_s,
            assigned_makespan_s=m.assigned_makespan_s,
            threshold=c.min_optimization_efficiency,
        )
    for a in m.agents.values():
        if a.executed >= c.min_agent_tasks and a.success_rate < c.min_agent_success_rate:
            add(
                "agent_failure",
                severity(c.min_agent_success_rate - a.success_rate, c.min_agent_success_rate),
                f"agent {a.agent_id}: {a.succeeded} of {a.executed} tasks succeeded",
                f"check agent {a.agent_id}'s workers and tools (buddy fleet); the scheduler moves work off "
                "degraded agents",
                agent=a.agent_id,
                success_rate=a.success_rate,
                executed=a.executed,
                threshold=c.min_agent_success_rate,
            )
    if enough and m.coordination_issues / m.tasks > c.max_coordination_rate:
        rate = m.coordination_issues / m.tasks
        add(
            "coordination_issue",
            severity(rate - c.max_coordination_rate, 1 - c.max_coordination_rate),
            f"{m.coordination_issues} of {m.tasks} tasks met a conflict, a lost lease, a lost worker "
            "or a failed upstream task",
            "see phase18/coordination_feedback.jsonl: serialize tasks sharing resources, raise lease "
            "timeouts, check worker stability",
            rate=rate,
            tasks=m.coordination_issues,
            threshold=c.max_coordination_rate,
        )
    if m.executed >= c.min_tasks and len(in_service) >= 2 and m.load_balance < c.min_load_balance:
        util = {a.agent_id: round(a.utilization, 4) for a in in_service}
        add(
            "load_imbalance",
            severity(c.min_load_balance - m.load_balance, c.min_load_balance),
            f"load balance {m.load_balance:.2f} < {c.min_load_balance:.2f}",
            "let the optimizer balance load, or change the agents' concurrency to match their share",
            load_balance=m.load_balance,
            utilization=util,
            threshold=c.min_load_balance,
        )
    if m.live_failed_unrolled or (
        m.live_min_predicted is not None and m.live_min_predicted < c.min_live_predicted
    ):
        sev = 7 + min(3, m.live_failed_unrolled - 1) if m.live_failed_unrolled else 0
        if m.live_min_predicted is not None and m.live_min_predicted < c.min_live_predicted:
            sev = max(sev, severity(c.min_live_predicted - m.live_min_predicted, c.min_live_predicted))
        add(
            "unsafe_escalation",
            sev,
            f"{m.live_failed_unrolled} live task(s) failed without rollback; lowest live prediction "
            f"{m.live_min_predicted if m.live_min_predicted is not None else '-'}",
            "inspect the live effects of the failed tasks (buddy review); raise the escalation thresholds "
            "or run the next waves dry_run",
            live_failed_unrolled=m.live_failed_unrolled,
            live_min_predicted=m.live_min_predicted,
            threshold=c.min_live_predicted,
        )
    for pattern, n in m.failure_patterns.items():
        if n >= c.repeated_failure_count:
            tool, _, error = pattern.partition(":")
            add(
                "repeated_failures",
                severity(n / max(1, m.executed), 1.0),
                f"{n} tasks of {tool} failed with {error}",
                f"fix the cause of {error} in {tool} before the next wave; pause the tool if it persists",
                tool=tool,
                error_type=error,
                count=n,
                threshold=c.repeated_failure_count,
            )
    if m.executed >= c.min_tasks and m.rollback_frequency > c.max_rollback_frequency:
        add(
            "high_rollback",
            severity(m.rollback_frequency - c.max_rollback_frequency, 1 - c.max_rollback_frequency),
            f"{m.rolled_back} of {m.executed} tasks rolled back ({m.rollback_frequency:.2f})",
            "see rollback_events.jsonl; tasks that keep rolling back should run dry_run until fixed",
            rollback_frequency=m.rollback_frequency,
            rolled_back=m.rolled_back,
            threshold=c.max_rollback_frequency,
        )
    if enough and m.conflict_rate > c.max_conflict_rate:
        add(
            "high_conflict",
            severity(m.conflict_rate - c.max_conflict_rate, 1 - c.max_conflict_rate),
            f"{m.conflicts} of {m.tasks} tasks were in a resource conflict ({m.conflict_rate:.2f})",
            "spread tasks that claim the same resources over more waves (conflicts.json)",
            conflict_rate=m.conflict_rate,
            conflicts=m.conflicts,
            threshold=c.max_conflict_rate,
        )
    out.sort(key=lambda a: (-a.severity, a.type, a.agent_id or ""))
    return out


class HealthReport(BaseModel):
    """Health of a wave (or of the campaign: ``wave`` None), 0–100, with its parts.

    ``score = 100 · Σ wᵢ·cᵢ / Σ wᵢ − penalty``, ``penalty = min(max_penalty,
    penalty_per_severity · Σ anomaly severities)``, clipped to 0–100; components ``cᵢ`` and
    weights ``wᵢ`` as in :class:`HealthWeights`. Status: EXCELLENT ≥ 90, GOOD ≥ 75, FAIR ≥ 50,
    else POOR (configurable).
    """

    campaign_id: str = ""
    wave: int | None = None
    score: float = Field(ge=0, le=100)
    status: HealthStatus
    components: dict[str, float]
    weights: dict[str, float]
    penalty: float
    anomalies: int
    generated_at: datetime


def health_status(score: float, config: MonitorConfig | None = None) -> HealthStatus:
    """EXCELLENT, GOOD, FAIR or POOR for ``score`` by the config's bands."""
    c = config or MonitorConfig()
    if score >= c.excellent:
        return "EXCELLENT"
    if score >= c.good:
        return "GOOD"
    if score >= c.fair:
        return "FAIR"
    return "POOR"


def health_components(m: Metrics) -> dict[str, float]:
    """The health components of ``m``, each 0–1 (:class:`HealthWeights`)."""
    return {
        "success": _clip(m.success_rate),
        "schedule_adherence": _clip(m.schedule_adherence),
        "calibration": _clip(m.confidence),
        "retries": _clip(1 - m.retry_rate),
        "optimization_efficiency": _clip(m.optimization_efficiency),
        "load_balance": _clip(m.load_balance),
        "rollback": _clip(1 - m.rollback_frequency),
        "conflict": _clip(1 - m.conflict_rate),
    }


def health(
    metrics: Metrics,
    anomalies: Sequence[Anomaly] = (),
    config: MonitorConfig | None = None,
    *,
    now: datetime | None = None,
) -> HealthReport:
    """The :class:`HealthReport` of a wave's (or the campaign's) metrics and anomalies."""
    c = config or MonitorConfig()
    comps = health_components(metrics)
    weights = c.weights.model_dump()
    total = sum(weights.values())
    base = 100.0 * sum(weights[k] * comps[k] for k in comps) / total
    penalty = min(c.max_penalty, c.penalty_per_severity * sum(a.severity for a in anomalies))
    score = min(100.0, max(0.0, base - penalty))
    return HealthReport(
        campaign_id=metrics.campaign_id,
        wave=metrics.wave if isinstance(metrics, WaveMetrics) else None,
        score=score,
        status=health_status(score, c),
        components=comps,
        weights=weights,
        penalty=penalty,
        anomalies=len(anomalies),
        generated_at=now or utcnow(),
    )


def below_min_health(report: HealthReport, min_health: float | None) -> bool:
    """True when ``--min-health`` is set and the report's score is below it (abort: exit 3)."""
    return min_health is not None and report.score < min_health


# == files ====================================================================================

METRICS_FILE = "metrics.jsonl"
ANOMALIES_FILE = "anomalies.jsonl"
HEALTH_FILE = "system_health.json"
AGENT_METRICS_FILE = "agent_metrics.jsonl"


class SystemHealth(BaseModel):
    """``system_health.json``: the latest health, its metrics and anomalies, and every wave's health."""

    campaign_id: str
    updated_at: datetime
    health: HealthReport
    metrics: WaveMetrics | CampaignMetrics
    anomalies: list[Anomaly]
    history: list[HealthReport] = Field(default_factory=list)


def write_monitoring(
    out_dir: Path,
    metrics: WaveMetrics,
    anomalies: Sequence[Anomaly],
    report: HealthReport,
    history: Sequence[HealthReport] = (),
) -> list[Path]:
    """Write one wave's monitoring files under the campaign folder ``out_dir``.

    Appends ``metrics.jsonl`` (one line) and ``anomalies.jsonl``, writes
    ``wave_<n>/agent_<id>/agent_metrics.jsonl`` per agent (one line each), and replaces
    ``system_health.json`` (``history``: earlier waves' reports; this one is added).
    Returns the paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / METRICS_FILE, out_dir / ANOMALIES_FILE]
    with written[0].open("a", encoding="utf-8") as f:
        f.write(metrics.model_dump_json() + "\n")
    with written[1].open("a", encoding="utf-8") as f:
        for a in anomalies:
            f.write(a.model_dump_json() + "\n")
    for aid, row in metrics.agents.items():
        d = out_dir / f"wave_{metrics.wave}" / f"agent_{aid}"
        d.mkdir(parents=True, exist_ok=True)
        (d / AGENT_METRICS_FILE).write_text(row.model_dump_json() + "\n", encoding="utf-8")
        written.append(d / AGENT_METRICS_FILE)
    written.append(write_system_health(out_dir, metrics, anomalies, report, history))
    return written


def write_system_health(
    out_dir: Path,
    metrics: WaveMetrics | CampaignMetrics,
    anomalies: Sequence[Anomaly],
    report: HealthReport,
    history: Sequence[HealthReport] = (),
) -> Path:
    """Replace ``system_health.json`` atomically (for the final, campaign-wide one too)."""
    doc = SystemHealth(
        campaign_id=metrics.campaign_id,
        updated_at=report.generated_at,
        health=report,
        metrics=metrics,
        anomalies=list(anomalies),
        history=[*history, report] if isinstance(metrics, WaveMetrics) else list(history),
    )
    path = out_dir / HEALTH_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(doc.model_dump_json(indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
