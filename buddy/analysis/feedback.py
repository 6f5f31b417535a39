"""The feedback loop: what one wave teaches, as records and signals (docs/architecture.md, "Data flow").

:func:`analyze_wave` runs in the chord body (``wave_complete``) over the wave's outcomes and
returns a :class:`WaveFeedback`: per task the prediction against the result, per agent a
performance score and its coordination issues, per tool its reliability, the calibration of
``predicted_success`` (this wave and running, :mod:`buddy.analysis.calibration`), and the
learning signals (:mod:`buddy.analysis.signals`). It is pure: no Redis, no files
(:mod:`buddy.outputs.analysis_files` writes them). :class:`FeedbackState` carries the
running totals from wave to wave (JSON, so it can live in Redis).

Definitions (units in brackets; per-agent counts, mean duration and success rate as in
:mod:`buddy.analysis.agents`)
    *executed*: the tool ran (:func:`buddy.analysis.outcomes.executed`); skipped, denied and
    lost tasks are not judged. *actual*: 1 when the outcome is ``succeeded``, else 0.
    *attempts* of an outcome: ``max(attempts, failed attempts, 1)``; *failed attempts*: the
    distinct attempt numbers in ``errors``.

    Prediction verdict: the prediction says "succeeds" when ``predicted ≥ 0.5``
    (:data:`~buddy.analysis.metrics.DECISION_THRESHOLD`); a true/false positive/negative
    against the actual result. ``confidence_delta = actual − predicted`` (positive: the
    prediction was too pessimistic). The wave's calibration signal adds the verdict counts
    and ``accuracy`` [0–1] = true verdicts / predicted executed tasks (the metric's).
    Agent ``performance_score`` [0–1]: ``0.6 · success_rate + 0.4 · speed_score``, where
    ``speed_score`` is the fastest agent's mean duration in the wave divided by this agent's
    (0 for an agent that ran nothing).
    Tool ``accuracy`` [0–1]: succeeded / executed; tool ``error_rate`` [0–1]: failed attempts
    / attempts (a retry that ends well still counts its failed attempt).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from buddy.analysis.agents import tally_agents
from buddy.analysis.calibration import Calibration, calibration_of
from buddy.analysis.metrics import DECISION_THRESHOLD
from buddy.analysis.outcomes import COORDINATION_ERRORS, attempts_of, error_types, executed, failed_attempts
from buddy.analysis.signals import (
    SIGNAL_TARGETS,
    LearningSignal,
    SeedIds,
    SignalType,
    approval_signal,
    conflict_signal,
    evidence_confidence,
    mode_signal,
    seed_ids,
    shared_seed_ids,
)
from buddy.models import Fraction, Outcome, TaskStatus, utcnow

Verdict = Literal["true_positive", "true_negative", "false_positive", "false_negative"]


class PredictionValidation(BaseModel):
    """One executed task's prediction against its result."""

    task_id: str
    wave: int
    agent_id: str | None
    tool: str | None
    predicted_success: Fraction
    actual: bool
    status: TaskStatus
    confidence_delta: float = Field(description="actual − predicted, −1…1")
    squared_error: Fraction
    verdict: Verdict
    error_type: str | None = None
    attempts: int = 1
    error_analysis: str


class AgentPerformance(BaseModel):
    """One agent in one wave: results, speed, the score and coordination issues.

    ``coordination_issues`` counts tasks per kind: ``off_plan`` (run here though planned
    for another agent or wave), ``conflict`` / ``lease_lost`` (resource contention),
    ``worker_lost`` (a worker died mid-task), ``upstream_failed`` (skipped: a dependency
    failed). ``tasks``: outcomes of every status; ``executed``, ``succeeded``,
    ``success_rate`` (0–1), ``busy_ms`` and ``mean_duration_ms`` (milliseconds) as defined in
    :mod:`buddy.analysis.agents`; attempts and retries over the executed tasks.
    """

    agent_id: str
    wave: int
    tasks: int
    executed: int = 0
    succeeded: int
    success_rate: Fraction
    mean_duration_ms: float
    retries: int
    busy_ms: float = 0.0
    attempts: int = 0
    failed_attempts: int = 0
    speed_score: Fraction
    performance_score: Fraction
    mean_predicted: Fraction | None = None
    brier: Fraction | None = None
    coordination_issues: dict[str, int] = Field(default_factory=dict)


class ToolReliability(BaseModel):
    """One tool in one wave (or running, in :class:`FeedbackState`)."""

    tool: str
    tasks: int
    succeeded: int
    attempts: int
    failed_attempts: int
    accuracy: Fraction
    error_rate: Fraction
    mean_duration_ms: float
    error_types: dict[str, int] = Field(default_factory=dict)


