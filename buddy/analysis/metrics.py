"""The metrics of a wave and of a campaign: the records and their one-line definitions.

:class:`Metrics` defines every metric in one line; the per-agent numbers it shares with the
wave summaries (counts, executed, mean duration, wall time) are those of
:mod:`buddy.analysis.agents`. :func:`buddy.analysis.wave_metrics.compute_wave_metrics` and
:func:`buddy.analysis.campaign_metrics.campaign_metrics` compute them; the monitor turns them
into anomalies and a health score (docs/architecture.md, "Data flow").

What the fleet is judged on (:func:`judged`, :func:`fleet_failure`, :func:`unavailable`),
a prediction's verdict (:data:`DECISION_THRESHOLD`), the throughput window
(:func:`throughput_window`) and a wave's performance (:func:`performance`) are defined here
once. The source documents' metrics ``availability``, ``accuracy``, ``learning_impact``,
``tool_success_rate`` and ``execution_latency_ms`` are among them, by those names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel, Field

from buddy.analysis.calibration import Calibration
from buddy.models import Outcome, TaskStatus

#: Statuses the fleet is not judged on: the task was not the fleet's to run (a dependency
#: failed, a gate or an operator said no, it was cancelled).
NOT_JUDGED = frozenset({TaskStatus.SKIPPED, TaskStatus.DENIED, TaskStatus.CANCELLED})
#: Statuses that are a failure of the fleet (``rolled_back`` too when the attempt failed:
#: :func:`fleet_failure`).
FLEET_FAILURES = frozenset(
    {TaskStatus.FAILED, TaskStatus.TIMED_OUT, TaskStatus.LOST, TaskStatus.NEEDS_REVIEW}
)
#: The shortest throughput window, seconds: a wave that ran one task in 0.2 ms ran it at
#: 1 task/s, not 5,000 (:func:`throughput_window`).
MIN_WINDOW_S = 1.0
#: A prediction at or above this says "the task succeeds" (``accuracy``, and the verdicts
#: of :mod:`buddy.analysis.feedback`).
DECISION_THRESHOLD = 0.5
#: Error types that say no worker was there to finish the task: it died under it
#: (``WorkerLost``) or its message was revoked (``revoked``); with status ``lost`` they make a
#: task *unavailable* (:func:`unavailable`).
UNAVAILABLE_ERRORS = frozenset({"WorkerLost", "revoked"})


def judged(o: Outcome) -> bool:
    """True when the fleet is judged on the outcome: its status is not in :data:`NOT_JUDGED`."""
    return o.status not in NOT_JUDGED


def fleet_failure(o: Outcome) -> bool:
    """True when the outcome is a failure of the fleet: ``failed``, ``timed_out``, ``lost``,
    ``needs_review``, or ``rolled_back`` with an error (an attempt that failed and undid its
    partial effect; a success compensated after an abort has no error and is not one)."""
    return o.status in FLEET_FAILURES or (o.status is TaskStatus.ROLLED_BACK and o.error_type is not None)


def unavailable(o: Outcome) -> bool:
    """True when the fleet was not there to run a judged task to its end: status ``lost``, or a
    final error in :data:`UNAVAILABLE_ERRORS` (a worker died under it, its message was
    revoked). The complement of ``availability``."""
    return o.status is TaskStatus.LOST or o.error_type in UNAVAILABLE_ERRORS


def prediction_correct(predicted: float, succeeded: bool) -> bool:
    """True when the prediction's verdict (``predicted ≥`` :data:`DECISION_THRESHOLD`: "it
    succeeds") matched the result."""
    return (predicted >= DECISION_THRESHOLD) == succeeded


def performance(fleet_success: float, optimization_efficiency: float) -> float:
    """A wave's (or campaign's) performance, 0–1: ``fleet_success × optimization_efficiency``,
    the share of its judged tasks that succeeded times how close its split came to the ideal
    makespan. Both are normalized by the wave's size, so waves of different sizes compare;
    ``learning_impact`` is its change since the first wave."""
    return clip01(fleet_success) * clip01(optimization_efficiency)


def throughput_window(
    executed_n: int,
    start: datetime | None,
    end: datetime | None,
    sent_at: datetime | None = None,
    min_window_s: float = MIN_WINDOW_S,
) -> float:
    """The window a wave's throughput is measured over, seconds: from the wave's dispatch
    (``sent_at``; the first executed ``start_time`` when unknown or later) to the last
    executed ``end_time`` (``end``), and never less than ``min_window_s``; 0 when nothing
    ran (``executed_n`` 0). A pause while the wave runs is inside the window."""
    if executed_n <= 0:
        return 0.0
    begin = min((t for t in (sent_at, start) if t is not None), default=None)
    length = (end - begin).total_seconds() if begin is not None and end is not None else 0.0
    return max(length, min_window_s)


