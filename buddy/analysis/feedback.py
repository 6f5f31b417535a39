"""The feedback loop: what one wave teaches, as records and signals (docs/architecture.md, "Data flow").

:func:`analyze_wave` runs in the chord body (``wave_complete``) over the wave's outcomes and
returns a :class:`WaveFeedback`: per task the prediction against the result, per agent a
performance score and its coordination issues, per tool its reliability, the calibration of
``predicted_success`` (this wave and running), and the learning signals. It is pure: no
Redis, no files. :class:`FeedbackState` carries the running totals from wave to wave (JSON,
so it can live in Redis); :func:`write_feedback` appends the signals to their files.

Definitions (units in brackets)
    *executed*: an outcome a worker produced (``worker`` set); skipped and denied tasks never
    ran and are not judged. *actual*: 1 when the outcome is ``succeeded``, else 0.
    *attempts* of an outcome: ``max(attempts, failed attempts, 1)``; *failed attempts*: the
    distinct attempt numbers in ``errors``.

    Brier score [0–1]: mean of ``(predicted − actual)²`` over the executed tasks that have a
    prediction; 0 is perfect, 0.25 is what always predicting 0.5 scores.
    Expected calibration error, ECE [0–1]: predictions fall in 10 equal bins
    ``[0, .1), [.1, .2), …, [.9, 1]``; ``ECE = Σ_bins (n_bin / n) · |mean predicted − share
    succeeded|``.
    Prediction verdict: the prediction says "succeeds" when ``predicted ≥ 0.5``; a true/false
    positive/negative against the actual result. ``confidence_delta = actual − predicted``
    (positive: the prediction was too pessimistic).
    Agent ``performance_score`` [0–1]: ``0.6 · success_rate + 0.4 · speed_score``, where
    ``speed_score`` is the fastest agent's mean duration in the wave divided by this agent's.
    Tool ``accuracy`` [0–1]: succeeded / executed; tool ``error_rate`` [0–1]: failed attempts
    / attempts (a retry that ends well still counts its failed attempt).
    Signal ``confidence`` [0–1]: ``n / (n + 5)`` for a signal backed by ``n`` observations
    (5 → 0.5, 45 → 0.9); 1.0 for one task's own prediction check, a recorded fact.

Routing (:data:`SIGNAL_ROUTES`; every signal also goes to ``learning_signals.jsonl``)

=========================  ==========  ============================================
signal_type                target      file under ``<out>/feedback/``
=========================  ==========  ============================================
heuristic_feedback         phase16     ``phase16/heuristic_feedback.jsonl``
agent_performance          phase18     ``phase18/coordination_feedback.jsonl``
multi_agent_coordination   phase18     ``phase18/coordination_feedback.jsonl``
prediction_validation      phase20     ``phase20/prediction_validation_feedback.jsonl``
tool_reliability           phase19     ``phase19/phase22_feedback.jsonl``
execution_mode_analysis    phase19     ``phase19/phase22_feedback.jsonl``
approval_mismatch          phase19     ``phase19/phase22_feedback.jsonl``
conflict_pattern           phase19     ``phase19/phase22_feedback.jsonl``
=========================  ==========  ============================================

Phase 16 plans with heuristics (a tool's usual success), Phase 18 coordinates agents, Phase 20
predicts; Phase 19 receives the monitor/optimizer findings of Phase 22 (tools, modes,
approvals, conflicts).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

from buddy.models import Fraction, Mode, Outcome, TaskStatus, utcnow

N_BINS = 10
#: ``n`` at which a signal's confidence ``n / (n + k)`` reaches one half.
EVIDENCE_HALF = 5
#: A prediction at or above this says "the task succeeds".
DECISION_THRESHOLD = 0.5
#: Denied tasks predicted at least this likely to succeed are an approval mismatch.
CONFIDENT_PREDICTION = 0.8
#: Error types that mean agents got in each other's way rather than the tool failing.
COORDINATION_ERRORS = {
    "conflict": "conflict",
    "lease_lost": "lease_lost",
    "WorkerLost": "worker_lost",
    "upstream_failed": "upstream_failed",
}
#: Error types of a resource conflict at run time.
CONFLICT_ERRORS = frozenset({"conflict", "lease_lost"})
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

#: signal_type → (target phase = folder under ``feedback/``, file name); module docstring.
SIGNAL_ROUTES: dict[str, tuple[Phase, str]] = {
    "heuristic_feedback": ("phase16", "heuristic_feedback.jsonl"),
    "agent_performance": ("phase18", "coordination_feedback.jsonl"),
    "multi_agent_coordination": ("phase18", "coordination_feedback.jsonl"),
    "prediction_validation": ("phase20", "prediction_validation_feedback.jsonl"),
    "tool_reliability": ("phase19", "phase22_feedback.jsonl"),
    "execution_mode_analysis": ("phase19", "phase22_feedback.jsonl"),
    "approval_mismatch": ("phase19", "phase22_feedback.jsonl"),
    "conflict_pattern": ("phase19", "phase22_feedback.jsonl"),
}
#: Every signal is also appended here, at the campaign's root.
ALL_SIGNALS_FILE = "learning_signals.jsonl"
FEEDBACK_DIR = "feedback"
#: How :func:`analyze_wave` hands a signal (type, content, confidence) to its collector.
Emit = Callable[[SignalType, dict[str, Any], float], None]


def evidence_confidence(n: int) -> float:
    """Confidence of a signal backed by ``n`` observations: ``n / (n + 5)``."""
    return n / (n + EVIDENCE_HALF) if n > 0 else 0.0


def executed(o: Outcome) -> bool:
    """True when a worker produced the outcome (skipped and denied tasks never ran)."""
    return o.worker is not None


def failed_attempts(o: Outcome) -> int:
    """Distinct failed attempts recorded in ``o.errors``."""
    return len({e.attempt for e in o.errors}) if o.errors else 0


def attempts_of(o: Outcome) -> int:
    """Attempts of an executed outcome: ``max(attempts, failed attempts, 1)``."""
    return max(o.attempts, failed_attempts(o), 1) if o.errors else max(o.attempts, 1)


def error_types(o: Outcome) -> set[str]:
    """The outcome's final error type and those of its failed attempts."""
    out = {e.error_type for e in o.errors}
    if o.error_type:
        out.add(o.error_type)
    return out