class WaveFeedback(BaseModel):
    """Everything the feedback loop learned from one wave."""

    campaign_id: str
    wave: int
    generated_at: datetime
    predictions: list[PredictionValidation]
    agents: list[AgentPerformance]
    tools: list[ToolReliability]
    calibration: Calibration
    running_calibration: Calibration
    signals: list[LearningSignal]


class Totals(BaseModel):
    """Running counts of an agent or a tool over its executed tasks (``busy_ms`` in milliseconds)."""

    tasks: int = 0
    succeeded: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    busy_ms: float = 0.0
    predicted_n: int = 0
    predicted_sum: float = 0.0

    def laplace_success(self) -> float:
        """``(succeeded + 1) / (tasks + 2)``: the success rate with one imagined success and failure."""
        return (self.succeeded + 1) / (self.tasks + 2)


class FeedbackState(BaseModel):
    """Running totals across the waves of a campaign; ``model_dump_json()`` to keep it in Redis.

    :meth:`absorb` is idempotent per wave (a redelivered chord body does not count twice).
    """

    campaign_id: str = ""
    waves: list[int] = Field(default_factory=list)
    calibration: Calibration = Field(default_factory=Calibration)
    agents: dict[str, Totals] = Field(default_factory=dict)
    tools: dict[str, Totals] = Field(default_factory=dict)

    def absorb(self, feedback: WaveFeedback) -> FeedbackState:
        """A new state with ``feedback`` added; an equal copy when its wave was already absorbed."""
        out = self.model_copy(deep=True)
        if feedback.wave in self.waves:
            return out
        out.campaign_id = out.campaign_id or feedback.campaign_id
        out.waves.append(feedback.wave)
        out.calibration = out.calibration.merge(feedback.calibration)
        pred_agent: dict[str, list[float]] = {}
        pred_tool: dict[str, list[float]] = {}
        for p in feedback.predictions:
            if p.agent_id is not None:
                pred_agent.setdefault(p.agent_id, []).append(p.predicted_success)
            if p.tool is not None:
                pred_tool.setdefault(p.tool, []).append(p.predicted_success)
        for a in feedback.agents:
            _add(out.agents, a.agent_id, a.executed, a.succeeded, a.attempts, a.failed_attempts, a.busy_ms)
            _add_predictions(out.agents[a.agent_id], pred_agent.get(a.agent_id, []))
        for t in feedback.tools:
            busy = t.mean_duration_ms * t.tasks
            _add(out.tools, t.tool, t.tasks, t.succeeded, t.attempts, t.failed_attempts, busy)
            _add_predictions(out.tools[t.tool], pred_tool.get(t.tool, []))
        return out


def _add(
    table: dict[str, Totals], key: str, tasks: int, ok: int, attempts: int, failed: int, busy_ms: float
) -> None:
    t = table.setdefault(key, Totals())
    t.tasks += tasks
    t.succeeded += ok
    t.attempts += attempts
    t.failed_attempts += failed
    t.busy_ms += busy_ms


def _add_predictions(t: Totals, preds: list[float]) -> None:
    t.predicted_n += len(preds)
    t.predicted_sum += sum(preds)


# -- analysis ----------------------------------------------------------------------------------


def _verdict(p: float, actual: bool) -> Verdict:
    says = p >= DECISION_THRESHOLD
    if says:
        return "true_positive" if actual else "false_positive"
    return "false_negative" if actual else "true_negative"


def _analysis(v: Verdict, p: float, o: Outcome) -> str:
    att = attempts_of(o)
    tries = f" after {att} attempts" if att > 1 else ""
    why = f" ({o.error_type}: {o.error_msg})" if o.error_type else ""
    if v == "true_positive":
        return f"succeeded as predicted ({p:.2f}){tries}"
    if v == "true_negative":
        return f"ended {o.status.value} as predicted ({p:.2f}){why}"
    if v == "false_positive":
        return f"overconfident: predicted {p:.2f} but ended {o.status.value}{tries}{why}"
    return f"underconfident: predicted {p:.2f} but succeeded{tries}"