class AgentWaveMetrics(BaseModel):
    """One agent in one wave; a line of ``wave_<n>/agent_<id>/agent_metrics.jsonl``.

    - ``in_service``: the agent was among the wave's agents (False: only named by an outcome).
    - ``capable``: in service and offering a tool the wave ran (or it ran something): only
      such agents count in load balance and optimization efficiency (an agent idle because it
      does not offer the wave's tools is capability routing, not imbalance).

    - ``tasks``: outcomes attributed to the agent; ``executed``: those whose tool ran;
      ``succeeded``: executed tasks that succeeded (all three as in :mod:`buddy.analysis.agents`).
    - ``success_rate``: succeeded / executed (0–1; 0 when nothing ran).
    - ``attempt_success_rate``: (attempts − failed attempts) / attempts (0–1; 1 when nothing ran):
      transient failures that a retry repaired still count against it.
    - ``busy_s``: Σ ``duration_ms`` / 1000 over executed tasks (seconds, last attempt only).
    - ``mean_duration_ms``: busy / executed (ms; 0 when nothing ran).
    - ``utilization``: busy_s / (wave wall_s × concurrency), clipped to 0–1.
    - ``slot_s``: wave wall_s × concurrency (seconds of execution slots offered).
    - ``throughput_tps``: executed / the wave's window_s (tasks per second; for a campaign over
      Σ of the waves' window_s).
    - ``retries``: Σ (attempts − 1); ``retried``: tasks with more than one attempt;
      ``retried_succeeded``: those of them that succeeded.
    - ``predicted_n`` / ``predicted_sum`` / ``predicted_succeeded``: executed tasks with a
      prediction, the sum of their predictions, and how many of them succeeded.
    - ``latency_p95_ms`` / ``latency_p99_ms``: percentiles of ``duration_ms`` (ms).
    - ``span_s``: the agent's own busy window: from its first executed ``start_time`` to the
      latest ``start_time`` + ``duration_ms`` (seconds; 0 when nothing ran; per wave only, 0
      in a campaign's rows): with ``concurrency`` it gives the agent's service rate, waits
      between tasks included (:mod:`buddy.optimizer.scheduler`).
    - ``tool_executed`` / ``tool_mean_ms``: per tool, the executed tasks and their mean
      ``duration_ms`` on this agent (per wave only, empty in a campaign's rows).
    """

    agent_id: str
    wave: int
    concurrency: int
    in_service: bool = True
    capable: bool = True
    tasks: int = 0
    executed: int = 0
    succeeded: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    success_rate: float = 0.0
    attempt_success_rate: float = 1.0
    busy_s: float = 0.0
    mean_duration_ms: float = 0.0
    slot_s: float = 0.0
    utilization: float = 0.0
    throughput_tps: float = 0.0
    retries: int = 0
    retried: int = 0
    retried_succeeded: int = 0
    predicted_n: int = 0
    predicted_sum: float = 0.0
    predicted_succeeded: int = 0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    span_s: float = 0.0
    tool_executed: dict[str, int] = Field(default_factory=dict)
    tool_mean_ms: dict[str, float] = Field(default_factory=dict)


class ToolWaveMetrics(BaseModel):
    """One tool in one wave: executed tasks, successes, attempts and failed attempts."""

    tool: str
    executed: int = 0
    succeeded: int = 0
    attempts: int = 0
    failed_attempts: int = 0


