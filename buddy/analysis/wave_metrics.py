"""Computing one wave's metrics (:class:`~buddy.analysis.metrics.WaveMetrics`) from its outcomes.

Pure: no Redis, no files. Per-agent counts, mean duration and the wave's execution window
come from :mod:`buddy.analysis.agents`, so ``metrics.jsonl`` agrees with the wave summaries
of ``execution_summary.json``; throughput is over the throughput window of
:func:`~buddy.analysis.metrics.throughput_window` (docs/architecture.md, "Data flow").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from buddy.analysis.agents import AgentTally, ratio, status_counts, tally_agents, throughput_tps, wave_window
from buddy.analysis.calibration import calibration_of
from buddy.analysis.metrics import (
    MIN_WINDOW_S,
    AgentWaveMetrics,
    ToolWaveMetrics,
    WaveMetrics,
    balance,
    clip01,
    fleet_failure,
    judged,
    percentile,
    performance,
    prediction_correct,
    throughput_window,
    unavailable,
)
from buddy.analysis.outcomes import (
    CONFLICT_ERRORS,
    COORDINATION_ERRORS,
    attempts_of,
    error_types,
    failed_attempts,
)
from buddy.analysis.signals import MAX_LISTED
from buddy.models import AgentSpec, Mode, Outcome, TaskStatus

#: Error types counted as coordination issues: agents in each other's way or a worker lost.
#: ``upstream_failed`` is left out: the failure it follows is counted where it happened.
ISSUE_ERRORS = frozenset(COORDINATION_ERRORS) - {"upstream_failed"}


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
    harmless: Collection[str] = (),
    sent_at: datetime | None = None,
    min_window_s: float = MIN_WINDOW_S,
) -> WaveMetrics:
    """The :class:`WaveMetrics` of one wave (definitions in :class:`~buddy.analysis.metrics.Metrics`).

    ``outcomes``: every outcome of the wave, skipped and denied included. ``planned``: task id
    → ``(agent, wave)`` as dispatched (after the optimizer), so adherence measures what
    happened at execution. ``predicted``: task id → ``predicted_success`` (0–1). ``agents``:
    the agents in service for this wave with their concurrency (an agent drained on purpose
    and left out does not count as idle). ``approvals_*``: this wave's approval requests and
    grants; ``conflicts``: tasks the planner found in a resource conflict. ``previous``: the
    earlier waves' metrics (oldest first; the last one's ``running_calibration`` already
    holds every wave before it). ``harmless``: tasks of LOW-risk tools without effects, left
    out of ``live_judged`` (:class:`~buddy.analysis.wave.TaskFacts`; a task not named is
    judged). ``sent_at``: when the coordinator sent the wave (start of the throughput
    window; None: the first executed start); ``min_window_s``: the shortest window, seconds.
    """
    cid = campaign_id if campaign_id is not None else (outcomes[0].campaign_id if outcomes else "")
    counts = status_counts(outcomes)
    tallies = tally_agents(outcomes, (a.id for a in agents))
    ran = [o for t in tallies.values() for o in t.ran]
    start, end, wall = wave_window(outcomes)
    window = throughput_window(len(ran), start, end, sent_at, min_window_s)
    conc = {a.id: a.concurrency for a in agents}
    capable = _capable(agents, ran)
    agent_rows = {
        aid: _agent_metrics(t, wave, conc.get(aid, 1), aid in conc, aid in capable, wall, window, predicted)
        for aid, t in tallies.items()
    }
    busy = sum(t.busy_ms for t in tallies.values()) / 1000.0
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
    unjudged = set(harmless)
    drift = sorted(
        (-abs(predicted[o.task_id] - (o.status is TaskStatus.SUCCEEDED)), o.task_id)
        for o in live
        if o.task_id in predicted and o.task_id not in unjudged
    )  # (−|predicted − actual|, task id): worst first, then by task id
    drift_sum = -sum(d for d, _ in drift)
    fleet = [o for o in outcomes if judged(o)]
    fleet_failed = sum(fleet_failure(o) for o in fleet)
    patterns: Counter[str] = Counter(
        f"{o.tool or '-'}:{o.error_type}"
        for o in ran
        if o.status is not TaskStatus.SUCCEEDED and o.error_type is not None
    )
    coordination = sum(bool(error_types(o) & ISSUE_ERRORS) for o in outcomes)
    upstream = sum("upstream_failed" in error_types(o) for o in outcomes)
    load_rows = [agent_rows[a.id] for a in agents if a.id in capable]
    ideal, assigned = _makespans(load_rows, ran, busy)
    # the latest earlier wave carries the running total of all before it
    running = previous[-1].running_calibration.merge(cal) if previous else cal
    correct = sum(
        prediction_correct(predicted[o.task_id], o.status is TaskStatus.SUCCEEDED)
        for o in ran
        if o.task_id in predicted
    )
    tools = _tools(ran)
    tool_attempts = sum(t.attempts for t in tools.values())
    tool_failed = sum(t.failed_attempts for t in tools.values())
    fleet_ok = 1.0 - fleet_failed / len(fleet) if fleet else 1.0
    efficiency = clip01(ideal / assigned) if assigned > 0 else 1.0
    perf = performance(fleet_ok, efficiency)
    baseline = _baseline(previous, perf)
    unavailable_n = sum(unavailable(o) for o in fleet)
    return WaveMetrics(
        campaign_id=cid,
        wave=wave,
        tasks=counts.total,
        executed=len(ran),
        succeeded=counts.succeeded,
        by_status=dict(sorted(counts.by_status.items())),
        success_rate=ratio(counts.succeeded, counts.total),
        fleet_judged=len(fleet),
        fleet_failures=fleet_failed,
        fleet_success=fleet_ok,
        wall_s=wall,
        window_s=window,
        throughput_tps=throughput_tps(len(ran), window),
        busy_s=busy,
        slots=slots,
        slot_s=wall * slots,
        agent_utilization=clip01(busy / (wall * slots)) if wall > 0 and slots else 0.0,
        load_agents=len(load_rows),
        load_balance=balance([r.utilization for r in load_rows]),
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
        retry_rate=ratio(retries, attempts),
        latency_p50_ms=percentile(durations, 50),
        latency_p95_ms=percentile(durations, 95),
        latency_p99_ms=percentile(durations, 99),
        rolled_back=rolled,
        rollback_frequency=ratio(rolled, len(ran)),
        conflicts=conflict_total,
        conflict_rate=min(1.0, conflict_total / counts.total) if counts.total else 0.0,
        live=len(live),
        live_execution_ratio=ratio(len(live), len(ran)),
        approvals_requested=approvals_requested,
        approvals_granted=approvals_granted,
        approval_rate=min(1.0, approvals_granted / approvals_requested) if approvals_requested else 1.0,
        ideal_makespan_s=ideal,
        assigned_makespan_s=assigned,
        optimization_efficiency=efficiency,
        coordination_issues=coordination,
        upstream_failed=upstream,
        live_failed_unrolled=live_unrolled,
        live_min_predicted=min(live_preds) if live_preds else None,
        live_judged=len(drift),
        live_drift_sum=drift_sum,
        live_drift=drift_sum / len(drift) if drift else 0.0,
        live_drift_tasks=[tid for _, tid in drift[:MAX_LISTED]],
        failure_patterns=dict(sorted(patterns.items())),
        unavailable=unavailable_n,
        availability=1.0 - unavailable_n / len(fleet) if fleet else 1.0,
        predicted_correct=correct,
        accuracy=correct / cal.n if cal.n else 1.0,
        tool_success_rate=clip01(1.0 - tool_failed / tool_attempts) if tool_attempts else 1.0,
        execution_latency_ms=busy * 1000.0 / len(ran) if ran else 0.0,
        performance=perf,
        learning_impact=perf - baseline,
        agents=agent_rows,
        tools=tools,
        running_calibration=running,
        baseline_performance=baseline,
    )


def _baseline(previous: Sequence[WaveMetrics], perf: float) -> float:
    """The first wave's performance: carried by the latest earlier wave (the oldest earlier
    wave's own when that one predates the field); ``perf`` itself for the first wave."""
    if not previous:
        return perf
    carried = previous[-1].baseline_performance
    return carried if carried is not None else previous[0].performance