def validate_predictions(
    outcomes: Iterable[Outcome], predicted: Mapping[str, float]
) -> list[PredictionValidation]:
    """A :class:`PredictionValidation` per executed outcome with a prediction, in input order."""
    out = []
    for o in outcomes:
        if not executed(o) or o.task_id not in predicted:
            continue
        p = predicted[o.task_id]
        actual = o.status is TaskStatus.SUCCEEDED
        v = _verdict(p, actual)
        out.append(
            PredictionValidation(
                task_id=o.task_id,
                wave=o.wave,
                agent_id=o.agent_id,
                tool=o.tool,
                predicted_success=p,
                actual=actual,
                status=o.status,
                confidence_delta=(1.0 if actual else 0.0) - p,
                squared_error=((1.0 if actual else 0.0) - p) ** 2,
                verdict=v,
                error_type=o.error_type,
                attempts=attempts_of(o),
                error_analysis=_analysis(v, p, o),
            )
        )
    return out


def agent_performance(
    wave: int,
    outcomes: Sequence[Outcome],
    predicted: Mapping[str, float],
    planned: Mapping[str, tuple[str, int]] | None = None,
) -> list[AgentPerformance]:
    """One :class:`AgentPerformance` per agent named by an outcome, sorted by agent id
    (counts, mean duration and success rate from :func:`buddy.analysis.agents.tally_agents`)."""
    tallies = tally_agents(outcomes)
    fastest = min(
        (t.mean_duration_ms for t in tallies.values() if t.executed and t.mean_duration_ms > 0), default=0.0
    )
    result = []
    for aid, t in tallies.items():
        mean = t.mean_duration_ms
        if not t.executed:
            speed = 0.0
        elif mean <= 0 or fastest <= 0:
            speed = 1.0
        else:
            speed = min(1.0, fastest / mean)
        preds = [
            (predicted[o.task_id], o.status is TaskStatus.SUCCEEDED) for o in t.ran if o.task_id in predicted
        ]
        cal = Calibration.of(preds) if preds else None
        result.append(
            AgentPerformance(
                agent_id=aid,
                wave=wave,
                tasks=t.tasks,
                executed=t.executed,
                succeeded=t.succeeded,
                success_rate=t.success_rate,
                mean_duration_ms=mean,
                busy_ms=t.busy_ms,
                attempts=sum(attempts_of(o) for o in t.ran),
                failed_attempts=sum(failed_attempts(o) for o in t.ran),
                retries=sum(attempts_of(o) - 1 for o in t.ran),
                speed_score=speed,
                performance_score=0.6 * t.success_rate + 0.4 * speed,
                mean_predicted=cal.mean_predicted if cal else None,
                brier=cal.brier if cal else None,
                coordination_issues=_coordination_issues(t.outcomes, planned),
            )
        )
    return result


def _coordination_issues(
    outs: Iterable[Outcome], planned: Mapping[str, tuple[str, int]] | None
) -> dict[str, int]:
    issues: Counter[str] = Counter()
    for o in outs:
        plan = planned.get(o.task_id) if planned else None
        if plan is not None and executed(o) and tuple(plan) != (o.agent_id, o.wave):  # lists from JSON too
            issues["off_plan"] += 1
        for kind in sorted({COORDINATION_ERRORS[e] for e in error_types(o) if e in COORDINATION_ERRORS}):
            issues[kind] += 1
    return dict(sorted(issues.items()))


def tool_reliability(outcomes: Iterable[Outcome]) -> list[ToolReliability]:
    """One :class:`ToolReliability` per tool of the executed outcomes, sorted by tool."""
    by_tool: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if executed(o) and o.tool is not None:
            by_tool.setdefault(o.tool, []).append(o)
    out = []
    for tool in sorted(by_tool):
        outs = by_tool[tool]
        ok = sum(o.status is TaskStatus.SUCCEEDED for o in outs)
        att = sum(attempts_of(o) for o in outs)
        bad = sum(failed_attempts(o) for o in outs)
        kinds: Counter[str] = Counter(e.error_type for o in outs for e in o.errors)
        for o in outs:
            if o.error_type and not o.errors:
                kinds[o.error_type] += 1
        out.append(
            ToolReliability(
                tool=tool,
                tasks=len(outs),
                succeeded=ok,
                attempts=att,
                failed_attempts=bad,
                accuracy=ok / len(outs),
                error_rate=min(1.0, bad / att),
                mean_duration_ms=sum(o.duration_ms for o in outs) / len(outs),
                error_types=dict(sorted(kinds.items())),
            )
        )
    return out