class Metrics(BaseModel):
    """The monitor's metrics of a wave or of a campaign. Fractions are 0–1, times as named.

    Counts (:mod:`buddy.analysis.agents`): ``tasks`` (outcomes of every status),
    ``executed`` (their tool ran: skipped, denied and lost tasks did not), ``succeeded``
    (status ``succeeded``), ``by_status``.

    - ``success_rate``: succeeded / tasks (0 when there are none); skipped and denied count as
      not succeeded (the wave summaries' number).
    - ``fleet_judged``: tasks the fleet is judged on (not skipped, denied or cancelled);
      ``fleet_failures``: those that failed (:func:`fleet_failure`); ``fleet_success``:
      1 − fleet_failures / fleet_judged (1 when none is judged): the health score's success.
    - ``wall_s``: last ``end_time`` − first ``start_time`` of the executed tasks (seconds; for a
      campaign Σ of the waves').
    - ``window_s``: the throughput window (:func:`throughput_window`): from the wave's dispatch
      to its last ``end_time``, at least :data:`MIN_WINDOW_S` (seconds; 0 when nothing ran;
      for a campaign Σ of the waves').
    - ``throughput_tps``: executed / window_s (tasks per second; 0 when nothing ran).
    - ``busy_s``: Σ ``duration_ms`` / 1000 of the executed tasks (seconds; last attempt of each).
    - ``slots``: Σ concurrency of the agents in service; ``slot_s``: wall_s × slots (slot-seconds).
    - ``agent_utilization``: busy_s / slot_s = busy time / (wall × concurrency), clipped to 0–1.
    - ``load_agents``: the capable agents (:class:`AgentWaveMetrics`); ``load_balance``: 1 −
      coefficient of variation (population σ / mean) of their utilization, clipped to 0–1; 1
      with fewer than two of them or no work.
    - ``calibration``: Brier score and ECE (10 bins) of ``predicted_success`` over the executed
      tasks (:mod:`buddy.analysis.calibration`); ``brier`` and ``ece`` repeat its two numbers.
    - ``confidence``: 1 − ECE, the Phase 22 "confidence trajectory" made precise (target ≥ 0.95:
      predictions within 5 points of the observed success, averaged over the bins).
    - ``prediction_bias``: mean predicted − observed success of the predicted tasks (−1…1;
      positive: overconfident).
    - ``schedule_adherence``: share of the executed tasks with a planned entry that ran on the
      planned agent in the planned wave (1 when none is planned).
    - ``retry_rate``: Σ (attempts − 1) / Σ attempts over the executed tasks: the share of
      attempts that were retries.
    - ``latency_p50_ms`` / ``latency_p95_ms`` / ``latency_p99_ms``: percentiles of the executed
      tasks' ``duration_ms`` (ms; linear interpolation between closest ranks).
    - ``rolled_back``: executed tasks rolled back: an attempt that undid its own partial effect
      (``rolled_back`` set) or status ``rolled_back``; for a campaign counted on the final
      outcomes, so a compensation after an abort counts (as in ``execution_summary.json``).
      ``rollback_frequency``: rolled_back / executed.
    - ``conflict_rate``: (conflicts the planner reported + tasks that met ``conflict`` or
      ``lease_lost`` at run time) / tasks, clipped to 1.
    - ``live_execution_ratio``: executed tasks in mode ``live`` / executed.
    - ``approval_rate``: approvals granted / requested (1 when none was requested).
    - ``ideal_makespan_s``: the larger of executed / Σ_agents (concurrency / mean duration in s),
      the makespan of a split in proportion to each capable agent's observed capacity (an
      agent that ran nothing counts at the wave's mean duration), and the longest task (no
      split shortens it).
    - ``assigned_makespan_s``: max over capable agents of max(busy_s / concurrency, its
      longest task): the makespan the actual split implies, dispatch overhead left out.
    - ``optimization_efficiency``: ideal_makespan_s / assigned_makespan_s, clipped to 0–1 (1 when
      nothing was busy): how well the assignment matched work to capacity.
    - ``coordination_issues``: tasks whose errors include ``conflict``, ``lease_lost`` or
      ``WorkerLost``; ``upstream_failed``: tasks skipped because a dependency failed (the
      failure is counted where it happened, so they are not a coordination issue).
    - ``live_failed_unrolled``: live tasks that did not succeed and were not rolled back (an
      effect may be left behind).
    - ``live_min_predicted``: the lowest ``predicted_success`` among executed live tasks (None:
      no live task ran).
    - ``live_judged``: executed live tasks with a prediction, except those of LOW-risk tools
      without effects (:class:`~buddy.analysis.wave.TaskFacts`); ``live_drift_sum``: Σ
      |predicted − actual| over them (actual 1 if succeeded, else 0); ``live_drift``:
      live_drift_sum / live_judged (0–1; 0 when none); ``live_drift_tasks``: their ids, worst
      first, at most 20 (``unsafe_escalation``).
    - ``failure_patterns``: ``"<tool>:<error_type>"`` → failed tasks that ended with that error.

    The source documents' metrics (their names):

    - ``availability``: 1 − unavailable / fleet_judged, where ``unavailable`` counts the judged
      tasks no worker ran to their end (lost, a worker died under them, revoked:
      :func:`unavailable`) (0–1; 1 when none is judged).
    - ``accuracy``: predicted_correct / calibration.n: the share of the executed tasks with a
      prediction whose verdict (predicted ≥ 0.5 ⇔ succeeded) was right (0–1; 1 when none).
    - ``tool_success_rate``: (attempts − failed attempts) / attempts over the executed tasks'
      tool calls, summed over ``tools``: every call counts, so a retry that repaired a failure
      still counts the failed call (0–1; 1 when none ran).
    - ``execution_latency_ms``: mean ``duration_ms`` of the executed tasks = busy_s × 1000 /
      executed (ms, last attempt of each; 0 when none ran).
    - ``performance``: fleet_success × optimization_efficiency (0–1, :func:`performance`).
    - ``learning_impact``: performance − the first wave's performance (−1…1; 0 for the first
      wave; for a campaign the mean over its later waves): what the waves after the first
      gained, as the optimizer learned, on the first's assignment.
    """

    campaign_id: str = ""
    tasks: int = 0
    executed: int = 0
    succeeded: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    success_rate: float = 0.0
    fleet_judged: int = 0
    fleet_failures: int = 0
    fleet_success: float = 1.0
    wall_s: float = 0.0
    window_s: float = 0.0
    throughput_tps: float = 0.0
    busy_s: float = 0.0
    slots: int = 0
    slot_s: float = 0.0
    agent_utilization: float = 0.0
    load_agents: int = 0
    load_balance: float = 1.0
    calibration: Calibration = Field(default_factory=Calibration)
    brier: float = 0.0
    ece: float = 0.0
    confidence: float = 1.0
    prediction_bias: float = 0.0
    planned: int = 0
    on_plan: int = 0
    schedule_adherence: float = 1.0
    attempts: int = 0
    retries: int = 0
    retry_rate: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p95_ms: float = 0.0
    latency_p99_ms: float = 0.0
    rolled_back: int = 0
    rollback_frequency: float = 0.0
    conflicts: int = 0
    conflict_rate: float = 0.0
    live: int = 0
    live_execution_ratio: float = 0.0
    approvals_requested: int = 0
    approvals_granted: int = 0
    approval_rate: float = 1.0
    ideal_makespan_s: float = 0.0
    assigned_makespan_s: float = 0.0
    optimization_efficiency: float = 1.0
    coordination_issues: int = 0
    upstream_failed: int = 0
    live_failed_unrolled: int = 0
    live_min_predicted: float | None = None
    live_judged: int = 0
    live_drift_sum: float = 0.0
    live_drift: float = 0.0
    live_drift_tasks: list[str] = Field(default_factory=list)
    failure_patterns: dict[str, int] = Field(default_factory=dict)
    unavailable: int = 0
    availability: float = 1.0
    predicted_correct: int = 0
    accuracy: float = 1.0
    tool_success_rate: float = 1.0
    execution_latency_ms: float = 0.0
    performance: float = 1.0
    learning_impact: float = 0.0
    agents: dict[str, AgentWaveMetrics] = Field(default_factory=dict)
    tools: dict[str, ToolWaveMetrics] = Field(default_factory=dict)


