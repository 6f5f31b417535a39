"""Learning between waves: what the coordinator does with each wave's report (issue 5).

After wave ``n`` the :class:`Learner` takes the chord body's :class:`~buddy.analysis.wave.WaveReport`
(or computes it when the body never ran), has :mod:`buddy.outputs.analysis_files` write the
feedback and monitoring files, aborts
on ``--min-health``, and, unless ``--no-optimize``, prepares wave ``n + 1``:

1. the meta-optimizer picks a goal from the metrics so far and says why (log and report);
2. the agent tuner re-tunes each agent; what is applied is recorded with its evidence
   (``tuned_parameters.jsonl``): a larger concurrency with Celery's remote control
   (``pool_grow`` to that agent's workers); a smaller one is only logged as advice and not
   applied, because the scheduler already gives a failing or slow agent less work and a
   prefork ``pool_shrink`` just before a wave was measured to hold a task back ~3.5 s;
   batch size is the agent's tasks per message (:meth:`Learner.batch_sizes`, applied by the
   dispatcher), the confidence weight scales its tasks' confidence against the escalation
   thresholds and feeds the ``confidence`` strategy;
   retries and timeout go on each task's message (:meth:`Learner.limits`) and the worker
   applies them below the tool contract's own;
3. the adaptive scheduler assigns wave ``n + 1`` by each agent's observed service rate ×
   live capacity and its success, off degraded agents (``adjusted_schedule.jsonl``, in the
   receiving agent's folder).

Before every wave, the first included and with ``--no-optimize`` too, :meth:`Learner.prepare`
reads the capacity the workers report in their heartbeats (:meth:`Learner.use_capacity`) and
makes it each agent's concurrency: campaign.yaml's ``concurrency`` counts only for a worker
that reports none. Unless ``--no-optimize``, the first wave is then re-assigned by that
capacity when this shortens it (:meth:`~buddy.optimizer.scheduler.AdaptiveScheduler.rebalance`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime

from celery import Celery
from rich.console import Console

from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.health import HealthReport, below_min_health, health
from buddy.analysis.metrics import CampaignMetrics, WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.analysis.wave import WaveInputs, WaveReport, analyze, store_inputs, task_facts
from buddy.coordinator.fleet_view import live_capacity
from buddy.errors import CampaignAborted
from buddy.models import Outcome, ScheduleAdjustment, utcnow
from buddy.optimizer.memory import Recalled, recall, remember, seeded_parameters, seeded_scheduler
from buddy.optimizer.meta import MetaOptimizer, OptimizerDecision
from buddy.optimizer.scheduler import AdaptiveScheduler
from buddy.optimizer.tuner import AgentTuner, ParameterChange, TunedParameters, plan_pool_changes
from buddy.outputs.analysis_files import (
    write_feedback,
    write_monitoring,
    write_system_health,
    write_tuned_parameters,
)
from buddy.outputs.campaign import CampaignFiles
from buddy.outputs.writer import OutputWriter
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.state.agents import AgentInfo
from buddy.state.profiles import Profiles
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry, default_registry

log = logging.getLogger("buddy.learning")
#: The largest ``concurrency`` an :class:`~buddy.models.AgentSpec` holds (its validator's bound).
MAX_CONCURRENCY = 256
#: Seconds a ``pool_grow`` is taken as under way while the workers do not report it yet
#: (billiard starts grown processes at its ``maintain_pool``, every 5 s).
GROW_PATIENCE_S = 15.0


class Learner:
    """The feedback → monitor → optimizer loop of one campaign (module docstring)."""

    def __init__(
        self,
        plan: CampaignPlan,
        store: Store,
        app: Celery,
        out: OutputWriter,
        console: Console,
        *,
        campaign_id: str,
        optimize: bool = True,
        min_health: float | None = None,
        monitor: MonitorConfig | None = None,
        fresh: bool = False,
    ) -> None:
        self.plan = plan
        self.store = store
        self.app = app
        self.out = out
        self.console = console
        self.cid = campaign_id
        self.optimize = optimize
        self.min_health = min_health
        self.monitor = monitor or MonitorConfig()
        self.tuner = AgentTuner()
        self.tuned: dict[str, TunedParameters] = self.tuner.initial(plan.agents)
        self.scheduler = AdaptiveScheduler()  # seeded from the profiles below
        self.reports: list[WaveReport] = []
        self.decisions: list[OptimizerDecision] = []
        self.changes: list[ParameterChange] = []
        self.adjustments: list[ScheduleAdjustment] = []
        #: campaign.yaml's concurrency per agent: the capacity of a worker that reports none
        self.declared = {a.id: a.concurrency for a in plan.agents}
        #: agent → (pool size a ``pool_grow`` asked for, epoch seconds) until the workers report it
        self._grows: dict[str, tuple[int, float]] = {}
        #: agent → the live capacity last logged
        self._capacity_seen: dict[str, int] = {}
        # what earlier campaigns learned of these agents and tools (none with --fresh)
        self.fresh = fresh
        self.recalled = (
            Recalled()
            if fresh or not optimize  # --no-optimize runs as planned: nothing learned is applied
            else recall(
                Profiles(store.r), [a.id for a in plan.agents], {pt.task.tool for pt in plan.tasks.values()}
            )
        )
        self.scheduler = seeded_scheduler(self.recalled)
        self.tuned, self.seeded = seeded_parameters(self.recalled, self.tuned, self.tuner.config)
        self.changes += self.seeded

    def learned(self) -> str:
        """What the campaign knew before its first wave, and from where (report.md)."""
        if self.fresh:
            return "nothing: --fresh ignored the profiles of earlier campaigns"
        if not self.optimize:
            return "nothing applied: --no-optimize runs the plan as written"
        return self.recalled.describe()

    # -- before a wave -----------------------------------------------------------------------

    def weight(self, agent_id: str) -> float:
        """The agent's confidence weight (0–1; 1 until the tuner learned otherwise)."""
        t = self.tuned.get(agent_id)
        return t.confidence_weight if (t is not None and self.optimize) else 1.0

    def store_inputs(
        self,
        n: int,
        tasks: list[PlannedTask],
        *,
        approved: list[str],
        requested: int,
        granted: int,
        registry: ToolRegistry | None = None,
    ) -> datetime:
        """Save what the chord body needs to analyze wave ``n``, just before it is sent; returns
        the time stored, the start of the wave's throughput window (UTC). ``registry``: the campaign's tools,
        whose contracts give each task's risk and effects (``unsafe_escalation`` leaves out
        LOW-risk calls without effects); None: the process registry (:func:`default_registry`)."""
        conflicts = [
            c.model_dump(mode="json")
            for c in (self.plan.conflicts.conflicts if self.plan.conflicts else [])
            if c.wave == n
        ]
        sent_at = utcnow()
        store_inputs(
            self.store,
            self.cid,
            n,
            WaveInputs(
                planned={pt.task.task_id: (pt.agent, n) for pt in tasks},
                predicted={pt.task.task_id: pt.task.predicted_success for pt in tasks},
                agents=self.plan.agents,
                approved=approved,
                approvals_requested=requested,
                approvals_granted=granted,
                conflicts=conflicts,
                monitor=self.monitor,
                facts=task_facts(tasks, registry if registry is not None else default_registry()),
                sent_at=sent_at,
            ),
        )
        return sent_at

    def batch_sizes(self) -> dict[str, int]:
        """Tasks per message for each agent whose batch size the tuner set (the dispatcher
        applies it: :meth:`buddy.coordinator.sending.WaveSender.dispatch`); none before the
        tuner had a wave to learn from, or with ``--no-optimize``."""
        tuned = {c.agent_id for c in self.changes if c.parameter == "batch_size"}
        return {aid: t.batch_size for aid, t in self.tuned.items() if aid in tuned}

    def limits(self) -> dict[str, tuple[int | None, float | None]]:
        """Per agent whose retries or timeout the tuner set: (attempts = max retries + 1,
        timeout in seconds), each None when not tuned. The worker applies them only below the
        tool contract's own (:class:`~buddy.models.TaskSpec`)."""
        set_ = {(c.agent_id, c.parameter) for c in self.changes}
        out: dict[str, tuple[int | None, float | None]] = {}
        for aid, t in self.tuned.items():
            attempts = t.max_retries + 1 if (aid, "max_retries") in set_ else None
            timeout = t.timeout_s if (aid, "timeout_s") in set_ else None
            if attempts is not None or timeout is not None:
                out[aid] = (attempts, timeout)
        return out

    # -- after a wave ------------------------------------------------------------------------

    def after_wave(self, n: int) -> WaveReport:
        """Take wave ``n``'s report, write its files; raises :class:`CampaignAborted` when its
        health is below ``--min-health`` (after the files are written)."""
        report = analyze(self.store, self.cid, n)
        self.reports.append(report)
        write_feedback(self.out, report.feedback)
        write_monitoring(
            self.out,
            report.metrics,
            report.anomalies,
            report.health,
            [r.health for r in self.reports[:-1]],
        )
        h = report.health
        self.console.print(
            f"wave {n}: health [bold]{h.score:.0f}[/] {h.status}, {_counts(report.metrics.by_status)}, "
            f"{len(report.anomalies)} anomal{'y' if len(report.anomalies) == 1 else 'ies'}",
            highlight=False,
        )
        if below_min_health(h, self.min_health):
            raise CampaignAborted(f"min_health: wave {n} health {h.score:.1f} is below {self.min_health:g}")
        return report

    def adopt(self, n: int) -> None:
        """Take the report of a wave a resumed campaign had already finished (no files written)."""
        try:
            self.reports.append(analyze(self.store, self.cid, n))
        except LookupError:
            pass

    def prepare(self, n: int, healthy: set[str]) -> None:
        """Before wave ``n``: take the fleet's live capacity as each agent's concurrency
        (:meth:`use_capacity`, with ``--no-optimize`` too); then, unless ``--no-optimize``:
        before the first wave, re-assign it by capacity when that shortens it
        (:meth:`AdaptiveScheduler.rebalance`: unpinned tasks, capability rules kept); after
        one, choose a goal, tune agents and assign the wave by observed service rate × capacity."""
        if n not in self.plan.waves:
            return
        slots, infos = self.use_capacity()
        if not self.optimize:
            return
        if not self.reports:
            if self.recalled.agents or self.recalled.tools:
                self.console.print(f"learned before wave {n}: {self.recalled.describe()}", highlight=False)
                write_tuned_parameters(self.out, n, self.seeded)
            agents = [a for a in self.plan.agents if a.id in healthy] or self.plan.agents
            new, moves = self.scheduler.rebalance(self.plan.waves[n], agents, healthy)
            self._adopt_assignment(n, new, moves, "by the fleet's live capacity")
            return
        history = [r.metrics for r in self.reports]
        decision = MetaOptimizer(monitor=self.monitor).decide(history, wave=n)
        self.decisions.append(decision)
        self.console.print(f"optimizer, wave {n}: {decision.goal.value}: {decision.reason}", highlight=False)
        log.debug("optimizer chose %s for wave %d: %s", decision.goal.value, n, decision.reason)
        active = [a for a in self.plan.agents if a.id in healthy] or self.plan.agents
        current = self._pools_in_force(slots, infos)
        self.tuned = {  # the tuner starts from the pools the fleet runs, not from campaign.yaml
            aid: t
            if t.concurrency == current.get(aid, t.concurrency)
            else t.model_copy(update={"concurrency": current[aid]})
            for aid, t in self.tuned.items()
        }
        self.tuned, changes = self.tuner.tune(active, history, self.tuned, wave=n)
        # a grow still under way: the last wave's utilization is from before it, not evidence for another
        self.tuned, changes = _hold_grows(self.tuned, changes, set(self._grows), current)
        # a smaller pool is advice only (module docstring): not applied, so not recorded as a change
        self.tuned, changes = _advise_shrinks(self.tuned, changes, current)
        self.changes += changes
        self.store.set_agent_params({aid: t.model_dump(mode="json") for aid, t in self.tuned.items()})
        deltas = plan_pool_changes(current, self.tuned)
        self._apply_pools({aid: _per_worker(d, len(infos[aid].live_workers)) for aid, d in deltas.items()})
        self._remember_grows(deltas, current, infos)
        self._set_concurrency(slots)  # what the workers report; a grow counts once they do
        write_tuned_parameters(self.out, n, changes)
        self.scheduler.observe(self.reports[-1].metrics)
        agents = [a for a in self.plan.agents if a.id in healthy] or self.plan.agents
        new, moves = self.scheduler.assign(self.plan.waves[n], agents, healthy, goal=decision.goal)
        self.plan.agent_weights = {aid: t.confidence_weight for aid, t in self.tuned.items()}
        self._adopt_assignment(n, new, moves)

    def use_capacity(self) -> tuple[dict[str, int], dict[str, AgentInfo]]:
        """Read the agents' heartbeats (one round trip) and set each plan agent's concurrency
        to its live capacity: the slots its live workers report
        (:func:`~buddy.coordinator.fleet_view.live_capacity`; campaign.yaml's ``concurrency``
        for a worker that reports none). The scheduler, the dispatcher's batches and the
        wave's metrics (utilization, load balance) then divide work by what the fleet runs.
        Returns the capacity per agent and the heartbeats read."""
        infos = self.store.agents_info([a.id for a in self.plan.agents])
        declared = {a.id: self.declared.get(a.id, a.concurrency) for a in self.plan.agents}
        slots = live_capacity(declared, infos)
        self._set_concurrency(slots)
        return slots, infos

    def _set_concurrency(self, slots: Mapping[str, int]) -> None:
        """Plan agents' ``concurrency`` ← ``slots`` (capped at AgentSpec's 256); a change is logged."""
        out = []
        for a in self.plan.agents:
            n = min(MAX_CONCURRENCY, max(1, slots.get(a.id, a.concurrency)))
            if n != a.concurrency:
                if self._capacity_seen.get(a.id) != n:
                    log.info(
                        "agent %s: %d slot(s) in its live workers' pools (was %d)", a.id, n, a.concurrency
                    )
                self._capacity_seen[a.id] = n
                a = a.model_copy(update={"concurrency": n})
            out.append(a)
        self.plan.agents = out

    def _pools_in_force(self, slots: Mapping[str, int], infos: Mapping[str, AgentInfo]) -> dict[str, int]:
        """Per agent, the pool size the tuner starts from: the live capacity, or the size a
        ``pool_grow`` asked for until the workers report it (billiard starts grown prefork
        processes at its next ``maintain_pool``, every 5 s) or :data:`GROW_PATIENCE_S` passed
        (the grow failed: the threads pool cannot grow), so a grow is not asked twice."""
        out = dict(slots)
        now = time.time()
        for aid, (size, at) in sorted(self._grows.items()):
            if out.get(aid, 0) >= size or now - at > GROW_PATIENCE_S or aid not in infos:
                del self._grows[aid]
            else:
                out[aid] = size
        return out

    def _remember_grows(
        self, deltas: Mapping[str, int], current: Mapping[str, int], infos: Mapping[str, AgentInfo]
    ) -> None:
        now = time.time()
        for aid, d in deltas.items():
            workers = len(infos[aid].live_workers) if aid in infos else 0
            if d > 0 and workers:
                self._grows[aid] = (current[aid] + _per_worker(d, workers) * workers, now)

    def _adopt_assignment(
        self, n: int, new: list[PlannedTask], moves: list[ScheduleAdjustment], why: str = ""
    ) -> None:
        """Make ``new`` wave ``n``'s assignment; its ``moves`` go to ``adjusted_schedule.jsonl``."""
        self.plan.waves[n] = new
        for pt in new:
            self.plan.tasks[pt.task.task_id] = pt
        self.adjustments += moves
        CampaignFiles(self.out, [a.id for a in self.plan.agents]).adjustments(n, moves)
        if moves:
            how = f" {why}" if why else ""
            self.console.print(
                f"optimizer, wave {n}: moved {len(moves)} task(s){how} (adjusted_schedule.jsonl)"
            )

    def _apply_pools(self, deltas: dict[str, int]) -> None:
        """Grow agents' worker pools (Celery remote control ``pool_grow``, fire and forget)."""
        specs = {a.id: a for a in self.plan.agents}
        for aid, delta in deltas.items():
            if delta <= 0 or aid not in specs:
                continue  # shrinking is advice only (module docstring)
            workers = self.store.live_workers(aid)
            if workers:
                self.app.control.pool_grow(delta, destination=workers)
            new = max(1, specs[aid].concurrency + delta)
            self.plan.agents = [
                a if a.id != aid else a.model_copy(update={"concurrency": new}) for a in self.plan.agents
            ]
            log.info(
                "agent %s: concurrency %d -> %d (%s)", aid, specs[aid].concurrency, new, ", ".join(workers)
            )

    # -- at the end --------------------------------------------------------------------------

    def finish(self, outcomes: list[Outcome]) -> tuple[CampaignMetrics | None, HealthReport | None]:
        """Campaign-wide metrics and health, written to ``system_health.json``; the live
        executions folded into the agent and tool profiles the next campaign starts from
        (:mod:`buddy.optimizer.memory`)."""
        remember(
            Profiles(self.store.r),
            outcomes,
            {aid: t.confidence_weight for aid, t in self.tuned.items()},
            {a.id: a.concurrency for a in self.plan.agents},
        )
        if not self.reports:
            return None, None
        waves: list[WaveMetrics] = [r.metrics for r in self.reports]
        cm = campaign_metrics(waves, outcomes)
        anomalies = [a for r in self.reports for a in r.anomalies]  # every wave's, in order
        report = health(cm, anomalies, self.monitor)
        write_system_health(self.out, cm, anomalies, report, [r.health for r in self.reports])
        return cm, report