def analyze_wave(
    campaign_id: str,
    wave: int,
    outcomes: Sequence[Outcome],
    predicted: Mapping[str, float],
    planned: Mapping[str, tuple[str, int]] | None = None,
    *,
    state: FeedbackState | None = None,
    approved: Collection[str] = (),
    conflicts: Sequence[Mapping[str, Any]] = (),
    now: datetime | None = None,
) -> WaveFeedback:
    """The feedback of one wave.

    ``outcomes``: the wave's outcomes (all of them, skipped and denied included).
    ``predicted``: task id → the plan's ``predicted_success``. ``planned``: task id →
    ``(agent, wave)`` as dispatched (for ``off_plan`` coordination issues). ``state``: the
    running totals before this wave (not modified; call :meth:`FeedbackState.absorb`).
    ``approved``: ids of the wave's tasks an operator (or ``--auto-approve``) approved.
    ``conflicts``: the planner's resource conflicts of this wave, one JSON-able record each
    (e.g. ``{"resource": …, "tasks": […], "resolution": …}``). ``now``: the signals' time.
    """
    now = now or utcnow()
    state = state or FeedbackState(campaign_id=campaign_id)
    preds = validate_predictions(outcomes, predicted)
    agents = agent_performance(wave, outcomes, predicted, planned)
    tools = tool_reliability(outcomes)
    cal = calibration_of(outcomes, predicted)
    running = state.calibration if wave in state.waves else state.calibration.merge(cal)
    signals: list[LearningSignal] = []
    shared = shared_seed_ids(outcomes)
    own: dict[str, SeedIds] = {o.task_id: seed_ids(o) for o in outcomes if any(seed_ids(o))}

    def emit(kind: SignalType, content: dict[str, Any], confidence: float, ids: SeedIds = shared) -> None:
        signals.append(
            LearningSignal(
                signal_type=kind,
                target_phase=SIGNAL_TARGETS[kind],
                content=content,
                confidence=min(1.0, max(0.0, confidence)),
                generated_at=now,
                campaign_id=campaign_id,
                wave=wave,
                phase21_plan_id=ids[0],
                phase22_validation_id=ids[1],
            )
        )

    for p in preds:
        ids = own.get(p.task_id, (None, None))
        emit("prediction_validation", {"kind": "task", **p.model_dump(mode="json")}, 1.0, ids)
    if cal.n:
        verdicts = Counter(p.verdict for p in preds)
        emit(
            "prediction_validation",
            {
                "kind": "calibration",
                "wave": {
                    "n": cal.n,
                    "brier": cal.brier,
                    "ece": cal.ece,
                    "bias": cal.mean_predicted - cal.observed,
                    "accuracy": (verdicts["true_positive"] + verdicts["true_negative"]) / cal.n,
                    "verdicts": dict(sorted(verdicts.items())),
                },
                "running": {"n": running.n, "brier": running.brier, "ece": running.ece},
            },
            evidence_confidence(cal.n),
        )
    for a in agents:
        emit("agent_performance", a.model_dump(mode="json"), evidence_confidence(a.executed))
    issues: Counter[str] = Counter()
    for a in agents:
        issues.update(a.coordination_issues)
    if issues:
        emit(
            "multi_agent_coordination",
            {
                "issues": dict(sorted(issues.items())),
                "by_agent": {a.agent_id: a.coordination_issues for a in agents if a.coordination_issues},
            },
            evidence_confidence(sum(issues.values())),
        )
    by_tool_pred: dict[str, list[float]] = {}
    for p in preds:
        if p.tool is not None:
            by_tool_pred.setdefault(p.tool, []).append(p.predicted_success)
    for t in tools:
        emit("tool_reliability", t.model_dump(mode="json"), evidence_confidence(t.tasks))
        total = state.tools.get(t.tool, Totals()).model_copy()
        if wave not in state.waves:
            total.tasks += t.tasks
            total.succeeded += t.succeeded
        ps = by_tool_pred.get(t.tool)
        emit(
            "heuristic_feedback",
            {
                "tool": t.tool,
                "wave_tasks": t.tasks,
                "wave_success_rate": t.accuracy,
                "wave_mean_predicted": sum(ps) / len(ps) if ps else None,
                "running_tasks": total.tasks,
                "suggested_predicted_success": total.laplace_success(),
                "rule": "suggested = (running succeeded + 1) / (running tasks + 2)",
            },
            evidence_confidence(total.tasks),
        )
    mode_signal(outcomes, emit)
    approval_signal(outcomes, predicted, approved, emit)
    conflict_signal(outcomes, conflicts, emit)
    return WaveFeedback(
        campaign_id=campaign_id,
        wave=wave,
        generated_at=now,
        predictions=preds,
        agents=agents,
        tools=tools,
        calibration=cal,
        running_calibration=running,
        signals=signals,
    )
