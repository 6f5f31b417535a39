"""The source documents' performance targets, judged once per campaign (issue 15).

:func:`judge_targets` turns the campaign's metrics (:mod:`buddy.analysis.campaign_metrics`),
its waves' metrics and its health into one :class:`~buddy.models.Target` per target: met,
missed, or not judged with the reason. It is the only place they are judged; the coordinator
puts them in ``execution_summary.json`` (``targets``) and ``report.md`` ("Targets") shows
them (docs/architecture.md, "Outputs"). Pure: no Redis, no files.

==========================  ===============  ====================================================
target (name)               goal             measured as / judged when
==========================  ===============  ====================================================
success_rate                ≥ 0.90           ``fleet_success``; when the fleet was judged on a task
throughput                  ≥ 35 tasks/s     ``throughput_tps``; when the plan allows it (below)
utilization                 0.70–1.00        ``agent_utilization``; on a load worth judging, when
                                             the plan's waves can fill 70 % of the slots (below)
confidence                  ≥ 0.95           ``confidence`` (1 − ECE); when the plan gives
                                             predictions and enough predicted tasks ran
schedule_accuracy           ≥ 0.95           ``schedule_adherence``; when an executed task had a
                                             planned agent and wave
health                      ≥ 90             the campaign's health score; when a wave was analyzed
optimization_efficiency     ≥ 0.90           ``optimization_efficiency``; on a load worth judging
==========================  ===============  ====================================================

A value equal to its goal meets it (as the monitor's thresholds do). The minimum samples are
the monitor's (:class:`~buddy.analysis.monitor.MonitorConfig`): a *load worth judging* is
:func:`~buddy.analysis.anomalies.load_judged` over the campaign (≥ 2 capable agents, ≥
``min_tasks_per_agent`` executed tasks per agent in service, the busiest agent busy ≥
``min_makespan_s`` seconds in all); confidence needs ``min_calibration_tasks`` executed tasks
with a prediction.

*Where the plan allows it* (throughput). A wave cannot be faster than its ideal makespan
(``ideal_makespan_s``: its executed tasks split over the capable agents' slots in proportion to
their observed speed, and never shorter than its longest task), and its throughput window is at
least :data:`~buddy.analysis.metrics.MIN_WINDOW_S`; so the waves allow at most
``Σ executed / Σ max(MIN_WINDOW_S, ideal_makespan_s)`` tasks per second
(:func:`allowed_throughput`), the campaign's throughput being ``Σ executed / Σ window_s``.
The target is judged only when that bound reaches 35 tasks/s: waves of fewer than 35 tasks,
or tasks too long for the slots in service, cannot meet it whatever the fleet does. Task
durations are those the campaign measured (``duration_ms``, in the mode it ran: a mock call is
instant, a live ``sleep`` is not), not the tools' estimates, which only live calls follow and
most tools do not give. The same bound for utilization: a wave can keep at most
``busy_s / (slots × ideal_makespan_s)`` of its slots busy (fewer or longer tasks than slots,
agents that offer none of its tools), so utilization is judged only when the waves allow 0.70
(:func:`allowed_utilization`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from buddy.analysis.anomalies import load_judged
from buddy.analysis.health import HealthReport
from buddy.analysis.metrics import MIN_WINDOW_S, CampaignMetrics, WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.models import PlanTask, Target

#: The source documents' goals (module docstring): fractions 0–1, tasks per second, points.
MIN_SUCCESS = 0.90
MIN_THROUGHPUT_TPS = 35.0
UTILIZATION = (0.70, 1.00)
MIN_CONFIDENCE = 0.95
MIN_SCHEDULE_ACCURACY = 0.95
MIN_HEALTH = 90.0
MIN_OPTIMIZATION_EFFICIENCY = 0.90
#: Slack of a comparison with a goal, so that 1 − 1/10 meets 0.90.
EPSILON = 1e-9

#: Each target's goal: name → (goal as text, low, high, unit), in the order they are reported.
GOALS: dict[str, tuple[str, float | None, float | None, str]] = {
    "success_rate": (f"≥ {MIN_SUCCESS:.2f}", MIN_SUCCESS, None, ""),
    "throughput": (f"≥ {MIN_THROUGHPUT_TPS:g} tasks/s", MIN_THROUGHPUT_TPS, None, "tasks/s"),
    "utilization": (f"{UTILIZATION[0]:.2f}–{UTILIZATION[1]:.2f}", *UTILIZATION, ""),
    "confidence": (f"≥ {MIN_CONFIDENCE:.2f}", MIN_CONFIDENCE, None, ""),
    "schedule_accuracy": (f"≥ {MIN_SCHEDULE_ACCURACY:.2f}", MIN_SCHEDULE_ACCURACY, None, ""),
    "health": (f"≥ {MIN_HEALTH:g}", MIN_HEALTH, None, "points"),
    "optimization_efficiency": (
        f"≥ {MIN_OPTIMIZATION_EFFICIENCY:.2f}",
        MIN_OPTIMIZATION_EFFICIENCY,
        None,
        "",
    ),
}


def predictions_given(tasks: Iterable[PlanTask]) -> int:
    """How many plan tasks state a ``predicted_success`` (on their line, or by the campaign's
    ``defaults``): the others carry the default 0.5, which predicts nothing."""
    return sum("predicted_success" in t.model_fields_set for t in tasks)


def allowed_throughput(waves: Sequence[WaveMetrics]) -> float:
    """The most tasks per second the waves allow: ``Σ executed / Σ max(MIN_WINDOW_S,
    ideal_makespan_s)`` over the waves that ran a task (module docstring); 0 when none did."""
    ran = [w for w in waves if w.executed]
    seconds = sum(max(MIN_WINDOW_S, w.ideal_makespan_s) for w in ran)
    return sum(w.executed for w in ran) / seconds if seconds > 0 else 0.0


def allowed_utilization(waves: Sequence[WaveMetrics]) -> float | None:
    """The largest share of the slots the waves could keep busy: ``Σ busy_s / Σ (slots ×
    ideal_makespan_s)`` over the waves with work (0–1); None when no wave had any."""
    rows = [w for w in waves if w.busy_s > 0 and w.slots > 0 and w.ideal_makespan_s > 0]
    offered = sum(w.slots * w.ideal_makespan_s for w in rows)
    return min(1.0, sum(w.busy_s for w in rows) / offered) if offered > 0 else None


def _target(name: str, value: float | None, met: bool | None, why: str) -> Target:
    """The :class:`Target` ``name`` (its goal from :data:`GOALS`) with its verdict."""
    goal, low, high, unit = GOALS[name]
    return Target(name=name, target=goal, low=low, high=high, unit=unit, value=value, met=met, why=why)


def _at_least(value: float, goal: float) -> bool:
    return value >= goal - EPSILON


def judge_targets(
    metrics: CampaignMetrics | None,
    health: HealthReport | None,
    waves: Sequence[WaveMetrics] = (),
    config: MonitorConfig | None = None,
    *,
    predictions: int | None = None,
) -> list[Target]:
    """Every target of the module docstring, in :data:`GOALS` order.

    ``metrics``: the campaign's (None: no wave ran, nothing is judged); ``health``: the
    campaign's health report; ``waves``: the waves' metrics, oldest first (the throughput and
    utilization bounds; without them the throughput bound comes from the campaign's sums);
    ``config``: the monitor's minimum samples; ``predictions``: how many plan tasks state a
    ``predicted_success`` (:func:`predictions_given`; None: not known, the calibration sample
    alone decides).
    """
    c = config or MonitorConfig()
    if metrics is None:
        return [_target(name, None, None, "no wave ran") for name in GOALS]
    return [
        _success_target(metrics),
        _throughput_target(metrics, waves),
        _utilization_target(metrics, waves, c),
        _confidence_target(metrics, c, predictions),
        _schedule_target(metrics),
        _health_target(health),
        _efficiency_target(metrics, c),
    ]


def _success_target(m: CampaignMetrics) -> Target:
    if not m.fleet_judged:
        return _target(
            "success_rate", None, None, "no task was the fleet's to run (all skipped, denied or cancelled)"
        )
    v = m.fleet_success
    why = (
        f"fleet success: {m.fleet_failures} of {m.fleet_judged} judged tasks failed "
        "(skipped, denied and cancelled tasks are not judged)"
    )
    return _target("success_rate", v, _at_least(v, MIN_SUCCESS), why)


def _throughput_target(m: CampaignMetrics, waves: Sequence[WaveMetrics]) -> Target:
    v = m.throughput_tps
    if not m.executed:
        return _target("throughput", v, None, "no task ran")
    bound = allowed_throughput(waves) if waves else _campaign_bound(m)
    ran = sum(1 for w in waves if w.executed) or m.waves
    if bound < MIN_THROUGHPUT_TPS - EPSILON:
        why = (
            f"the plan allows at most {bound:.1f} tasks/s: {m.executed} executed tasks in {ran} wave(s), "
            f"each wave no shorter than its ideal makespan on its slots nor than {MIN_WINDOW_S:g} s"
        )
        return _target("throughput", v, None, why)
    why = (
        f"{m.executed} executed tasks over {m.window_s:.2f} s of wave windows; "
        f"the plan allows up to {bound:.1f} tasks/s"
    )
    return _target("throughput", v, _at_least(v, MIN_THROUGHPUT_TPS), why)


def _campaign_bound(m: CampaignMetrics) -> float:
    """:func:`allowed_throughput` from the campaign's sums alone (no wave metrics at hand)."""
    return m.executed / max(m.ideal_makespan_s, MIN_WINDOW_S * max(m.waves, 1))


def _load_reason(m: CampaignMetrics, c: MonitorConfig) -> str:
    return (
        f"too small or too short a load to judge: {m.load_agents} capable agent(s), {m.executed} "
        f"executed tasks, busiest agent busy {m.assigned_makespan_s:.2f} s (the monitor judges a load "
        f"from 2 agents, {c.min_tasks_per_agent} tasks per agent and {c.min_makespan_s:g} s)"
    )


def _utilization_target(m: CampaignMetrics, waves: Sequence[WaveMetrics], c: MonitorConfig) -> Target:
    low, high = UTILIZATION
    v = m.agent_utilization
    if not load_judged(m, c):
        return _target("utilization", v, None, _load_reason(m, c))
    bound = allowed_utilization(waves)
    if bound is not None and bound < low - EPSILON:
        why = (
            f"the plan's waves can keep at most {bound:.2f} of their slots busy (fewer or longer "
            "tasks than slots, or agents that offer none of the waves' tools)"
        )
        return _target("utilization", v, None, why)
    why = f"busy {m.busy_s:.1f} s of {m.slot_s:.1f} slot-seconds (wall time × slots)"
    return _target("utilization", v, _at_least(v, low) and v <= high + EPSILON, why)


def _confidence_target(m: CampaignMetrics, c: MonitorConfig, predictions: int | None) -> Target:
    v, n = m.confidence, m.calibration.n
    if predictions == 0:
        return _target("confidence", v, None, "the plan gives no predicted_success")
    if n < c.min_calibration_tasks:
        why = (
            f"{n} executed task(s) with a prediction; the monitor judges calibration "
            f"from {c.min_calibration_tasks}"
        )
        return _target("confidence", v, None, why)
    return _target("confidence", v, _at_least(v, MIN_CONFIDENCE), f"1 − ECE over {n} predicted tasks")


def _schedule_target(m: CampaignMetrics) -> Target:
    if not m.planned:
        return _target("schedule_accuracy", None, None, "no executed task had a planned agent and wave")
    v = m.schedule_adherence
    why = f"{m.on_plan} of {m.planned} executed tasks ran on their planned agent and wave"
    return _target("schedule_accuracy", v, _at_least(v, MIN_SCHEDULE_ACCURACY), why)


def _health_target(h: HealthReport | None) -> Target:
    if h is None:
        return _target("health", None, None, "no wave was analyzed")
    why = f"campaign health {h.score:.1f} ({h.status}), anomaly penalty {h.penalty:.1f}"
    return _target("health", h.score, _at_least(h.score, MIN_HEALTH), why)


def _efficiency_target(m: CampaignMetrics, c: MonitorConfig) -> Target:
    v = m.optimization_efficiency
    if not load_judged(m, c):
        return _target("optimization_efficiency", v, None, _load_reason(m, c))
    why = f"ideal makespan {m.ideal_makespan_s:.2f} s against the split's {m.assigned_makespan_s:.2f} s"
    return _target("optimization_efficiency", v, _at_least(v, MIN_OPTIMIZATION_EFFICIENCY), why)