# -- calibration -------------------------------------------------------------------------------


class CalibrationBin(BaseModel):
    """One bin of predictions ``[lower, upper)`` (the last bin includes 1.0)."""

    lower: float
    upper: float
    n: int = 0
    sum_predicted: float = 0.0
    sum_actual: float = 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_predicted(self) -> float:
        """Mean prediction in the bin (0 when empty)."""
        return self.sum_predicted / self.n if self.n else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def observed(self) -> float:
        """Share of the bin's tasks that succeeded (0 when empty)."""
        return self.sum_actual / self.n if self.n else 0.0


def _empty_bins() -> list[CalibrationBin]:
    return [CalibrationBin(lower=i / N_BINS, upper=(i + 1) / N_BINS) for i in range(N_BINS)]


def bin_index(p: float) -> int:
    """The bin of prediction ``p``: ``floor(10 p)``, 1.0 in the last bin."""
    return min(int(p * N_BINS + 1e-9), N_BINS - 1)


class Calibration(BaseModel):
    """Calibration of ``predicted_success`` against results: Brier score and ECE (10 bins).

    Holds sums, not means, so two calibrations merge exactly (:meth:`merge`): a running
    calibration is the merge of the waves'. ``brier`` and ``ece`` are 0 with no data.
    """

    n: int = 0
    sum_sq_error: float = 0.0
    bins: list[CalibrationBin] = Field(default_factory=_empty_bins)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def brier(self) -> float:
        """Mean squared error of the predictions, 0–1."""
        return self.sum_sq_error / self.n if self.n else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ece(self) -> float:
        """Σ_bins (n_bin / n) · |mean predicted − observed|, 0–1."""
        if not self.n:
            return 0.0
        return sum(b.n * abs(b.mean_predicted - b.observed) for b in self.bins) / self.n

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mean_predicted(self) -> float:
        """Mean prediction, 0–1 (0 with no data)."""
        return sum(b.sum_predicted for b in self.bins) / self.n if self.n else 0.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def observed(self) -> float:
        """Share of the predicted tasks that succeeded, 0–1 (0 with no data)."""
        return sum(b.sum_actual for b in self.bins) / self.n if self.n else 0.0

    def add(self, predicted: float, actual: bool) -> None:
        """Count one prediction and its result."""
        y = 1.0 if actual else 0.0
        b = self.bins[bin_index(predicted)]
        b.n += 1
        b.sum_predicted += predicted
        b.sum_actual += y
        self.n += 1
        self.sum_sq_error += (predicted - y) ** 2

    def merge(self, other: Calibration) -> Calibration:
        """A new calibration holding both sets of predictions."""
        out = self.model_copy(deep=True)
        out.n += other.n
        out.sum_sq_error += other.sum_sq_error
        for mine, theirs in zip(out.bins, other.bins, strict=True):
            mine.n += theirs.n
            mine.sum_predicted += theirs.sum_predicted
            mine.sum_actual += theirs.sum_actual
        return out

    @classmethod
    def of(cls, pairs: Iterable[tuple[float, bool]]) -> Calibration:
        """The calibration of ``(predicted, succeeded)`` pairs (what :meth:`add` would count,
        summed in plain floats first: a wave's thousands of model attribute writes cost more
        than the rest of its analysis)."""
        counts, predicted, actual = [0] * N_BINS, [0.0] * N_BINS, [0.0] * N_BINS
        n, sse = 0, 0.0
        for p, ok in pairs:
            y = 1.0 if ok else 0.0
            i = bin_index(p)
            counts[i] += 1
            predicted[i] += p
            actual[i] += y
            n += 1
            sse += (p - y) ** 2
        bins = [
            CalibrationBin(
                lower=i / N_BINS, upper=(i + 1) / N_BINS, n=counts[i], sum_predicted=predicted[i],
                sum_actual=actual[i],
            )
            for i in range(N_BINS)
        ]  # fmt: skip
        return cls(n=n, sum_sq_error=sse, bins=bins)


