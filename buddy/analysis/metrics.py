"""Wave metrics: the summary and every metric of a wave, and of a campaign (docs/architecture.md, data flow).

Everything here is pure (no Redis, no Celery, no files); :mod:`buddy.monitor` turns these
metrics into anomalies and a health score.

- :func:`summarize_wave`: the short :class:`~buddy.models.WaveSummary` of a wave.
- :func:`compute_wave_metrics`: every metric of a wave (:class:`Metrics` defines each in one
  line); :func:`campaign_metrics` the same over a campaign.

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

from pydantic import BaseModel, Field

from buddy.analysis.feedback import (
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


def clip01(x: float) -> float:
    """``x`` clamped to 0–1."""
    return min(1.0, max(0.0, x))


def _balance(utilizations: Sequence[float]) -> float:
    """1 − population σ / mean of ``utilizations``, clipped to 0–1; 1 for < 2 values or mean 0."""
    if len(utilizations) < 2:
        return 1.0
    mean = sum(utilizations) / len(utilizations)
    if mean <= 0:
        return 1.0
    var = sum((u - mean) ** 2 for u in utilizations) / len(utilizations)
    return clip01(1.0 - math.sqrt(var) / mean)


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
        agent_utilization=clip01(busy / (wall * slots)) if wall > 0 and slots else 0.0,
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
        optimization_efficiency=clip01(ideal / assigned) if assigned > 0 else 1.0,
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
        attempt_success_rate=clip01((attempts - failed) / attempts) if attempts else 1.0,
        busy_s=busy,
        mean_duration_ms=busy * 1000.0 / len(ran) if ran else 0.0,
        slot_s=wall * concurrency,
        utilization=clip01(busy / (wall * concurrency)) if wall > 0 else 0.0,
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
        a.attempt_success_rate = clip01((a.attempts - a.failed_attempts) / a.attempts) if a.attempts else 1.0
        a.mean_duration_ms = a.busy_s * 1000.0 / a.executed if a.executed else 0.0
        a.utilization = clip01(a.busy_s / a.slot_s) if a.slot_s > 0 else 0.0
        a.throughput_tps = a.executed / m.wall_s if m.wall_s > 0 else 0.0
        ds = by_agent.get(aid, [])
        a.latency_p95_ms, a.latency_p99_ms = percentile(ds, 95), percentile(ds, 99)
    m.by_status = dict(sorted(status.items()))
    m.success_rate = m.succeeded / m.tasks if m.tasks else 0.0
    m.throughput_tps = m.executed / m.wall_s if m.wall_s > 0 else 0.0
    m.agent_utilization = clip01(m.busy_s / m.slot_s) if m.slot_s > 0 else 0.0
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
        clip01(m.ideal_makespan_s / m.assigned_makespan_s) if m.assigned_makespan_s > 0 else 1.0
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