def _hold_grows(
    tuned: dict[str, TunedParameters],
    changes: list[ParameterChange],
    pending: set[str],
    current: Mapping[str, int],
) -> tuple[dict[str, TunedParameters], list[ParameterChange]]:
    """``tuned`` and ``changes`` without a concurrency increase for the agents in ``pending``
    (a ``pool_grow`` asked for earlier that their workers do not report yet): their
    concurrency stays ``current``."""
    held = {c.agent_id for c in changes if c.parameter == "concurrency" and c.agent_id in pending}
    held = {aid for aid in held if tuned[aid].concurrency > current.get(aid, tuned[aid].concurrency)}
    if not held:
        return tuned, changes
    out = {
        aid: t.model_copy(update={"concurrency": current[aid]}) if aid in held else t
        for aid, t in tuned.items()
    }
    return out, [c for c in changes if not (c.parameter == "concurrency" and c.agent_id in held)]


def _advise_shrinks(
    tuned: dict[str, TunedParameters], changes: list[ParameterChange], current: Mapping[str, int]
) -> tuple[dict[str, TunedParameters], list[ParameterChange]]:
    """``tuned`` and ``changes`` without a concurrency decrease: it is logged as advice and
    the agent keeps its ``current`` pool (``tuned_parameters.jsonl`` records what was applied)."""
    shrinks = [c for c in changes if c.parameter == "concurrency" and c.new < c.old]
    if not shrinks:
        return tuned, changes
    for c in shrinks:
        log.info("agent %s: a pool of %s advised, not applied (%s)", c.agent_id, c.new, c.reason)
    held = {c.agent_id for c in shrinks}
    out = {
        aid: t.model_copy(update={"concurrency": current.get(aid, t.concurrency)}) if aid in held else t
        for aid, t in tuned.items()
    }
    return out, [c for c in changes if c not in shrinks]


def _per_worker(delta: int, workers: int) -> int:
    """An agent's pool change split over its ``workers`` (Celery's ``pool_grow`` / ``pool_shrink``
    act per worker): ``delta / workers`` rounded, at least one step, same sign (0 stays 0)."""
    if delta == 0 or workers <= 1:
        return delta
    step = max(1, round(abs(delta) / workers))
    return step if delta > 0 else -step


def _counts(by_status: dict[str, int]) -> str:
    """``3 of 4 succeeded (1 cancelled)``: the wave's outcomes, as the summary counts them."""
    total = sum(by_status.values())
    ok = by_status.get("succeeded", 0)
    rest = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()) if s != "succeeded" and n)
    return f"{ok} of {total} succeeded" + (f" ({rest})" if rest else "")
