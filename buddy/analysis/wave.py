"""The feedback loop and monitor over one wave, as the chord body runs them (docs/architecture.md, data flow).

:func:`analyze` reads the wave's outcomes and the inputs the coordinator stored before it
sent the wave (:class:`WaveInputs`: where each task was planned, its predicted success, its
tool's risk and effects, the agents in service, approvals, conflicts and when the wave was
sent), then computes the summary
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

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from buddy.analysis.agents import summarize_wave
from buddy.analysis.anomalies import Anomaly, detect_anomalies
from buddy.analysis.feedback import FeedbackState, WaveFeedback, analyze_wave
from buddy.analysis.health import HealthReport, health
from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, Outcome, Risk, WaveSummary
from buddy.state.keys import PREFIX
from buddy.state.store import Store

if TYPE_CHECKING:
    from buddy.plan.model import PlannedTask
    from buddy.tools.registry import ToolRegistry


class TaskFacts(BaseModel):
    """What a task's tool contract says about its call, recorded by the coordinator (which
    has the campaign's registry) so the chord body on any worker judges the same way.

    ``risk``: the contract's risk for the task's arguments (``risk_for``); ``effects``: the
    call changes something: the tool is reversible (it records an undo), the call is not
    idempotent, or the task claims a resource for writing. A live run of a LOW-risk call
    without effects (``noop``, ``sleep``, ``flaky``, ``file.sha256``) is :attr:`harmless`;
    ``predicted``: the plan gave the task's ``predicted_success`` (the default 0.5 of a line
    without one is no prediction). ``unsafe_escalation`` judges only the predictions of tasks
    that are not harmless and were predicted (:attr:`judged`).
    """

    tool: str
    risk: Risk
    effects: bool
    predicted: bool = True

    @property
    def judged(self) -> bool:
        """Whether ``unsafe_escalation`` judges this task's prediction."""
        return self.predicted and not self.harmless

    @property
    def harmless(self) -> bool:
        """LOW risk and no effect."""
        return self.risk is Risk.LOW and not self.effects


class WaveInputs(BaseModel):
    """What the coordinator knows about a wave before it runs, for the chord body.

    ``planned``: task id → (agent, wave) as dispatched; ``predicted``: task id →
    ``predicted_success`` (0–1); ``agents``: the agents in service with their concurrency;
    ``approved``: tasks an operator (or ``--auto-approve``) approved;
    ``conflicts``: this wave's plan conflicts as JSON records; ``facts``: task id → its
    :class:`TaskFacts` (a task without them, as in inputs stored by an older version, is
    judged as if its tool could do harm); ``sent_at``: when the coordinator stored the
    inputs, just before it sent the wave (UTC; the start of the throughput window).
    """

    planned: dict[str, tuple[str, int]]
    predicted: dict[str, float]
    agents: list[AgentSpec]
    approved: list[str] = Field(default_factory=list)
    approvals_requested: int = 0
    approvals_granted: int = 0
    conflicts: list[dict[str, Any]] = Field(default_factory=list)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    facts: dict[str, TaskFacts] = Field(default_factory=dict)
    sent_at: datetime | None = None


def task_facts(tasks: Iterable[PlannedTask], registry: ToolRegistry) -> dict[str, TaskFacts]:
    """Task id → the :class:`TaskFacts` of each task whose tool ``registry`` has.

    The arguments were validated when the plan was built; when they no longer parse (the
    tool changed since), the contract's own ``risk`` and ``idempotent`` apply.
    """
    out: dict[str, TaskFacts] = {}
    for pt in tasks:
        if pt.task.tool not in registry:
            continue
        contract = registry.get(pt.task.tool)
        try:
            args = contract.parse_args(pt.task.args)
            risk, idempotent = contract.risk_for(args), contract.is_idempotent(args)
        except ValueError:  # pydantic's ValidationError too
            risk, idempotent = contract.risk, contract.idempotent
        writes = any(c.mode == "write" for c in pt.claims)
        out[pt.task.task_id] = TaskFacts(
            tool=pt.task.tool,
            risk=risk,
            effects=contract.reversible or not idempotent or writes,
            predicted="predicted_success" in pt.task.model_fields_set,
        )
    return out


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
        harmless={tid for tid, f in inputs.facts.items() if not f.judged},
        sent_at=inputs.sent_at,
    )
    anomalies = detect_anomalies(metrics, history, inputs.monitor)
    report = WaveReport(
        summary=summarize_wave(cid, n, outcomes, inputs.sent_at),
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
