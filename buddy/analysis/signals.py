"""Learning signals: what a wave teaches, addressed to the phase that can use it.

A :class:`LearningSignal` has a type, a target phase (:data:`SIGNAL_TARGETS`), a JSON-able
content and a confidence (0–1). Phase 16 plans with heuristics (a tool's usual success),
Phase 18 coordinates agents, Phase 20 predicts; Phase 19 receives the monitor/optimizer
findings of Phase 22 (tools, modes, approvals, conflicts). Which file each type is appended
to is :mod:`buddy.outputs.analysis_files` (docs/architecture.md, "Learning between waves").

Signal ``confidence`` (0–1): ``n / (n + 5)`` for a signal backed by ``n`` observations
(5 → 0.5, 45 → 0.9); 1.0 for one task's own prediction check, a recorded fact.

The seeds' ids (``phase21_plan_id``, ``phase22_validation_id``, :data:`buddy.models.SEED_IDS`)
a plan line carries reach its signals: a signal about one task (:func:`per_task`) carries the
task's; any other signal of a wave carries an id when every outcome of the wave that has one
has the same (the usual case: a plan from one Phase 21 plan, :func:`shared_seed_ids`), else
none. Absent ids are left out of the JSON.

The ``*_signal`` functions here build the signals of a whole wave that are not one record
per agent, tool or task; :func:`buddy.analysis.feedback.analyze_wave` calls them with its
collector (:data:`Emit`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel

from buddy.analysis.outcomes import CONFLICT_ERRORS, error_types, executed
from buddy.models import Fraction, Mode, Outcome, TaskStatus, seed_id_field

#: ``n`` at which a signal's confidence ``n / (n + k)`` reaches one half.
EVIDENCE_HALF = 5
#: Denied tasks predicted at least this likely to succeed are an approval mismatch.
CONFIDENT_PREDICTION = 0.8
#: At most this many task ids are listed in one signal's content.
MAX_LISTED = 20

SignalType = Literal[
    "agent_performance",
    "multi_agent_coordination",
    "heuristic_feedback",
    "prediction_validation",
    "tool_reliability",
    "approval_mismatch",
    "execution_mode_analysis",
    "conflict_pattern",
]
Phase = Literal["phase16", "phase18", "phase19", "phase20"]

#: signal_type → the phase it is for (module docstring).
SIGNAL_TARGETS: dict[str, Phase] = {
    "heuristic_feedback": "phase16",
    "agent_performance": "phase18",
    "multi_agent_coordination": "phase18",
    "prediction_validation": "phase20",
    "tool_reliability": "phase19",
    "execution_mode_analysis": "phase19",
    "approval_mismatch": "phase19",
    "conflict_pattern": "phase19",
}
#: How a wave's analysis hands a signal (type, content, confidence) to its collector.
Emit = Callable[[SignalType, dict[str, Any], float], None]
#: ``(phase21_plan_id, phase22_validation_id)`` of a task or a wave; None where absent.
SeedIds = tuple[str | None, str | None]


class LearningSignal(BaseModel):
    """One thing learned, for the phase that can use it (module docstring)."""

    signal_type: SignalType
    target_phase: Phase
    content: dict[str, Any]
    confidence: Fraction
    generated_at: datetime
    campaign_id: str = ""
    wave: int | None = None
    phase21_plan_id: str | None = seed_id_field("the Phase 21 plan id of the signal's tasks")
    phase22_validation_id: str | None = seed_id_field("the Phase 22 validation id of the signal's tasks")


def per_task(s: LearningSignal) -> bool:
    """True for a signal about one task (a ``prediction_validation`` of kind ``task``): there
    is one per executed task, so files that hold a phase's summary leave them out."""
    return s.signal_type == "prediction_validation" and s.content.get("kind") == "task"


def seed_ids(o: Outcome) -> SeedIds:
    """The outcome's ``(phase21_plan_id, phase22_validation_id)``."""
    return o.phase21_plan_id, o.phase22_validation_id