def _capable(agents: Sequence[AgentSpec], ran: Sequence[Outcome]) -> set[str]:
    """The agents in service that offer a tool the wave ran (every tool: ``tools`` None), or
    that ran something."""
    tools = {o.tool for o in ran if o.tool}
    ids = {a.id for a in agents}
    out = {o.agent_id for o in ran if o.agent_id in ids}
    out.update(a.id for a in agents if a.tools is None or not tools or tools & set(a.tools))
    return {a for a in out if a is not None}


def _agent_metrics(
    t: AgentTally,
    wave: int,
    concurrency: int,
    in_service: bool,
    capable: bool,
    wall: float,
    window: float,
    predicted: Mapping[str, float],
) -> AgentWaveMetrics:
    """One agent's row; ``wall`` is the wave's wall time, ``window`` its throughput window (seconds)."""
    ran = t.ran
    busy = t.busy_ms / 1000.0
    attempts = sum(attempts_of(o) for o in ran)
    failed = sum(failed_attempts(o) for o in ran)
    retried = [o for o in ran if attempts_of(o) > 1]
    preds = [(predicted[o.task_id], o.status is TaskStatus.SUCCEEDED) for o in ran if o.task_id in predicted]
    durations = [o.duration_ms for o in ran]
    timed = [(o.start_time.timestamp(), o.duration_ms / 1000.0) for o in ran if o.start_time is not None]
    span = max(s + d for s, d in timed) - min(s for s, _ in timed) if timed else 0.0
    by_tool: dict[str, list[float]] = {}
    for o in ran:
        by_tool.setdefault(o.tool or "-", []).append(o.duration_ms)
    return AgentWaveMetrics(
        agent_id=t.agent_id,
        wave=wave,
        concurrency=concurrency,
        in_service=in_service,
        capable=capable and in_service,
        tasks=t.tasks,
        executed=t.executed,
        succeeded=t.succeeded,
        attempts=attempts,
        failed_attempts=failed,
        success_rate=t.success_rate,
        attempt_success_rate=clip01((attempts - failed) / attempts) if attempts else 1.0,
        busy_s=busy,
        mean_duration_ms=t.mean_duration_ms,
        slot_s=wall * concurrency,
        utilization=clip01(busy / (wall * concurrency)) if wall > 0 else 0.0,
        throughput_tps=t.throughput_tps(window),
        retries=attempts - len(ran),
        retried=len(retried),
        retried_succeeded=sum(o.status is TaskStatus.SUCCEEDED for o in retried),
        predicted_n=len(preds),
        predicted_sum=sum(p for p, _ in preds),
        predicted_succeeded=sum(y for _, y in preds),
        latency_p95_ms=percentile(durations, 95),
        latency_p99_ms=percentile(durations, 99),
        span_s=max(0.0, span),
        tool_executed={k: len(v) for k, v in sorted(by_tool.items())},
        tool_mean_ms={k: sum(v) / len(v) for k, v in sorted(by_tool.items())},
    )