def calibration_of(outcomes: Iterable[Outcome], predicted: Mapping[str, float]) -> Calibration:
    """Calibration over the executed outcomes that have a prediction in ``predicted``."""
    return Calibration.of(
        (predicted[o.task_id], o.status is TaskStatus.SUCCEEDED)
        for o in outcomes
        if executed(o) and o.task_id in predicted
    )


# -- records -----------------------------------------------------------------------------------

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
    failed).
    """

    agent_id: str
    wave: int
    tasks: int
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


class LearningSignal(BaseModel):
    """One thing learned, for the phase that can use it (module docstring: routing)."""

    signal_type: SignalType
    target_phase: Phase
    content: dict[str, Any]
    confidence: Fraction
    generated_at: datetime
    campaign_id: str = ""
    wave: int | None = None


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
    """Running counts of an agent or a tool."""

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
            _add(out.agents, a.agent_id, a.tasks, a.succeeded, a.attempts, a.failed_attempts, a.busy_ms)
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
    """One :class:`AgentPerformance` per agent named by an outcome, sorted by agent id."""
    by_agent: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.agent_id is not None:
            by_agent.setdefault(o.agent_id, []).append(o)
    means: dict[str, float] = {}
    for aid, outs in by_agent.items():
        ran = [o for o in outs if executed(o)]
        if ran:
            means[aid] = sum(o.duration_ms for o in ran) / len(ran)
    fastest = min((m for m in means.values() if m > 0), default=0.0)
    result = []
    for aid in sorted(by_agent):
        outs = by_agent[aid]
        ran = [o for o in outs if executed(o)]
        ok = sum(o.status is TaskStatus.SUCCEEDED for o in ran)
        rate = ok / len(ran) if ran else 0.0
        mean = means.get(aid, 0.0)
        speed = 1.0 if mean <= 0 or fastest <= 0 else min(1.0, fastest / mean)
        if not ran:
            speed = 0.0
        preds = [
            (predicted[o.task_id], o.status is TaskStatus.SUCCEEDED) for o in ran if o.task_id in predicted
        ]
        cal = Calibration.of(preds) if preds else None
        result.append(
            AgentPerformance(
                agent_id=aid,
                wave=wave,
                tasks=len(ran),
                succeeded=ok,
                success_rate=rate,
                mean_duration_ms=mean,
                busy_ms=sum(o.duration_ms for o in ran),
                attempts=sum(attempts_of(o) for o in ran),
                failed_attempts=sum(failed_attempts(o) for o in ran),
                retries=sum(attempts_of(o) - 1 for o in ran),
                speed_score=speed,
                performance_score=0.6 * rate + 0.4 * speed,
                mean_predicted=cal.mean_predicted if cal else None,
                brier=cal.brier if cal else None,
                coordination_issues=_coordination_issues(outs, planned),
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

    def emit(kind: SignalType, content: dict[str, Any], confidence: float) -> None:
        signals.append(
            LearningSignal(
                signal_type=kind,
                target_phase=SIGNAL_ROUTES[kind][0],
                content=content,
                confidence=min(1.0, max(0.0, confidence)),
                generated_at=now,
                campaign_id=campaign_id,
                wave=wave,
            )
        )

    for p in preds:
        emit("prediction_validation", {"kind": "task", **p.model_dump(mode="json")}, 1.0)
    if cal.n:
        emit(
            "prediction_validation",
            {
                "kind": "calibration",
                "wave": {
                    "n": cal.n,
                    "brier": cal.brier,
                    "ece": cal.ece,
                    "bias": cal.mean_predicted - cal.observed,
                },
                "running": {"n": running.n, "brier": running.brier, "ece": running.ece},
            },
            evidence_confidence(cal.n),
        )
    for a in agents:
        emit("agent_performance", a.model_dump(mode="json"), evidence_confidence(a.tasks))
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
    _mode_signal(outcomes, emit)
    _approval_signal(outcomes, predicted, approved, emit)
    _conflict_signal(outcomes, conflicts, emit)
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


def _mode_signal(outcomes: Sequence[Outcome], emit: Emit) -> None:
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


def _approval_signal(
    outcomes: Sequence[Outcome], predicted: Mapping[str, float], approved: Collection[str], emit: Emit
) -> None:
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


def _conflict_signal(outcomes: Sequence[Outcome], conflicts: Sequence[Mapping[str, Any]], emit: Emit) -> None:
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


# -- files -------------------------------------------------------------------------------------


def signal_path(out_dir: Path, signal_type: str) -> Path:
    """Where a signal of ``signal_type`` goes: ``<out_dir>/feedback/<phase>/<file>``."""
    phase, name = SIGNAL_ROUTES[signal_type]
    return out_dir / FEEDBACK_DIR / phase / name


def write_feedback(out_dir: Path, feedback: WaveFeedback) -> list[Path]:
    """Append the wave's signals to their routed files and to ``learning_signals.jsonl``.

    ``out_dir`` is the campaign's output folder; folders are created. One
    ``model_dump_json()`` per line. Returns the files written, sorted.
    """
    grouped: dict[Path, list[str]] = {}
    all_lines = []
    for s in feedback.signals:
        line = s.model_dump_json()
        grouped.setdefault(signal_path(out_dir, s.signal_type), []).append(line)
        all_lines.append(line)
    grouped[out_dir / ALL_SIGNALS_FILE] = all_lines
    for path, lines in grouped.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
    return sorted(grouped)
