"""The feedback loop and monitor over one wave, as the chord body runs them (docs/architecture.md, data flow).

:func:`analyze` reads the wave's outcomes and the inputs the coordinator stored before it
sent the wave (:class:`WaveInputs`: where each task was planned, its predicted success, the
agents in service, approvals and conflicts), then computes the summary
(:mod:`buddy.analysis.agents`), the feedback (:mod:`buddy.analysis.feedback`), the metrics
(:mod:`buddy.analysis.wave_metrics`), anomalies (:mod:`buddy.analysis.anomalies`) and health
(:mod:`buddy.analysis.health`), and stores a :class:`WaveReport`. It is idempotent: a
redelivered chord body, or the coordinator closing a wave whose body never ran, gets the
stored report back.

Redis keys (prefix ``buddy:campaign:<cid>``): ``:wave:<n>:inputs`` and ``:wave:<n>:report``
(strings, JSON), ``:feedback`` (the running :class:`~buddy.analysis.feedback.FeedbackState`)
and ``:metrics`` (list of every wave's :class:`~buddy.analysis.metrics.WaveMetrics`, oldest
first).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from buddy.analysis.agents import summarize_wave
from buddy.analysis.anomalies import Anomaly, detect_anomalies
from buddy.analysis.feedback import FeedbackState, WaveFeedback, analyze_wave
from buddy.analysis.health import HealthReport, health
from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, Outcome, WaveSummary
from buddy.state.keys import PREFIX
from buddy.state.store import Store


class WaveInputs(BaseModel):
    """What the coordinator knows about a wave before it runs, for the chord body.

    ``planned``: task id → (agent, wave) as dispatched; ``predicted``: task id →
    ``predicted_success`` (0–1); ``agents``: the agents in service with their concurrency;
    ``approved``: tasks an operator (or ``--auto-approve``) approved;
    ``conflicts``: this wave's plan conflicts as JSON records.
    """

    planned: dict[str, tuple[str, int]]
    predicted: dict[str, float]
    agents: list[AgentSpec]
    approved: list[str] = Field(default_factory=list)
    approvals_requested: int = 0
    approvals_granted: int = 0
    conflicts: list[dict[str, Any]] = Field(default_factory=list)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)


class WaveReport(BaseModel):
    """Everything the feedback loop and the monitor say about one wave."""

    summary: WaveSummary
    feedback: WaveFeedback
    metrics: WaveMetrics
    anomalies: list[Anomaly]
    health: HealthReport


def inputs_key(cid: str, n: int) -> str:
    return f"{PREFIX}campaign:{cid}:wave:{n}:inputs"


def report_key(cid: str, n: int) -> str:
    return f"{PREFIX}campaign:{cid}:wave:{n}:report"


def feedback_key(cid: str) -> str:
    return f"{PREFIX}campaign:{cid}:feedback"


def metrics_key(cid: str) -> str:
    return f"{PREFIX}campaign:{cid}:metrics"


def store_inputs(store: Store, cid: str, n: int, inputs: WaveInputs) -> None:
    """Save the wave's inputs before the wave is sent (one SET, kept as long as results)."""
    store.r.set(inputs_key(cid, n), inputs.model_dump_json(), ex=7 * 86_400)


def stored_report(store: Store, cid: str, n: int) -> WaveReport | None:
    raw = store.r.get(report_key(cid, n))
    return WaveReport.model_validate_json(raw) if raw else None


#: Earlier waves the chord body reads: anomaly rules compare with the last few waves, and the
#: last one carries the running calibration, so reading all of them would grow with every wave.
HISTORY_WAVES = 5


def metrics_history(store: Store, cid: str, last: int | None = None) -> list[WaveMetrics]:
    """Every wave's metrics, oldest first (only the ``last`` few when given)."""
    start = -last if last else 0
    return [WaveMetrics.model_validate_json(x) for x in store.r.lrange(metrics_key(cid), start, -1)]


def analyze(store: Store, cid: str, n: int) -> WaveReport:
    """The :class:`WaveReport` of wave ``n``: computed once, stored, returned again after.

    Outcomes are read for every task of the wave's inputs; tasks without one yet are left out.
    Raises :class:`LookupError` when the coordinator stored no inputs for the wave.
    """
    done = stored_report(store, cid, n)
    if done is not None:
        return done
    raw = store.r.get(inputs_key(cid, n))
    if raw is None:
        raise LookupError(f"no inputs stored for wave {n} of {cid}")
    inputs = WaveInputs.model_validate_json(raw)
    outcomes: list[Outcome] = list(store.outcomes(cid, list(inputs.planned)).values())
    state_raw = store.r.get(feedback_key(cid))
    state = FeedbackState.model_validate_json(state_raw) if state_raw else FeedbackState(campaign_id=cid)
    history = [m for m in metrics_history(store, cid, HISTORY_WAVES) if m.wave < n]
    fb = analyze_wave(
        cid,
        n,
        outcomes,
        inputs.predicted,
        inputs.planned,
        state=state,
        approved=inputs.approved,
        conflicts=inputs.conflicts,
    )
    metrics = compute_wave_metrics(
        n,
        outcomes,
        inputs.planned,
        inputs.predicted,
        inputs.agents,
        approvals_requested=inputs.approvals_requested,
        approvals_granted=inputs.approvals_granted,
        conflicts=len({t for c in inputs.conflicts for t in c.get("tasks", [])}),
        previous=history,
        campaign_id=cid,
    )
    anomalies = detect_anomalies(metrics, history, inputs.monitor)
    report = WaveReport(
        summary=summarize_wave(cid, n, outcomes),
        feedback=fb,
        metrics=metrics,
        anomalies=anomalies,
        health=health(metrics, anomalies, inputs.monitor),
    )
    # SET NX: when the body and the coordinator race, the first report wins for both
    if store.r.set(report_key(cid, n), report.model_dump_json(), nx=True, ex=7 * 86_400):
        pipe = store.r.pipeline(transaction=True)
        pipe.set(feedback_key(cid), state.absorb(fb).model_dump_json())
        pipe.rpush(metrics_key(cid), metrics.model_dump_json())
        pipe.execute()
        return report
    again = stored_report(store, cid, n)
    return again if again is not None else report
