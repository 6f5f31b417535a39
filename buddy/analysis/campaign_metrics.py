"""Computing a campaign's metrics (:class:`~buddy.analysis.metrics.CampaignMetrics`) from its waves'.

Sums are over the waves; ratios are recomputed from the sums with the definitions of
:mod:`buddy.analysis.agents` (mean duration = busy / executed) and of
:mod:`buddy.analysis.metrics` (throughput = executed / Σ window_s), so the campaign-wide
``system_health.json`` agrees with ``metrics.jsonl``. Counts by status, the fleet's counts
and rollbacks are taken from the final outcomes of the waves, so a task compensated after an
abort counts ``rolled_back`` as in ``execution_summary.json`` (docs/architecture.md, "Data
flow").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from buddy.analysis.agents import mean_duration_ms, ratio, status_counts, throughput_tps
from buddy.analysis.calibration import Calibration
from buddy.analysis.metrics import (
    AgentWaveMetrics,
    CampaignMetrics,
    ToolWaveMetrics,
    WaveMetrics,
    balance,
    clip01,
    fleet_failure,
    judged,
    percentile,
    performance,
    unavailable,
)
from buddy.analysis.outcomes import agent_key, executed
from buddy.analysis.signals import MAX_LISTED
from buddy.models import Outcome, TaskStatus


def campaign_metrics(waves: Sequence[WaveMetrics], outcomes: Iterable[Outcome]) -> CampaignMetrics:
    """The :class:`CampaignMetrics` of the campaign's waves (oldest first). ``outcomes``: the
    final outcomes (every wave's; those of waves without metrics are left out) give the
    counts by status, the fleet's counts, the rollbacks and the latency percentiles
    (milliseconds); with none of them, those are the sums of the waves'."""
    m = CampaignMetrics(campaign_id=waves[0].campaign_id if waves else "", waves=len(waves))
    status: Counter[str] = Counter()
    cal = Calibration()
    agents: dict[str, AgentWaveMetrics] = {}
    tools: dict[str, ToolWaveMetrics] = {}
    patterns: Counter[str] = Counter()
    live_min: list[float] = []
    drift_tasks: list[str] = []
    # per agent, busy and slot-seconds of the waves it was capable in (load balance)
    load: dict[str, list[float]] = {}
    for w in waves:
        for f in _SUMMED:
            setattr(m, f, getattr(m, f) + getattr(w, f))
        status.update(w.by_status)
        patterns.update(w.failure_patterns)
        cal = cal.merge(w.calibration)
        m.ideal_makespan_s += w.ideal_makespan_s
        m.assigned_makespan_s += w.assigned_makespan_s
        drift_tasks += w.live_drift_tasks
        if w.live_min_predicted is not None:
            live_min.append(w.live_min_predicted)
        for aid, a in w.agents.items():
            acc = agents.setdefault(
                aid,
                AgentWaveMetrics(
                    agent_id=aid, wave=0, concurrency=a.concurrency, in_service=False, capable=False
                ),
            )
            acc.concurrency = a.concurrency  # the latest (tuned) value
            acc.in_service = acc.in_service or a.in_service
            acc.capable = acc.capable or a.capable
            for f in _AGENT_SUMMED:
                setattr(acc, f, getattr(acc, f) + getattr(a, f))
            if a.capable:
                busy_slot = load.setdefault(aid, [0.0, 0.0])
                busy_slot[0] += a.busy_s
                busy_slot[1] += a.slot_s
        for name, t in w.tools.items():
            tacc = tools.setdefault(name, ToolWaveMetrics(tool=name))
            for f in ("executed", "succeeded", "attempts", "failed_attempts"):
                setattr(tacc, f, getattr(tacc, f) + getattr(t, f))
    m.slots = max((w.slots for w in waves), default=0)
    numbers = {w.wave for w in waves}
    outs = [o for o in outcomes if o.wave in numbers]
    if outs:  # the final outcomes: a compensation after an abort is in them, not in the waves
        counts = status_counts(outs)
        status = Counter(counts.by_status)
        m.tasks, m.succeeded = counts.total, counts.succeeded
        fleet = [o for o in outs if judged(o)]
        m.fleet_judged, m.fleet_failures = len(fleet), sum(fleet_failure(o) for o in fleet)
        m.unavailable = sum(unavailable(o) for o in fleet)
        m.rolled_back = sum(
            executed(o) and (o.rolled_back or o.status is TaskStatus.ROLLED_BACK) for o in outs
        )
    durations = [o.duration_ms for o in outs if executed(o)]
    by_agent: dict[str, list[float]] = {}
    for o in outs:
        if executed(o):
            by_agent.setdefault(agent_key(o), []).append(o.duration_ms)
    for aid, a in agents.items():
        a.success_rate = ratio(a.succeeded, a.executed)
        a.attempt_success_rate = clip01((a.attempts - a.failed_attempts) / a.attempts) if a.attempts else 1.0
        a.mean_duration_ms = mean_duration_ms(a.busy_s * 1000.0, a.executed)
        a.utilization = clip01(a.busy_s / a.slot_s) if a.slot_s > 0 else 0.0
        a.throughput_tps = throughput_tps(a.executed, m.window_s)
        ds = by_agent.get(aid, [])
        a.latency_p95_ms, a.latency_p99_ms = percentile(ds, 95), percentile(ds, 99)
    m.by_status = dict(sorted(status.items()))
    m.success_rate = ratio(m.succeeded, m.tasks)
    m.fleet_success = 1.0 - m.fleet_failures / m.fleet_judged if m.fleet_judged else 1.0
    m.throughput_tps = throughput_tps(m.executed, m.window_s)
    m.agent_utilization = clip01(m.busy_s / m.slot_s) if m.slot_s > 0 else 0.0
    capable = {aid: bs for aid, bs in load.items() if agents[aid].in_service}
    m.load_agents = len(capable)
    m.load_balance = balance([clip01(b / s) if s > 0 else 0.0 for b, s in capable.values()])
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
    m.live_drift = m.live_drift_sum / m.live_judged if m.live_judged else 0.0
    m.live_drift_tasks = drift_tasks[:MAX_LISTED]
    m.failure_patterns = dict(sorted(patterns.items()))
    m.agents = dict(sorted(agents.items()))
    m.tools = dict(sorted(tools.items()))
    _seed_metrics(m, waves)
    return m


def _seed_metrics(m: CampaignMetrics, waves: Sequence[WaveMetrics]) -> None:
    """The source documents' metrics of the campaign (:class:`~buddy.analysis.metrics.Metrics`),
    from the sums already in ``m`` and the waves' own performance."""
    m.availability = 1.0 - m.unavailable / m.fleet_judged if m.fleet_judged else 1.0
    m.accuracy = m.predicted_correct / m.calibration.n if m.calibration.n else 1.0
    attempts = sum(t.attempts for t in m.tools.values())
    failed = sum(t.failed_attempts for t in m.tools.values())
    m.tool_success_rate = clip01(1.0 - failed / attempts) if attempts else 1.0
    m.execution_latency_ms = mean_duration_ms(m.busy_s * 1000.0, m.executed)
    m.performance = performance(m.fleet_success, m.optimization_efficiency)
    later = [w.learning_impact for w in waves[1:]]
    m.learning_impact = sum(later) / len(later) if later else 0.0


_SUMMED = (
    "tasks",
    "executed",
    "succeeded",
    "fleet_judged",
    "fleet_failures",
    "wall_s",
    "window_s",
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
    "upstream_failed",
    "live_failed_unrolled",
    "live_judged",
    "live_drift_sum",
    "unavailable",
    "predicted_correct",
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
