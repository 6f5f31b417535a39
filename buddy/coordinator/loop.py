"""The campaign loop: each wave as a Celery chord, waited for, its outputs written (docs/architecture.md).

:class:`Coordinator` takes a validated :class:`~buddy.plan.model.CampaignPlan` and runs it:

1. records the campaign in Redis and writes ``campaign.json``;
2. waits (at most ``worker_wait_s``) until every agent with work has a live worker, else
   fails its tasks over or aborts, naming the queues nobody consumes
   (:class:`~buddy.coordinator.fleet_view.FleetView`);
3. per wave: tasks whose dependencies did not succeed become ``skipped`` (``upstream_failed``)
   unless their ``trigger_rule`` is ``all_done``; tasks that already have an outcome are not
   sent again; each task passes its safety gate, HIGH/CRITICAL live ones wait for approval
   (:mod:`buddy.coordinator.approvals`); the rest go out as one chord and are waited for
   (:mod:`buddy.coordinator.sending`); members with no outcome by the deadline are sent once
   more when that is safe, else end ``lost``;
4. after each wave the learner takes the wave's analysis (feedback, monitor) and prepares
   the next wave (:mod:`buddy.optimizer.learner`); the thresholds may abort the campaign;
5. writes ``execution_summary.json``, ``report.md`` and ``report.html``.

Hooks (:mod:`buddy.coordinator.hooks`) are called around each wave; time is read from an
injected :class:`~buddy.coordinator.options.Clock`.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from celery import Celery
from rich.console import Console

from buddy.analysis.agents import summarize_wave
from buddy.config import get_settings
from buddy.coordinator.approvals import ApprovalWaiter, Approver
from buddy.coordinator.finish import campaign_info, finish_campaign
from buddy.coordinator.fleet_view import FleetView
from buddy.coordinator.gating import WaveGating
from buddy.coordinator.hooks import CampaignContext, HookRunner
from buddy.coordinator.moves import TaskMoves
from buddy.coordinator.options import (
    FAILURE_STATUSES,
    CampaignOptions,
    Clock,
    SystemClock,
    new_campaign_id,
)
from buddy.coordinator.pausing import LockTimeout, PauseControl, cancel_untouched
from buddy.coordinator.result import CampaignResult
from buddy.coordinator.rollback import compensate, summaries_after
from buddy.coordinator.sending import WaveDispatch, WaveSender
from buddy.errors import CampaignAborted
from buddy.infra.logs import log_context
from buddy.models import (
    CampaignStatus,
    Mode,
    Outcome,
    RollbackEvent,
    TaskStatus,
    WaveSummary,
    agent_queue,
    utcnow,
)
from buddy.optimizer.learner import Learner
from buddy.outputs.campaign import CampaignFiles
from buddy.outputs.report_html import LatencyChart
from buddy.outputs.writer import OutputWriter
from buddy.plan.model import CampaignPlan, PlannedTask
from buddy.safety.gates import Approvals, Gate
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry


class Coordinator:
    """Runs one campaign of ``plan`` on the fleet behind ``app`` (Celery) and ``store`` (Redis).

    ``hooks``: objects with :class:`~buddy.coordinator.hooks.CampaignHooks` methods (the
    progress bar and Prometheus metrics are hooks); ``approver``: decides approvals instead
    of operators in Redis; ``clock``: what time is read from (tests inject one)."""

    def __init__(
        self,
        plan: CampaignPlan,
        store: Store,
        app: Celery,
        registry: ToolRegistry,
        options: CampaignOptions,
        *,
        console: Console | None = None,
        hooks: list[Any] | tuple[Any, ...] = (),
        approver: Approver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.plan, self.store, self.app, self.registry, self.opts = plan, store, app, registry, options
        self.console = console or Console(stderr=True)
        self.clock = clock or SystemClock()
        self.cid = options.campaign_id or new_campaign_id()
        self.out = OutputWriter(options.out_dir or options.outputs_root / self.cid)
        self.files = CampaignFiles(self.out, [a.id for a in plan.agents])
        self.hooks = HookRunner(list(hooks))
        self.ctx = CampaignContext(self.cid, plan, options, store)
        self.outcomes: dict[str, Outcome] = {}
        self.wave_summaries: list[WaveSummary] = []
        self.start_time = utcnow()
        self.approvals = Approvals(store)
        self.waiter = ApprovalWaiter(
            self.approvals, self.clock, self.hooks, timeout_s=options.approval_timeout_s, approver=approver
        )
        self.moves = TaskMoves(self.cid, list(plan.tasks), options.mode)
        self.aborted_wave: int | None = None
        self.rollbacks: list[RollbackEvent] = []
        self.preexisting: set[str] = set()  # outcomes a resumed campaign already had
        self.done_before: set[int] = set()  # waves a resumed campaign had finished
        self.latency: LatencyChart | None = None  # report.html's latency chart, drawn early
        self.prior_outcomes = True  # outcomes stored before this run (set in _begin)
        self.fleet = FleetView(plan, store, self.clock, self.console)
        self.pausing = PauseControl(
            self.ctx,
            self.hooks,
            self.clock,
            self.console,
            lock_timeout_s=options.lock_timeout_s,
            auto_lock=options.auto_lock,
        )
        self.gating = WaveGating(self.ctx, registry, self.moves, self.waiter, self.console)
        self.sender = WaveSender(
            self.ctx,
            app,
            registry,
            self.fleet,
            self.hooks,
            self.clock,
            self.console,
            get_settings(),
            pause=self.pausing.hold,
        )
        self.dispatch: WaveDispatch | None = None  # the wave's last dispatch
        self.sent_at: datetime | None = None  # when the current wave was sent (throughput window)
        self.learner = Learner(
            plan,
            store,
            app,
            self.out,
            self.console,
            campaign_id=self.cid,
            optimize=options.optimize,
            min_health=options.min_health,
            monitor=options.monitor,
            fresh=options.fresh,
        )

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> CampaignResult:
        """Run every wave; returns the result (its summary is ``execution_summary.json``).
        An abort (a threshold, ``buddy abort``, no worker) or Ctrl-C ends the campaign with
        that status, never with an exception; infrastructure faults (Redis) raise."""
        with log_context(campaign_id=self.cid):
            self._begin()
            abort_reason: str | None = None
            status: CampaignStatus = "running"
            try:
                waves = self.plan.wave_numbers()
                self.pausing.hold(waves[0] if waves else None)  # a live campaign started while locked
                self.fleet.wait_for_workers(self.opts.worker_wait_s)
                for n in waves:
                    self._run_wave(n)
            except CampaignAborted as e:
                abort_reason, status = e.reason, "aborted"
                self.console.print(f"[red]campaign aborted:[/] {e.reason}")
                if isinstance(e, LockTimeout):
                    cancel_untouched(self.store, self.cid, self.plan, self.moves, e.reason)
                    self._flush_transitions()
                self.outcomes.update(self.store.outcomes(self.cid))  # also the unfinished wave's
                if self.opts.rollback_on_abort:
                    self._compensate()
            except KeyboardInterrupt:
                abort_reason, status = "interrupted by the operator (Ctrl-C)", "interrupted"
                self.console.print("[yellow]interrupted[/]: outputs hold what finished so far")
            return finish_campaign(self, status, abort_reason)

    def _begin(self) -> None:
        info = campaign_info(self)
        self.files.begin(None if self.opts.resume else info, self.plan.conflicts)
        # a new campaign id has no outcomes: no need to look for them before every wave
        self.prior_outcomes = self.opts.resume or self.store.has_outcomes(self.cid)
        if self.opts.resume:
            self._resume_state()
            self.store.update_campaign(self.cid, status="running", resumed_at=utcnow().isoformat())
            self.store.r.hdel(self.store.keys.campaign(self.cid), "abort_requested")
        else:
            self.store.create_campaign(
                self.cid,
                {
                    "status": "running",
                    "plan_digest": self.plan.digest,
                    "plan_path": str(self.plan.path),
                    "mode": self.opts.mode.value,
                    "strategy": self.plan.strategy.value,
                    "waves": str(len(self.plan.waves)),
                    "tasks": str(len(self.plan.tasks)),
                    "out_dir": str(self.out.root),
                    "config": info.model_dump_json(),
                    "options": self.opts.model_dump_json(exclude={"resume", "progress", "notify"}),
                },
            )
            for tid in self.plan.tasks:
                self.moves.move(tid, TaskStatus.VALIDATED, "plan validated")
        self.store.event(self.cid, "campaign_started", tasks=len(self.plan.tasks), mode=self.opts.mode.value)
        self.console.print(
            f"campaign [bold]{self.cid}[/]: {len(self.plan.tasks)} tasks in {len(self.plan.waves)} waves "
            f"on {len(self.plan.agents)} agents, mode [bold]{self.opts.mode.value}[/]"
        )
        self.hooks.emit("before_campaign", self.ctx)

    def _resume_state(self) -> None:
        """A resumed campaign: take the outcomes already in Redis as final, follow their states,
        and rebuild the tool log from them (later waves append as usual)."""
        self.outcomes = self.store.outcomes(self.cid)
        self.preexisting = set(self.outcomes)
        self.done_before = {
            n for n, pts in self.plan.waves.items() if all(p.task.task_id in self.outcomes for p in pts)
        }
        for tid in self.plan.tasks:
            o = self.outcomes.get(tid)
            self.moves.follow(tid, o.status if o is not None else TaskStatus.VALIDATED)
        self.store.pop_transitions_raw(self.cid)  # written by the coordinator that died, or lost with it
        self.files.rewrite_tool_log(self.outcomes.values())
        self.console.print(
            f"resuming {self.cid}: {len(self.preexisting)} of {len(self.plan.tasks)} tasks "
            "already have an outcome"
        )

    def _run_wave(self, n: int) -> None:
        self.pausing.hold(n)
        if n in self.done_before:
            self.learner.adopt(n)  # a resumed campaign's finished wave: its report, not its files again
        else:
            self.learner.prepare(n, self.fleet.healthy(fresh=True))  # the optimizer assigns this wave
        self.ctx.wave, self.ctx.wave_tasks, self.ctx.wave_outcomes = n, len(self.plan.waves[n]), []
        self.hooks.emit("before_wave", self.ctx)
        ids = [t.task.task_id for t in self.plan.waves[n]]
        if self.prior_outcomes:  # resume: never re-run a final outcome
            self.outcomes.update(self.store.outcomes(self.cid, ids))
        pre, gates = self.gating.gate(
            n, self.outcomes, {a.id: self.learner.weight(a.id) for a in self.plan.agents}
        )
        to_send: dict[str, list[PlannedTask]] = defaultdict(list)
        closed = {o.task_id for o in pre}
        for pt in self.plan.waves[n]:
            if pt.task.task_id in gates and pt.task.task_id not in closed:
                to_send[pt.agent].append(pt)
        to_send = self._failover(n, to_send)
        for agent, pts in to_send.items():
            for pt in pts:
                tid = pt.task.task_id
                self.moves.move(
                    tid, TaskStatus.QUEUED, f"wave {n} on {agent_queue(agent)}", gates[tid].reason
                )
        tasks = self.plan.waves[n]
        denied = {o.task_id for o in pre if o.status is TaskStatus.DENIED}
        approved = [t for t, g in gates.items() if g.needs_approval and t not in denied]
        requested = sum(1 for g in gates.values() if g.needs_approval)
        self.sent_at = self.learner.store_inputs(
            n, tasks, approved=approved, requested=requested, granted=len(approved), registry=self.registry
        )
        sent = sum(len(v) for v in to_send.values())
        self.store.start_wave(self.cid, n, dispatched=sent)
        if pre:
            self.store.record_outcomes(pre)
        self.sender.limits = self.learner.limits()
        self.dispatch = self.sender.dispatch(n, to_send, gates, self.learner.batch_sizes()) if sent else None
        self.files.assignments(n, tasks, gates, self.opts.mode, self.plan.strategy)  # while the workers start
        if self.dispatch is not None:
            self._flush_transitions(workers=False)  # likewise: this wave's moves so far are ours
            missing = self.sender.wait(n, self.dispatch)
            if missing:
                self._close_lost(n, missing, gates)
        self.gating.reuse_outcomes(tasks, self.outcomes)
        self._close_wave(n, ids)

    def _close_wave(self, n: int, ids: list[str]) -> None:
        """Read the wave's final outcomes (what the wave's close read is not read again), write
        its files, take its analysis, call the hooks and check the thresholds."""
        have = self.dispatch.raw if self.dispatch is not None else {}
        raw = have | self.store.outcomes_raw(self.cid, [i for i in ids if i not in have])
        got = {t: Outcome.model_validate_json(v) for t, v in raw.items()}
        self.outcomes.update(got)
        wave_outcomes = [got[i] for i in ids if i in got]
        summary = summarize_wave(self.cid, n, wave_outcomes, self.sent_at)
        self.wave_summaries.append(summary)
        self.files.wave(
            n, wave_outcomes, raw, [o for o in wave_outcomes if o.task_id not in self.preexisting]
        )
        self._flush_transitions()
        for o in wave_outcomes:  # the workers moved these; follow them so later moves stay legal
            self.moves.follow(o.task_id, o.status)
        self.store.event(self.cid, "wave_finished", wave=n, by_status=summary.counts.by_status)
        report = None
        failed = sum(1 for o in wave_outcomes if o.status in FAILURE_STATUSES)
        self.ctx.wave_outcomes, self.ctx.failures = wave_outcomes, self.ctx.failures + failed
        try:
            if n not in self.done_before:
                if n == self.plan.wave_numbers()[-1]:
                    # report.html's latency chart needs only the outcomes: draw it while the body analyzes
                    self.latency = LatencyChart.of(list(self.outcomes.values()))
                self.sender.await_body(n, self.dispatch)
                report = self.learner.after_wave(n)  # raises CampaignAborted below min_health
                self.pausing.auto_lock(n, report)
        finally:
            self.dispatch = None
            self.hooks.emit("after_wave", self.ctx, report)
        self._check_thresholds(n, failed, len(wave_outcomes))

    def _failover(self, n: int, to_send: dict[str, list[PlannedTask]]) -> dict[str, list[PlannedTask]]:
        out, moves = self.fleet.failover(n, to_send)
        if moves:
            self.files.adjustments(n, moves)
            self.console.print(
                f"wave {n}: moved {len(moves)} task(s) off unhealthy agents (adjusted_schedule.jsonl)"
            )
            self.store.event(self.cid, "failover", wave=n, moved=len(moves))
        return out

    def _compensate(self) -> None:
        """``rollback_on_abort``: undo the succeeded reversible tasks of the aborted wave
        (``rollback_scope`` wave) or of the campaign, newest first."""
        wave = self.aborted_wave if self.opts.rollback_scope == "wave" else None
        if self.opts.rollback_scope == "wave" and wave is None:
            return  # aborted before any wave finished: nothing ran
        self.console.print(
            f"rolling back the succeeded reversible tasks of {f'wave {wave}' if wave else 'the campaign'}"
        )
        outcomes = self.store.outcomes(self.cid)
        self.rollbacks = compensate(
            self.app, self.store, self.cid, outcomes.values(), self.registry, wave=wave
        )
        self.outcomes.update(self.store.outcomes(self.cid, [e.task_id for e in self.rollbacks]))
        changed = self.files.rollbacks(self.rollbacks, self.outcomes)  # the wave files say so too
        self.wave_summaries = summaries_after(self.wave_summaries, self.outcomes, changed)
        self._flush_transitions()
        done = sum(1 for e in self.rollbacks if e.status == "rolled_back")
        self.console.print(f"rolled back {done} task(s); see {OutputWriter.ROLLBACKS}")

    def _check_thresholds(self, n: int, failed: int, total: int) -> None:
        """Abort when the wave's failures are *more than* ``max_fail_percentage`` of its tasks, or
        the campaign's failures are more than ``max_failures`` (:data:`FAILURE_STATUSES`)."""
        p = self.opts.max_fail_percentage
        if p is not None and total and failed * 100.0 / total > p:
            self.aborted_wave = n
            raise CampaignAborted(
                f"max_fail_percentage: {failed} of {total} tasks of wave {n} "
                f"({failed * 100.0 / total:.0f}%) failed, more than {p:g}%"
            )
        m = self.opts.max_failures
        if m is not None and self.ctx.failures > m:
            self.aborted_wave = n
            raise CampaignAborted(f"max_failures: {self.ctx.failures} tasks failed so far, more than {m}")

    def _close_lost(self, n: int, missing: set[str], gates: dict[str, Gate]) -> None:
        """Members with no outcome past the deadline: send the idempotent ones (and any that ran
        mock/dry_run) once more, to healthy agents; the rest, and any still missing, end ``lost``."""
        again: dict[str, list[PlannedTask]] = defaultdict(list)
        lost: list[PlannedTask] = []
        for tid in sorted(missing):
            pt = self.plan.tasks[tid]
            contract = self.registry.get(pt.task.tool)
            safe = gates[tid].mode is not Mode.LIVE or contract.is_idempotent(
                contract.parse_args(pt.task.args)
            )
            (again[pt.agent].append(pt) if safe else lost.append(pt))
        if again:
            self.fleet.agents(fresh=True)  # the deadline passed: agents may have died since
            for pts in again.values():
                for pt in pts:
                    self.moves.move(pt.task.task_id, TaskStatus.LOST, "no outcome by the wave deadline")
                    self.moves.move(
                        pt.task.task_id, TaskStatus.QUEUED, "sent once more: the tool is idempotent"
                    )
            self.dispatch = self.sender.dispatch(n, self._failover(n, again), gates)
            still = self.sender.wait(n, self.dispatch)
            lost += [self.plan.tasks[t] for t in sorted(still)]
        if lost:
            self.store.record_outcomes(
                [
                    self.moves.closed(pt, TaskStatus.LOST, "lost", "no outcome by the wave deadline")
                    for pt in lost
                ]
            )

    def _flush_transitions(self, workers: bool = True) -> None:
        """Append the coordinator's and (``workers``) the workers' transitions so far to
        ``state_transitions.jsonl``. ``workers=False``: the coordinator's alone, right after a
        dispatch; the file stays in time order because every move the coordinator made for a
        wave precedes its dispatch, and so every worker's move in it."""
        self.files.transitions(self.moves.take(), self.store.pop_transitions_raw(self.cid) if workers else [])
