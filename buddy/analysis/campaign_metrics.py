"""Computing a campaign's metrics (:class:`~buddy.analysis.metrics.CampaignMetrics`) from its waves'.

Sums are over the waves; ratios are recomputed from the sums with the definitions of
:mod:`buddy.analysis.agents` (mean duration = busy / executed, throughput = executed /
Σ wall_s), so the campaign-wide ``system_health.json`` agrees with ``metrics.jsonl`` and
with ``execution_summary.json`` (docs/architecture.md, "Data flow").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from buddy.analysis.agents import mean_duration_ms, ratio, throughput_tps
from buddy.analysis.calibration import Calibration
from buddy.analysis.metrics import (
    AgentWaveMetrics,
    CampaignMetrics,
    ToolWaveMetrics,
    WaveMetrics,
    balance,
    clip01,
    percentile,
)
from buddy.analysis.outcomes import agent_key, executed
from buddy.models import Outcome


def campaign_metrics(waves: Sequence[WaveMetrics], outcomes: Iterable[Outcome]) -> CampaignMetrics:
    """The :class:`CampaignMetrics` of the campaign's waves (oldest first); ``outcomes``
    (every wave's) give the latency percentiles (milliseconds)."""
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
        if executed(o):
            by_agent.setdefault(agent_key(o), []).append(o.duration_ms)
    for aid, a in agents.items():
        a.success_rate = ratio(a.succeeded, a.executed)
        a.attempt_success_rate = clip01((a.attempts - a.failed_attempts) / a.attempts) if a.attempts else 1.0
        a.mean_duration_ms = mean_duration_ms(a.busy_s * 1000.0, a.executed)
        a.utilization = clip01(a.busy_s / a.slot_s) if a.slot_s > 0 else 0.0
        a.throughput_tps = throughput_tps(a.executed, m.wall_s)
        ds = by_agent.get(aid, [])
        a.latency_p95_ms, a.latency_p99_ms = percentile(ds, 95), percentile(ds, 99)
    m.by_status = dict(sorted(status.items()))
    m.success_rate = ratio(m.succeeded, m.tasks)
    m.throughput_tps = throughput_tps(m.executed, m.wall_s)
    m.agent_utilization = clip01(m.busy_s / m.slot_s) if m.slot_s > 0 else 0.0
    m.load_balance = balance([a.utilization for a in agents.values() if a.in_service])
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
