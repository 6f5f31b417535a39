"""Learning between waves: what the coordinator does with each wave's report (issue 5).

After wave ``n`` the :class:`Learner` takes the chord body's :class:`~buddy.analysis.wave.WaveReport`
(or computes it when the body never ran), has :mod:`buddy.outputs.analysis_files` write the
feedback and monitoring files, aborts
on ``--min-health``, and, unless ``--no-optimize``, prepares wave ``n + 1``:

1. the meta-optimizer picks a goal from the metrics so far and says why (log and report);
2. the agent tuner re-tunes each agent (``tuned_parameters.jsonl``): a larger concurrency is
   applied with Celery's remote control (``pool_grow`` to that agent's workers); a smaller one
   is recorded only, because the scheduler already gives a failing or slow agent less work and
   a prefork ``pool_shrink`` just before a wave was measured to hold a task back ~3.5 s;
   batch size sets the agent's tasks per message, the confidence weight scales its tasks'
   confidence against the escalation thresholds and feeds the ``confidence`` strategy;
   retries and timeout are recorded as advice (the tools' contracts stay in force);
3. the adaptive scheduler assigns wave ``n + 1`` from observed speed and success, off
   degraded agents (``adjusted_schedule.jsonl``, in the receiving agent's folder).
"""

from __future__ import annotations

import logging
from datetime import datetime

from celery import Celery
from rich.console import Console

from buddy.analysis.campaign_metrics import campaign_metrics
from buddy.analysis.health import HealthReport, below_min_health, health
from buddy.analysis.metrics import CampaignMetrics, WaveMetrics
from buddy.analysis.monitor import MonitorConfig
from buddy.analysis.wave import WaveInputs, WaveReport, analyze, store_inputs, task_facts
from buddy.errors import CampaignAborted
from buddy.models import Outcome, ScheduleAdjustment, utcnow
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
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry, default_registry

log = logging.getLogger("buddy.learning")


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
        self.scheduler = AdaptiveScheduler()
        self.reports: list[WaveReport] = []
        self.decisions: list[OptimizerDecision] = []
        self.changes: list[ParameterChange] = []
        self.adjustments: list[ScheduleAdjustment] = []

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
        """Before wave ``n`` (not the first): choose a goal, tune agents, assign the wave."""
        if not self.optimize or not self.reports or n not in self.plan.waves:
            return
        history = [r.metrics for r in self.reports]
        decision = MetaOptimizer(monitor=self.monitor).decide(history, wave=n)
        self.decisions.append(decision)
        self.console.print(f"optimizer, wave {n}: {decision.goal.value}: {decision.reason}", highlight=False)
        log.debug("optimizer chose %s for wave %d: %s", decision.goal.value, n, decision.reason)
        active = [a for a in self.plan.agents if a.id in healthy] or self.plan.agents
        current = {a.id: a.concurrency for a in self.plan.agents}
        self.tuned, changes = self.tuner.tune(active, history, self.tuned, wave=n)
        self.changes += changes
        self.store.set_agent_params({aid: t.model_dump(mode="json") for aid, t in self.tuned.items()})
        self._apply_pools(plan_pool_changes(current, self.tuned))
        write_tuned_parameters(self.out, n, changes)
        self.scheduler.observe(self.reports[-1].metrics)
        agents = [a for a in self.plan.agents if a.id in healthy] or self.plan.agents
        new, moves = self.scheduler.assign(self.plan.waves[n], agents, healthy, goal=decision.goal)
        self.plan.waves[n] = new
        for pt in new:
            self.plan.tasks[pt.task.task_id] = pt
        self.plan.agent_weights = {aid: t.confidence_weight for aid, t in self.tuned.items()}
        self.adjustments += moves
        CampaignFiles(self.out, [a.id for a in self.plan.agents]).adjustments(n, moves)
        if moves:
            self.console.print(f"optimizer, wave {n}: moved {len(moves)} task(s) (adjusted_schedule.jsonl)")

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
        """Campaign-wide metrics and health, written to ``system_health.json``."""
        if not self.reports:
            return None, None
        waves: list[WaveMetrics] = [r.metrics for r in self.reports]
        cm = campaign_metrics(waves, outcomes)
        anomalies = [a for r in self.reports for a in r.anomalies]  # every wave's, in order
        report = health(cm, anomalies, self.monitor)
        write_system_health(self.out, cm, anomalies, report, [r.health for r in self.reports])
        return cm, report


def _counts(by_status: dict[str, int]) -> str:
    """``3 of 4 succeeded (1 cancelled)``: the wave's outcomes, as the summary counts them."""
    total = sum(by_status.values())
    ok = by_status.get("succeeded", 0)
    rest = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()) if s != "succeeded" and n)
    return f"{ok} of {total} succeeded" + (f" ({rest})" if rest else "")