def _tools(ran: Sequence[Outcome]) -> dict[str, ToolWaveMetrics]:
    """One row per tool of the executed outcomes, sorted by tool."""
    tools: dict[str, ToolWaveMetrics] = {}
    for o in ran:
        t = tools.setdefault(o.tool or "-", ToolWaveMetrics(tool=o.tool or "-"))
        t.executed += 1
        t.succeeded += o.status is TaskStatus.SUCCEEDED
        t.attempts += attempts_of(o)
        t.failed_attempts += failed_attempts(o)
    return dict(sorted(tools.items()))


def _makespans(
    rows: Sequence[AgentWaveMetrics], ran: Sequence[Outcome], busy_s: float
) -> tuple[float, float]:
    """(ideal, assigned) makespan in seconds over the capable agents (:class:`Metrics`)."""
    if not rows or not ran or busy_s <= 0:
        return 0.0, 0.0
    wave_mean = busy_s / len(ran)
    capacity = 0.0
    for r in rows:
        mean_s = r.busy_s / r.executed if r.executed else wave_mean
        capacity += r.concurrency / mean_s if mean_s > 0 else 0.0
    longest: dict[str | None, float] = {}
    for o in ran:
        longest[o.agent_id] = max(longest.get(o.agent_id, 0.0), o.duration_ms / 1000.0)
    ideal = max(len(ran) / capacity if capacity > 0 else 0.0, max(longest.values()))
    assigned = max(max(r.busy_s / r.concurrency, longest.get(r.agent_id, 0.0)) for r in rows)
    return ideal, max(assigned, ideal)