def shared_seed_ids(outcomes: Sequence[Outcome]) -> SeedIds:
    """Each seed id the outcomes that carry one all share (None: none carries it, or they differ)."""
    plans = {o.phase21_plan_id for o in outcomes if o.phase21_plan_id is not None}
    checks = {o.phase22_validation_id for o in outcomes if o.phase22_validation_id is not None}
    return (
        next(iter(plans)) if len(plans) == 1 else None,
        next(iter(checks)) if len(checks) == 1 else None,
    )


def evidence_confidence(n: int) -> float:
    """Confidence of a signal backed by ``n`` observations: ``n / (n + 5)`` (0–1)."""
    return n / (n + EVIDENCE_HALF) if n > 0 else 0.0


def mode_signal(outcomes: Sequence[Outcome], emit: Emit) -> None:
    """``execution_mode_analysis``: per mode the executed tasks and their success, the live
    share and why tasks were degraded; none when nothing ran."""
    ran = [o for o in outcomes if executed(o)]
    if not ran:
        return
    by_mode: dict[str, dict[str, Any]] = {}
    for m in Mode:
        outs = [o for o in ran if o.mode is m]
        if outs:
            ok = sum(o.status is TaskStatus.SUCCEEDED for o in outs)
            by_mode[m.value] = {"tasks": len(outs), "succeeded": ok, "success_rate": ok / len(outs)}
    reasons = Counter(o.mode_reason for o in ran if o.mode_reason)
    emit(
        "execution_mode_analysis",
        {
            "by_mode": by_mode,
            "live_ratio": by_mode.get(Mode.LIVE.value, {}).get("tasks", 0) / len(ran),
            "degraded": sum(reasons.values()),
            "reasons": dict(reasons.most_common(10)),
        },
        evidence_confidence(len(ran)),
    )


def approval_signal(
    outcomes: Sequence[Outcome], predicted: Mapping[str, float], approved: Collection[str], emit: Emit
) -> None:
    """``approval_mismatch``: approved tasks that ran and did not succeed, denied tasks
    predicted at least :data:`CONFIDENT_PREDICTION` likely to succeed; none when neither."""
    approved = set(approved)
    approved_failed = [
        o.task_id
        for o in outcomes
        if o.task_id in approved and executed(o) and o.status is not TaskStatus.SUCCEEDED
    ]
    denied_confident = [
        o.task_id
        for o in outcomes
        if o.status is TaskStatus.DENIED and predicted.get(o.task_id, 0.0) >= CONFIDENT_PREDICTION
    ]
    if not approved_failed and not denied_confident:
        return
    emit(
        "approval_mismatch",
        {
            "approved": len(approved),
            "approved_then_failed": approved_failed[:MAX_LISTED],
            "approved_then_failed_count": len(approved_failed),
            "denied_though_confident": denied_confident[:MAX_LISTED],
            "denied_though_confident_count": len(denied_confident),
            "confident_at": CONFIDENT_PREDICTION,
        },
        evidence_confidence(len(approved_failed) + len(denied_confident)),
    )


def conflict_signal(outcomes: Sequence[Outcome], conflicts: Sequence[Mapping[str, Any]], emit: Emit) -> None:
    """``conflict_pattern``: the planner's conflicts and the tasks that met ``conflict`` or
    ``lease_lost`` at run time; none when neither."""
    runtime = [o for o in outcomes if error_types(o) & CONFLICT_ERRORS]
    if not runtime and not conflicts:
        return
    kinds = Counter(e for o in runtime for e in error_types(o) if e in CONFLICT_ERRORS)
    emit(
        "conflict_pattern",
        {
            "planned": [dict(c) for c in conflicts[:MAX_LISTED]],
            "planned_count": len(conflicts),
            "runtime_tasks": [o.task_id for o in runtime[:MAX_LISTED]],
            "runtime_count": len(runtime),
            "runtime_error_types": dict(sorted(kinds.items())),
            "resolved_by_rollback": sum(o.rolled_back for o in runtime),
        },
        evidence_confidence(len(conflicts) + len(runtime)),
    )
