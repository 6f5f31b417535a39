"""Properties of the health score over random waves (hypothesis): it is monotone in successes
(turning a failed task into a succeeded one never lowers it, for the wave and the campaign),
and a wave whose every task succeeded on a healthy fleet scores ≥ 90, EXCELLENT, whatever its
size, split, durations, modes and predictions (issue 14)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from buddy.analysis.anomalies import detect_anomalies
from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.health import HealthReport, health
from buddy.analysis.metrics import fleet_failure
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, AttemptError, Mode, Outcome, TaskStatus

T0 = datetime(2024, 1, 1, tzinfo=UTC)
S = TaskStatus
#: Statuses a coordinator records without a worker (the task never reached one).
NO_WORKER = (S.SKIPPED, S.LOST)
STATUSES = [
    S.SUCCEEDED,
    S.FAILED,
    S.TIMED_OUT,
    S.NEEDS_REVIEW,
    S.LOST,
    S.ROLLED_BACK,
    S.SKIPPED,
    S.DENIED,
    S.CANCELLED,
]
TOOLS = ["noop", "file.write", "shell", "http.request"]
ERRORS = ["Boom", "conflict", "lease_lost", "WorkerLost", "ConnectError"]


@dataclass
class Wave:
    outcomes: list[Outcome]
    agents: list[AgentSpec]
    predicted: dict[str, float]
    planned: dict[str, tuple[str, int]]
    harmless: set[str]


@st.composite
def outcome(draw: st.DrawFn, i: int, agents: list[str], all_succeed: bool) -> Outcome:
    status = S.SUCCEEDED if all_succeed else draw(st.sampled_from(STATUSES))
    failed = status is not S.SUCCEEDED and status not in (S.SKIPPED, S.DENIED, S.CANCELLED)
    rolled = status is S.ROLLED_BACK
    error = draw(st.sampled_from(ERRORS)) if failed or (rolled and draw(st.booleans())) else None
    if status is S.SKIPPED:
        error = "upstream_failed"
    worker = None if status in NO_WORKER else draw(st.sampled_from(["w1", "w2", None]))
    attempts = 1 if all_succeed else draw(st.integers(1, 3))
    start = draw(st.floats(0, 30, allow_nan=False))
    ms = draw(st.floats(0, 5000, allow_nan=False))
    retried = [] if all_succeed else draw(st.lists(st.sampled_from(ERRORS), max_size=attempts - 1))
    return Outcome(
        task_id=f"t{i}",
        campaign_id="c1",
        agent_id=draw(st.sampled_from(agents)),
        wave=1,
        status=status,
        mode=draw(st.sampled_from(list(Mode))),
        attempts=attempts,
        start_time=T0 + timedelta(seconds=start),
        end_time=T0 + timedelta(seconds=start, milliseconds=ms),
        duration_ms=ms,
        worker=None if status in NO_WORKER else (worker or "w1"),
        tool=draw(st.sampled_from(TOOLS)),
        error_type=error,
        errors=[AttemptError(attempt=k + 1, error_type=e, error_msg=e, at=T0) for k, e in enumerate(retried)],
        rolled_back=rolled,
    )


@st.composite
def waves(draw: st.DrawFn, all_succeed: bool = False) -> Wave:
    agents = [
        AgentSpec(id=f"a{k}", concurrency=draw(st.integers(1, 4))) for k in range(draw(st.integers(1, 4)))
    ]
    ids = [a.id for a in agents]
    n = draw(st.integers(1 if all_succeed else 0, 60))
    outs = [draw(outcome(i, ids, all_succeed)) for i in range(n)]
    predicted = {o.task_id: draw(st.floats(0, 1, allow_nan=False)) for o in outs}
    planned = {o.task_id: (o.agent_id or "", 1) for o in outs}
    if not all_succeed:  # some tasks ran off plan
        for o in outs:
            if draw(st.booleans()) and draw(st.booleans()):
                planned[o.task_id] = (draw(st.sampled_from(ids)), 1)
    harmless = {o.task_id for o in outs if draw(st.booleans())}
    return Wave(outs, agents, predicted, planned, harmless)


def scores(w: Wave, outs: list[Outcome]) -> tuple[HealthReport, HealthReport]:
    """(wave health, campaign health) of ``w`` with ``outs`` as its outcomes."""
    m = compute_wave_metrics(1, outs, w.planned, w.predicted, w.agents, harmless=w.harmless)
    anomalies = detect_anomalies(m, [])
    return health(m, anomalies), health(campaign_metrics([m], outs), anomalies)


def succeed(o: Outcome) -> Outcome:
    """The same task, its last attempt succeeding instead (same worker, times and attempts)."""
    return o.model_copy(update={"status": S.SUCCEEDED, "error_type": None, "rolled_back": False})


@settings(max_examples=150, deadline=None)
@given(waves(), st.data())
def test_turning_a_failure_into_a_success_never_lowers_the_score(w: Wave, data: st.DataObject) -> None:
    failures = [i for i, o in enumerate(w.outcomes) if fleet_failure(o)]
    if not failures:
        return
    i = data.draw(st.sampled_from(failures))
    flipped = [succeed(o) if k == i else o for k, o in enumerate(w.outcomes)]
    (wave_before, campaign_before), (wave_after, campaign_after) = scores(w, w.outcomes), scores(w, flipped)
    assert wave_after.score >= wave_before.score - 1e-9
    assert campaign_after.score >= campaign_before.score - 1e-9


@settings(max_examples=150, deadline=None)
@given(waves(all_succeed=True))
def test_all_success_on_a_healthy_fleet_is_excellent(w: Wave) -> None:
    wave_health, campaign_health = scores(w, w.outcomes)
    assert wave_health.score >= 90 and wave_health.status == "EXCELLENT"
    assert campaign_health.score >= 90 and campaign_health.status == "EXCELLENT"