class WaveMetrics(Metrics):
    """The metrics of one wave (a line of ``metrics.jsonl``); :class:`Metrics` defines each.

    ``running_calibration`` merges this wave's calibration with every earlier wave's;
    ``baseline_performance`` is the campaign's first wave's ``performance`` (carried from
    wave to wave, as the calibration is; None in metrics written before it existed).
    """

    wave: int
    running_calibration: Calibration = Field(default_factory=Calibration)
    baseline_performance: float | None = None


class CampaignMetrics(Metrics):
    """The metrics of a whole campaign, from its waves (:func:`campaign_metrics`).

    Sums are over waves; ``wall_s`` and ``window_s`` are Σ of the waves' (the time between
    waves, spent planning and waiting for approvals, is left out); ratios are recomputed from
    the sums; counts by status, fleet counts (``unavailable`` too) and rollbacks are over the
    final outcomes of the waves; latencies are over every executed outcome;
    ``learning_impact`` is the mean of the waves' after the first.
    """

    waves: int = 0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, linear between closest ranks
    (numpy's default, Excel's PERCENTILE.INC); 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    rank = (len(xs) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (rank - lo)


def clip01(x: float) -> float:
    """``x`` clamped to 0–1."""
    return min(1.0, max(0.0, x))


def balance(utilizations: Sequence[float]) -> float:
    """1 − population σ / mean of ``utilizations``, clipped to 0–1; 1 for < 2 values or mean 0."""
    if len(utilizations) < 2:
        return 1.0
    mean = sum(utilizations) / len(utilizations)
    if mean <= 0:
        return 1.0
    var = sum((u - mean) ** 2 for u in utilizations) / len(utilizations)
    return clip01(1.0 - math.sqrt(var) / mean)
