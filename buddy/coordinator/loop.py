"""The campaign loop: each wave as a Celery chord, waited for, its outputs written (docs/architecture.md).

:class:`Coordinator` takes a validated :class:`~buddy.plan.CampaignPlan` and runs it:

1. records the campaign in Redis and writes ``campaign.json``;
2. waits (at most ``worker_wait_s``) until every agent with work has a live worker,
   else aborts, naming the queues nobody consumes, instead of hanging;
3. per wave: tasks whose dependencies did not succeed become ``skipped``
   (``upstream_failed``) unless their ``trigger_rule`` is ``all_done``; tasks that already
   have an outcome are not sent again; the rest go out as one chord: a header of
   ``buddy.execute_batch`` messages on ``buddy.agent.<id>`` (micro-batches of one agent's
   tasks) and the body ``buddy.wave_complete`` on ``buddy.coordinator``;
4. waits (BLPOP on the wave's ``:done`` list, no result polling) until the outcome write
   that completes the wave, or the body's summary, wakes it, showing done / failed /
   running on a progress bar; writes the wave's outputs while the body analyzes the wave,
   then takes the body's report (:meth:`Coordinator._await_body`);
5. writes ``execution_summary.json`` and ``report.md``.

Exit codes: 0 all succeeded, 1 finished with any other status, 3 aborted, 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
import uuid
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from celery import Celery, chord
from pydantic import BaseModel, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from buddy.analysis.monitor import HealthReport, summarize_wave
from buddy.config import get_settings
from buddy.coordinator.dispatch import attempt_worst_s, batch_size, slices, wave_deadline_s
from buddy.coordinator.rollback import compensate
from buddy.coordinator.stalls import Sent, StallWatch
from buddy.errors import CampaignAborted
from buddy.infra.logs import log_context
from buddy.infra.prometheus import CampaignMetrics, error_budget
from buddy.infra.transport import EXECUTE_TASK, WAVE_COMPLETE_TASK
from buddy.models import (
    COORDINATOR_QUEUE,
    AgentAssignment,
    AgentSummary,
    CampaignInfo,
    CampaignStatus,
    ExecutionSummary,
    Mode,
    Outcome,
    Risk,
    RollbackEvent,
    ScheduleAdjustment,
    StatusCounts,
    TaskSpec,
    TaskStatus,
    WaveSummary,
    agent_queue,
    utcnow,
)
from buddy.optimizer.learner import Learner
from buddy.optimizer.tuning import optimizer_markdown
from buddy.outputs.report_html import LatencyChart, render_html
from buddy.outputs.report_md import ReportContext, render_report
from buddy.outputs.writer import OutputWriter, tool_log_entries
from buddy.plan.build import CampaignPlan, PlannedTask
from buddy.safety.gates import Approvals, EscalationPolicy, Gate, escalate
from buddy.state.claims import Claims
from buddy.state.lifecycle import TaskLifecycle, Transition
from buddy.state.store import AgentInfo, Store
from buddy.tools.registry import ToolRegistry

EXIT_OK, EXIT_FAILURES, EXIT_INVALID, EXIT_ABORTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


#: Statuses that count against ``--max-fail-percentage`` and ``--max-failures``: the task's
#: effect failed, was undone after failing, or is unknown.
FAILURE_STATUSES = frozenset(
    {
        TaskStatus.FAILED,
        TaskStatus.TIMED_OUT,
        TaskStatus.NEEDS_REVIEW,
        TaskStatus.ROLLED_BACK,
        TaskStatus.LOST,
    }
)


def new_campaign_id(now: datetime | None = None) -> str:
    """``c-YYYYmmddTHHMMSS-xxxxxx`` (UTC time and 6 random hex digits)."""
    now = now or utcnow()
    return f"c-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class CampaignOptions(BaseModel):
    """How one campaign runs (stored in Redis so ``buddy resume`` runs it the same way).

    Seconds for every ``*_s``. ``wave_timeout_s`` overrides the computed wave deadline.
    """

    mode: Mode = Mode.MOCK
    workdir: Path = Field(default_factory=Path.cwd)
    out_dir: Path | None = None
    outputs_root: Path = Path("outputs")
    batch_size: int | None = None
    worker_wait_s: float = 10.0
    progress: bool = True
    campaign_id: str | None = None
    redis_display: str = ""
    embedded: bool = False
    schedule_path: Path | None = None
    config_path: Path | None = None
    escalation: EscalationPolicy = Field(default_factory=EscalationPolicy)
    approval_timeout_s: float = 600.0
    max_fail_percentage: float | None = None
    max_failures: int | None = None
    rollback_on_abort: bool = False
    rollback_scope: str = "wave"
    wave_timeout_s: float | None = None
    optimize: bool = True
    min_health: float | None = None
    resume: bool = False


#: Seconds the coordinator waits, once a wave's members have all reported, for the chord
#: body's analysis before it analyzes the wave itself (a revoked member or a lost chord
#: counter keeps Celery from running the body).
BODY_GRACE_S = 2.0


@dataclasses.dataclass
class _Dispatch:
    """One dispatch of a wave: its token, chord id, the sent task ids, the wave's ``done``
    counter before it, its deadline in seconds, whether the chord body reported or will
    not run (the chord failed, or the wave closed at its deadline), the outcomes (stored
    JSON) read when the wave closed, and where each task went (for :mod:`buddy.stalls`)."""

    token: str
    chord_id: str
    ids: list[str]
    baseline: int
    deadline_s: float
    reported: bool = False
    failed: bool = False
    raw: dict[str, bytes] = dataclasses.field(default_factory=dict)
    sent: dict[str, Sent] = dataclasses.field(default_factory=dict)  # task → its message (stalls)


class Coordinator:
    """Runs one campaign of ``plan`` on the fleet behind ``app`` and ``store``."""

    def __init__(
        self,
        plan: CampaignPlan,
        store: Store,
        app: Celery,
        registry: ToolRegistry,
        options: CampaignOptions,
        console: Console | None = None,
        metrics: CampaignMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.plan = plan
        self.store = store
        self.app = app
        self.registry = registry
        self.opts = options
        self.console = console or Console(stderr=True)
        self.cid = options.campaign_id or new_campaign_id()
        self.out = OutputWriter(options.out_dir or options.outputs_root / self.cid)
        self.outcomes: dict[str, Outcome] = {}
        self.wave_summaries: list[WaveSummary] = []
        self.start_time = utcnow()
        self.approvals = Approvals(store)
        self.lifecycle = TaskLifecycle(self.cid, list(plan.tasks))
        self.transitions: list[Transition] = []
        self.failures = 0
        self.aborted_wave: int | None = None
        self.rollbacks: list[RollbackEvent] = []
        self.preexisting: set[str] = set()  # outcomes a resumed campaign already had
        self.done_before: set[int] = set()  # waves a resumed campaign had finished
        self._agents_cache: dict[str, AgentInfo] | None = None
        self.dispatch: _Dispatch | None = None  # the wave's last dispatch
        self.latency: LatencyChart | None = None  # report.html's latency chart, drawn early
        self.prior_outcomes = True  # outcomes stored before this run (set in _begin)
        self.settings = get_settings()
        broker = self.settings.broker_url
        self.stalls = StallWatch(
            Claims(store.r),
            stale_s=store.stale_s,
            redis_broker=broker is None or broker.startswith(("redis", "rediss", "unix")),
        )
        self.learner = Learner(
            plan,
            store,
            app,
            self.out,
            self.console,
            campaign_id=self.cid,
            optimize=options.optimize,
            min_health=options.min_health,
        )

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> ExecutionSummary:
        """Run every wave; returns the summary (also written to ``execution_summary.json``)."""
        with log_context(campaign_id=self.cid):
            return self._run()

    def _run(self) -> ExecutionSummary:
        self._begin()
        abort_reason: str | None = None
        status: CampaignStatus = "running"
        progress = self._progress()
        try:
            with progress:
                self._wait_for_workers()
                for n in self.plan.wave_numbers():
                    self._run_wave(n, progress)
        except CampaignAborted as e:
            abort_reason, status = e.reason, "aborted"
            self.console.print(f"[red]campaign aborted:[/] {e.reason}")
            if self.opts.rollback_on_abort:
                self._compensate()
        except KeyboardInterrupt:
            abort_reason, status = "interrupted by the operator (Ctrl-C)", "interrupted"
            self.console.print("[yellow]interrupted[/]: outputs hold what finished so far")
        return self._finish(status, abort_reason)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]wave {task.fields[wave]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed [red]{task.fields[failed]}[/] running [cyan]{task.fields[running]}[/]"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.opts.progress,
        )

    def _begin(self) -> None:
        self.out.create()
        info = CampaignInfo(
            campaign_id=self.cid,
            plan_path=str(self.plan.path),
            plan_digest=self.plan.digest,
            schedule_path=str(self.opts.schedule_path) if self.opts.schedule_path else None,
            config_path=str(self.opts.config_path) if self.opts.config_path else None,
            mode=self.opts.mode,
            strategy=self.plan.strategy,
            agents=self.plan.agents,
            workdir=str(self.opts.workdir),
            tasks=len(self.plan.tasks),
            waves=len(self.plan.waves),
            created_at=self.start_time,
            redis=self.opts.redis_display,
            embedded=self.opts.embedded,
            versions=_versions(),
        )
        fields = {
            "status": "running",
            "plan_digest": self.plan.digest,
            "plan_path": str(self.plan.path),
            "mode": self.opts.mode.value,
            "strategy": self.plan.strategy.value,
            "waves": str(len(self.plan.waves)),
            "tasks": str(len(self.plan.tasks)),
            "out_dir": str(self.out.root),
            "config": info.model_dump_json(),
            "options": self.opts.model_dump_json(exclude={"resume", "progress"}),
        }
        if self.plan.conflicts is not None:
            self.out.write_json(OutputWriter.CONFLICTS, self.plan.conflicts)
        # a new campaign id has no outcomes: no need to look for them before every wave
        self.prior_outcomes = self.opts.resume or self.store.has_outcomes(self.cid)
        if self.opts.resume:
            self._resume_state()
            self.store.update_campaign(self.cid, status="running", resumed_at=utcnow().isoformat())
            self.store.r.hdel(self.store.keys.campaign(self.cid), "abort_requested")
        else:
            self.out.write_json(OutputWriter.CAMPAIGN, info)
            self.store.create_campaign(self.cid, fields)
            for tid in self.plan.tasks:
                self._move(tid, TaskStatus.VALIDATED, "plan validated")
        if self.metrics is not None:
            self.metrics.set_campaign(self.cid, len(self.plan.tasks), self.opts.mode.value)
        self.store.event(self.cid, "campaign_started", tasks=len(self.plan.tasks), mode=self.opts.mode.value)
        self.console.print(
            f"campaign [bold]{self.cid}[/]: {len(self.plan.tasks)} tasks in {len(self.plan.waves)} waves "
            f"on {len(self.plan.agents)} agents, mode [bold]{self.opts.mode.value}[/]"
        )

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
            self.lifecycle.state[tid] = o.status if o is not None else TaskStatus.VALIDATED
        self.store.pop_transitions_raw(self.cid)  # written by the coordinator that died, or lost with it
        log = self.out.root / OutputWriter.TOOL_LOG
        ordered = sorted(self.outcomes.values(), key=lambda o: (o.wave, o.task_id))
        self.out.write_jsonl(log, (e for o in ordered for e in tool_log_entries(o)))
        done = len(self.preexisting)
        self.console.print(
            f"resuming {self.cid}: {done} of {len(self.plan.tasks)} tasks already have an outcome"
        )

    def _agents_with_work(self) -> list[str]:
        return sorted({t.agent for t in self.plan.tasks.values()})

    def _missing_workers(self, agents: list[str]) -> list[str]:
        return [a for a in agents if not self.store.live_workers(a)]

    def _wait_for_workers(self) -> None:
        """Wait up to ``worker_wait_s`` for a live worker on every agent with work. Agents still
        without one are reported and their tasks fail over; with no live agent at all, abort."""
        agents = self._agents_with_work()
        deadline = time.monotonic() + self.opts.worker_wait_s
        missing = self._missing_workers(agents)
        while missing and time.monotonic() < deadline:
            time.sleep(0.2)
            missing = self._missing_workers(agents)
        if not missing:
            return
        if not self._healthy_agents(fresh=True):
            raise CampaignAborted(_no_worker_message(missing, self.opts.worker_wait_s))
        self.console.print(
            f"[yellow]warning:[/] {_no_worker_message(missing, self.opts.worker_wait_s)}; "
            "their tasks go to agents that have workers",
            highlight=False,
        )

    def _agents_now(self, fresh: bool = False) -> dict[str, AgentInfo]:
        """Every agent's state, read once per wave in one round trip (``fresh`` reads again)."""
        if fresh or self._agents_cache is None:
            self._agents_cache = self.store.agents_info([a.id for a in self.plan.agents])
        return self._agents_cache

    def _healthy_agents(self, fresh: bool = False) -> set[str]:
        """Agents with a live worker whose workers do not report them degraded."""
        return {
            aid
            for aid, info in self._agents_now(fresh).items()
            if info.live_workers and info.status != "degraded"
        }

    def _failover(self, n: int, to_send: dict[str, list[PlannedTask]]) -> dict[str, list[PlannedTask]]:
        """Move tasks off agents with no live worker (or degraded) to healthy agents that offer
        the tool, least loaded first; each move is a line of ``adjusted_schedule.jsonl``."""
        healthy = self._healthy_agents()
        if all(a in healthy for a in to_send):
            return to_send
        specs = {a.id: a for a in self.plan.agents}
        load = {a: len(to_send.get(a, [])) / specs[a].concurrency for a in healthy}
        out: dict[str, list[PlannedTask]] = defaultdict(list)
        moves: list[ScheduleAdjustment] = []
        for agent, pts in sorted(to_send.items()):
            if agent in healthy:
                out[agent].extend(pts)
                continue
            known = self._agents_now().get(agent)
            why = "marked degraded" if known is not None and known.live_workers else "no live worker"
            for pt in pts:
                candidates = sorted(
                    (a for a in healthy if specs[a].offers(pt.task.tool)), key=lambda a: (load[a], a)
                )
                if not candidates:
                    raise CampaignAborted(
                        f"wave {n}: agent {agent} has {why} and no healthy agent offers {pt.task.tool} "
                        f"(task {pt.task.task_id})"
                    )
                to = candidates[0]
                load[to] += 1 / specs[to].concurrency
                moved = dataclasses.replace(pt, agent=to)
                self.plan.tasks[pt.task.task_id] = moved
                out[to].append(moved)
                moves.append(
                    ScheduleAdjustment(
                        task_id=pt.task.task_id,
                        wave=n,
                        from_agent=agent,
                        to_agent=to,
                        reason=f"agent {agent} has {why}",
                    )
                )
        self.plan.waves[n] = [self.plan.tasks[pt.task.task_id] for pt in self.plan.waves[n]]
        by_to: dict[str, list[ScheduleAdjustment]] = defaultdict(list)
        for m in moves:
            by_to[m.to_agent].append(m)
        for to, rows in by_to.items():
            self.out.write_jsonl(self.out.agent_dir(n, to) / OutputWriter.ADJUSTED, rows, append=True)
        if moves:
            self.console.print(
                f"wave {n}: moved {len(moves)} task(s) off unhealthy agents (adjusted_schedule.jsonl)"
            )
            self.store.event(self.cid, "failover", wave=n, moved=len(moves))
        return out

    def _run_wave(self, n: int, progress: Progress) -> None:
        if n in self.done_before:
            self.learner.adopt(n)  # a resumed campaign's finished wave: its report, not its files again
        else:
            self.learner.prepare(n, self._healthy_agents(fresh=True))  # the optimizer assigns this wave
        tasks = self.plan.waves[n]
        ids = [t.task.task_id for t in tasks]
        if self.metrics is not None:
            self.metrics.set_current_wave(n)
        if self.prior_outcomes:  # resume: never re-run a final outcome
            self.outcomes.update(self.store.outcomes(self.cid, ids))
        lock = self.store.lock_reason()
        if lock:
            self.console.print(f"[yellow]system locked[/] ({lock}): wave {n} runs mock")
        pre: list[Outcome] = []  # outcomes the coordinator decides: skipped, denied
        gates: dict[str, Gate] = {}
        waiting: list[PlannedTask] = []
        for pt in tasks:
            tid = pt.task.task_id
            if tid in self.outcomes:
                continue
            if tid in self.plan.skip:
                pre.append(self._closed(pt, TaskStatus.SKIPPED, "conflict", self.plan.skip[tid]))
                continue
            if tid in self.plan.reuse:
                continue  # takes its twin's outcome once the twin has one (below)
            reason = self._upstream_failure(pt)
            if reason is not None:
                pre.append(self._closed(pt, TaskStatus.SKIPPED, "upstream_failed", reason))
                continue
            risk = self._risk(pt)
            confidence = pt.task.confidence * self.learner.weight(pt.agent)  # the agent's calibration
            gate = escalate(self.opts.mode, risk, confidence, self.opts.escalation, locked=lock)
            gates[tid] = gate
            if gate.needs_approval:
                self._move(tid, TaskStatus.AWAITING_APPROVAL, f"{risk.value} task would run live")
                if self.opts.escalation.auto_approves(risk):
                    self.approvals.request(self.cid, [self._approval_item(pt, risk)])
                    self.approvals.decide(
                        self.cid, [tid], "approved", by="auto-approve", reason=f"--auto-approve {risk.value}"
                    )
                    self._move(
                        tid, TaskStatus.APPROVED, f"--auto-approve {self.opts.escalation.auto_approve}"
                    )
                else:
                    waiting.append(pt)
        requested = sum(1 for g in gates.values() if g.needs_approval)
        if waiting:
            for pt, why, by in self._await_approvals(n, waiting, progress):
                pre.append(self._closed(pt, TaskStatus.DENIED, "approval_denied", why, mode=Mode.LIVE, by=by))
        closed = {o.task_id for o in pre}
        to_send: dict[str, list[PlannedTask]] = defaultdict(list)
        for pt in tasks:
            if pt.task.task_id in gates and pt.task.task_id not in closed:
                to_send[pt.agent].append(pt)
        to_send = self._failover(n, to_send)
        for agent, pts in to_send.items():
            for pt in pts:
                tid = pt.task.task_id
                self._move(tid, TaskStatus.QUEUED, f"wave {n} on {agent_queue(agent)}", gates[tid].reason)
        tasks = self.plan.waves[n]
        denied = {o.task_id for o in pre if o.status is TaskStatus.DENIED}
        approved = [t for t, g in gates.items() if g.needs_approval and t not in denied]
        self.learner.store_inputs(n, tasks, approved=approved, requested=requested, granted=len(approved))
        sent = sum(len(v) for v in to_send.values())
        bar = progress.add_task("", total=len(tasks), wave=n, failed=0, running=0)
        self.store.start_wave(self.cid, n, dispatched=sent)
        if pre:
            self.store.record_outcomes(pre)
        sending = self._dispatch(n, to_send, gates) if sent else None
        self._write_assignments(n, tasks, gates)  # while the workers start
        if sending is not None:
            self._flush_transitions(workers=False)  # likewise: this wave's moves so far are ours
            missing = self._wait(n, sending, bar, progress)
            if missing:
                self._close_lost(n, missing, gates, bar, progress)
        self._reuse_outcomes(tasks)
        # parsed once here, written as stored; what the wave's close read is not read again
        have = self.dispatch.raw if self.dispatch is not None else {}
        raw = have | self.store.outcomes_raw(self.cid, [i for i in ids if i not in have])
        got = {t: Outcome.model_validate_json(v) for t, v in raw.items()}
        self.outcomes.update(got)
        wave_outcomes = [got[i] for i in ids if i in got]
        summary = summarize_wave(self.cid, n, wave_outcomes)
        progress.update(
            bar, completed=len(got), failed=summary.counts.total - summary.counts.succeeded, running=0
        )
        self.wave_summaries.append(summary)
        self._write_wave_outputs(n, wave_outcomes, raw)
        self.store.event(self.cid, "wave_finished", wave=n, by_status=summary.counts.by_status)
        report = None
        if n not in self.done_before:
            if n == self.plan.wave_numbers()[-1]:
                # report.html's latency chart needs only the outcomes: draw it while the
                # body analyzes (the other charts need that analysis)
                self.latency = LatencyChart.of(list(self.outcomes.values()))
            self._await_body(n)
            report = self.learner.after_wave(n)
        self.dispatch = None
        if self.metrics is not None:
            self.metrics.observe_outcomes(wave_outcomes)
            if report is not None:
                self.metrics.set_wave_health(n, report.health.score)
            contention = self.store.wave_counters(self.cid, n).get("lease_contention") or 0
            self.metrics.inc_lease_contention(int(contention))
        self._check_thresholds(n, wave_outcomes)

    def _compensate(self) -> None:
        """``--rollback-on-abort``: undo the succeeded reversible tasks of the aborted wave
        (``--rollback-scope wave``) or of the campaign, newest first."""
        wave = self.aborted_wave if self.opts.rollback_scope == "wave" else None
        if self.opts.rollback_scope == "wave" and wave is None:
            return  # aborted before any wave finished: nothing ran
        where = f"wave {wave}" if wave else "the campaign"
        self.console.print(f"rolling back the succeeded reversible tasks of {where}")
        outcomes = self.store.outcomes(self.cid)
        self.rollbacks = compensate(
            self.app, self.store, self.cid, outcomes.values(), self.registry, wave=wave
        )
        self.out.append_jsonl(OutputWriter.ROLLBACKS, self.rollbacks)
        self.outcomes.update(self.store.outcomes(self.cid, [e.task_id for e in self.rollbacks]))
        self._flush_transitions()
        done = sum(1 for e in self.rollbacks if e.status == "rolled_back")
        self.console.print(f"rolled back {done} task(s); see {OutputWriter.ROLLBACKS}")

    def _reuse_outcomes(self, tasks: list[PlannedTask]) -> None:
        """Deduplicated tasks (``duplicate_irreversible``) take their twin's outcome, never running."""
        twins = [
            pt for pt in tasks if pt.task.task_id in self.plan.reuse and pt.task.task_id not in self.outcomes
        ]
        if not twins:
            return
        sources = self.store.outcomes(self.cid, [self.plan.reuse[pt.task.task_id] for pt in twins])
        copies = []
        for pt in twins:
            src_id = self.plan.reuse[pt.task.task_id]
            src = sources.get(src_id)
            if src is None:
                copies.append(
                    self._closed(pt, TaskStatus.SKIPPED, "conflict", f"its twin {src_id} has no outcome")
                )
                continue
            why = f"deduplicated: takes the outcome of {src_id}, which ran the same call"
            self._move(pt.task.task_id, src.status, why)
            copies.append(
                src.model_copy(
                    update={
                        "task_id": pt.task.task_id,
                        "agent_id": pt.agent,
                        "wave": pt.wave,
                        "mode_reason": why,
                    }
                )
            )
        self.store.record_outcomes(copies)

    def _check_thresholds(self, n: int, wave_outcomes: list[Outcome]) -> None:
        """Abort when the wave's failures are *more than* ``max_fail_percentage`` of its tasks, or
        the campaign's failures are more than ``max_failures`` (:data:`FAILURE_STATUSES`)."""
        failed = sum(1 for o in wave_outcomes if o.status in FAILURE_STATUSES)
        self.failures += failed
        if self.metrics is not None:
            self.metrics.set_error_budget(error_budget(self.failures, self.opts.max_failures))
        p = self.opts.max_fail_percentage
        if p is not None and wave_outcomes and failed * 100.0 / len(wave_outcomes) > p:
            self.aborted_wave = n
            raise CampaignAborted(
                f"max_fail_percentage: {failed} of {len(wave_outcomes)} tasks of wave {n} "
                f"({failed * 100.0 / len(wave_outcomes):.0f}%) failed, more than {p:g}%"
            )
        m = self.opts.max_failures
        if m is not None and self.failures > m:
            self.aborted_wave = n
            raise CampaignAborted(f"max_failures: {self.failures} tasks failed so far, more than {m}")

    def _await_approvals(
        self, n: int, waiting: list[PlannedTask], progress: Progress
    ) -> list[tuple[PlannedTask, str, str]]:
        """Request approvals and wait for decisions (at most ``approval_timeout_s``).

        Returns the denied tasks with the reason and who denied; the approved ones move to
        ``approved`` here, the denied ones when their outcome is written.
        """
        by_id = {pt.task.task_id: pt for pt in waiting}
        self.approvals.request(self.cid, [self._approval_item(pt, self._risk(pt)) for pt in waiting])
        self.console.print(
            f"wave {n}: {len(waiting)} task(s) wait for an operator's approval "
            f"(timeout {self.opts.approval_timeout_s:g} s): "
            f"buddy approvals list {self.cid}; buddy approvals approve {self.cid} --wave {n}",
            highlight=False,
        )
        self.store.event(self.cid, "approvals_requested", wave=n, tasks=sorted(by_id))
        bar = progress.add_task("", total=len(waiting), wave=f"{n} approvals", failed=0, running=len(waiting))
        deadline = time.monotonic() + self.opts.approval_timeout_s
        pending = set(by_id)
        denied: list[tuple[PlannedTask, str, str]] = []
        while pending:
            for a in self.approvals.get(self.cid, sorted(pending)):
                if a.status == "pending":
                    continue
                pending.discard(a.task_id)
                why = f"{a.status} by {a.by}" + (f": {a.reason}" if a.reason else "")
                if a.status == "approved":
                    self._move(a.task_id, TaskStatus.APPROVED, why, by=f"operator {a.by}")
                else:
                    denied.append((by_id[a.task_id], f"approval {why}", f"operator {a.by}"))
            progress.update(
                bar, completed=len(waiting) - len(pending), failed=len(denied), running=len(pending)
            )
            if not pending:
                break
            if time.monotonic() >= deadline:
                for tid in self.approvals.expire(self.cid, sorted(pending), self.opts.approval_timeout_s):
                    why = f"no decision within {self.opts.approval_timeout_s:g} s"
                    denied.append((by_id[tid], f"approval timed out: {why}", "coordinator"))
                    pending.discard(tid)
                continue  # a decision that raced the timeout is read on the next pass
            time.sleep(0.25)
        return denied

    def _approval_item(self, pt: PlannedTask, risk: Risk) -> tuple[str, Risk, str, int, str]:
        summary = json.dumps(pt.task.args, sort_keys=True)
        return (pt.task.task_id, risk, pt.task.tool, pt.wave, summary)

    def _risk(self, pt: PlannedTask) -> Risk:
        contract = self.registry.get(pt.task.tool)
        return contract.risk_for(contract.parse_args(pt.task.args))

    def _move(
        self,
        task_id: str,
        to: TaskStatus,
        reason: str | None = None,
        extra: str | None = None,
        *,
        by: str = "coordinator",
    ) -> None:
        why = "; ".join(x for x in (reason, extra) if x) or None
        self.transitions.append(self.lifecycle.move(task_id, to, by=by, reason=why))

    def _dispatch_and_wait(
        self,
        n: int,
        to_send: dict[str, list[PlannedTask]],
        gates: dict[str, Gate],
        bar: Any,
        progress: Progress,
    ) -> set[str]:
        """:meth:`_dispatch` then :meth:`_wait`."""
        return self._wait(n, self._dispatch(n, to_send, gates), bar, progress)

    def _dispatch(self, n: int, to_send: dict[str, list[PlannedTask]], gates: dict[str, Gate]) -> _Dispatch:
        """Send ``to_send`` as one chord: micro-batches of one agent's tasks on its queue, the
        body ``buddy.wave_complete`` on ``buddy.coordinator``."""
        token = secrets.token_hex(8)
        header = []
        sent_items: list[dict[str, Any]] = []
        where: dict[str, Sent] = {}
        for agent, pts in sorted(to_send.items()):
            slots = next((a.concurrency for a in self.plan.agents if a.id == agent), 1)
            info = self._agents_now().get(agent)
            slots *= max(1, len(info.live_workers) if info is not None else 1)
            known = [pt.expected_s for pt in pts if pt.expected_s is not None]
            size = batch_size(len(pts), slots, max(known) if known else None, self.opts.batch_size)
            worst = attempt_worst_s(pts, self.registry, self.settings.lease_wait_s)
            for i, j in slices(worst, size, self.settings.visibility_timeout_s):
                items = [self._spec(pt, gates[pt.task.task_id]).model_dump(mode="json") for pt in pts[i:j]]
                sent_items.extend(items)
                message_id = str(uuid.uuid4())
                for item in items:
                    where[item["task_id"]] = Sent(agent, message_id, item)
                header.append(
                    self.app.signature(
                        EXECUTE_TASK,
                        kwargs={"campaign_id": self.cid, "wave": n, "agent_id": agent, "items": items},
                        queue=agent_queue(agent),
                        task_id=message_id,
                        # what Flower and the logs show; spares Celery a saferepr of every item
                        argsrepr="()",
                        kwargsrepr=f"{{wave: {n}, agent: {agent}, items: {len(items)}}}",
                    )
                )
        body = self.app.signature(
            WAVE_COMPLETE_TASK,
            kwargs={"campaign_id": self.cid, "wave": n, "token": token},
            queue=COORDINATOR_QUEUE,
        )
        sent_ids = [pt.task.task_id for pts in to_send.values() for pt in pts]
        self.store.record_dispatch(self.cid, n, sent_items)  # workers run only what is recorded here
        baseline = int(self.store.wave_counters(self.cid, n).get("done", 0))
        self.store.expect_done(self.cid, n, baseline + len(sent_ids))
        result = chord(header, app=self.app)(body)
        deadline_s = self.opts.wave_timeout_s or wave_deadline_s(to_send, self.plan.agents, self.registry)
        self.store.update_campaign(self.cid, current_wave=n, chord_id=result.id)
        self.store.event(self.cid, "wave_dispatched", wave=n, messages=len(header), chord_id=result.id)
        self.dispatch = _Dispatch(token, result.id, sent_ids, baseline, deadline_s, sent=where)
        return self.dispatch

    def _wait(self, n: int, sending: _Dispatch, bar: Any, progress: Progress) -> set[str]:
        """Wait for a dispatch. Returns the ids of sent tasks that have no outcome when the wave
        closed (every member reported, or the body's summary came, or the deadline passed);
        empty when complete.

        Raises :class:`CampaignAborted` on an abort request (``buddy abort``). A failed chord
        (its body will not run) is not fatal: the wave closes from the outcomes in Redis."""
        deadline = time.monotonic() + sending.deadline_s
        last_check = 0.0
        while True:
            summary = self.store.wait_wave_done(self.cid, n, 0.2, sending.token)
            c = self.store.wave_counters(self.cid, n)
            done = int(c.get("done", 0))
            progress.update(
                bar, completed=done, failed=int(c.get("failed", 0)), running=max(0, int(c.get("running", 0)))
            )
            if summary is not None or done - sending.baseline >= len(sending.ids):
                # Every member reported (the last outcome write pushed a wake-up, or the body
                # its summary). A member whose outcome write was lost (a Redis restart) would
                # still be missing: check, never assume. The body's analysis is awaited later.
                sending.reported = summary is not None
                sending.raw = self.store.outcomes_raw(self.cid, sending.ids)  # kept for the outputs
                missing = set(sending.ids) - sending.raw.keys()
                if not missing:
                    return set()
                if summary is not None:
                    return missing
            now = time.monotonic()
            if now - last_check < 1.0:
                continue
            last_check = now
            if self.stalls.due():
                self._resend_stalled(n, sending)
            if self.store.campaign(self.cid).get("abort_requested"):
                raise CampaignAborted(
                    f"aborted by an operator: {self.store.campaign(self.cid)['abort_requested']}"
                )
            if (
                not sending.failed
                and self.app.backend.get_task_meta(sending.chord_id).get("status") == "FAILURE"
            ):
                # The body will not run (a member raised, or the chord's join hit a Redis
                # restart). The outcomes in Redis are the truth: close the wave from them,
                # or at the deadline.
                sending.failed = True
                self.console.print(
                    f"[yellow]wave {n}: the chord failed; closing the wave from its outcomes[/]"
                )
                self.store.event(self.cid, "chord_failed", wave=n, chord_id=sending.chord_id)
            if now >= deadline:
                missing = self.store.missing_outcomes(self.cid, sending.ids)
                self.console.print(
                    f"[yellow]wave {n}: deadline of {sending.deadline_s:.0f} s passed with "
                    f"{len(missing)} task(s) without an outcome[/]"
                )
                self.store.event(self.cid, "wave_deadline", wave=n, missing=len(missing))
                sending.failed = True  # its members are not all back: the body will not report
                return missing

    def _resend_stalled(self, n: int, sending: _Dispatch) -> None:
        """Send again the tasks :class:`~buddy.stalls.StallWatch` finds stalled (a dead attempt, a
        lost message), to their agent or, when it has no live worker, to a healthy agent that
        offers the tool; the delivery that gets one decides whether it may run again."""
        missing = self.store.missing_outcomes(self.cid, sending.ids)
        due = self.stalls.check(self.cid, {t: sending.sent[t] for t in missing if t in sending.sent})
        if not due:
            return
        healthy = self._healthy_agents(fresh=True)
        specs = {a.id: a for a in self.plan.agents}
        by_agent: dict[str, list[str]] = defaultdict(list)
        for tid in sorted(due):
            was = sending.sent[tid]
            tool = str(was.item.get("tool"))
            agents = (
                [was.agent] if was.agent in healthy else sorted(a for a in healthy if specs[a].offers(tool))
            )
            if agents:
                by_agent[agents[0]].append(tid)
        for agent, tids in by_agent.items():
            message_id = str(uuid.uuid4())
            items = [dict(sending.sent[t].item) for t in tids]
            self.app.signature(
                EXECUTE_TASK,
                kwargs={"campaign_id": self.cid, "wave": n, "agent_id": agent, "items": items},
                queue=agent_queue(agent),
                task_id=message_id,
                argsrepr="()",
                kwargsrepr=f"{{wave: {n}, agent: {agent}, items: {len(items)}, resent: true}}",
            ).apply_async()
            for t, item in zip(tids, items, strict=True):
                sending.sent[t] = Sent(agent, message_id, item)
        resent = sorted(t for tids in by_agent.values() for t in tids)
        reasons = sorted(set(due.values()))
        self.console.print(
            f"[yellow]wave {n}: sent {len(resent)} stalled task(s) again[/] ({'; '.join(reasons)})",
            highlight=False,
        )
        self.store.event(self.cid, "tasks_resent", wave=n, tasks=resent, reasons=due)

    def _await_body(self, n: int) -> None:
        """Give the wave's chord body (its analysis: feedback and monitor) up to
        :data:`BODY_GRACE_S` seconds to report once the wave closed; the coordinator's
        :meth:`Learner.after_wave` analyzes the wave itself when the body is late or will not
        run. Either way one report wins: :func:`buddy.analysis.analyze` stores it with SET NX."""
        body = self.dispatch
        if body is None or body.reported or body.failed:
            return
        end = time.monotonic() + BODY_GRACE_S
        while (left := end - time.monotonic()) > 0:
            if self.store.wait_wave_done(self.cid, n, min(left, 0.5), body.token) is not None:
                return
        self.store.event(self.cid, "chord_body_late", wave=n, chord_id=body.chord_id, waited_s=BODY_GRACE_S)

    def _close_lost(
        self, n: int, missing: set[str], gates: dict[str, Gate], bar: Any, progress: Progress
    ) -> None:
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
            self._agents_now(fresh=True)  # the deadline passed: agents may have died since
            for pts in again.values():
                for pt in pts:
                    self._move(pt.task.task_id, TaskStatus.LOST, "no outcome by the wave deadline")
                    self._move(pt.task.task_id, TaskStatus.QUEUED, "sent once more: the tool is idempotent")
            still = self._dispatch_and_wait(n, self._failover(n, again), gates, bar, progress)
            lost += [self.plan.tasks[t] for t in sorted(still)]
        if lost:
            self.store.record_outcomes(
                [self._closed(pt, TaskStatus.LOST, "lost", "no outcome by the wave deadline") for pt in lost]
            )

    # -- per task ------------------------------------------------------------------------

    def _spec(self, pt: PlannedTask, gate: Gate) -> TaskSpec:
        return TaskSpec(
            task_id=pt.task.task_id,
            tool=pt.task.tool,
            args=pt.task.args,
            mode=gate.mode,
            mode_reason=gate.reason,
            claims=pt.claims,
            workdir=str(self.opts.workdir),
            planned_agent=pt.agent,
            planned_wave=pt.wave,
        )

    def _upstream_failure(self, pt: PlannedTask) -> str | None:
        if pt.task.trigger_rule == "all_done":
            return None
        for dep in pt.task.depends_on:
            o = self.outcomes.get(dep)
            if o is None:
                return f"dependency {dep!r} has no outcome"
            if o.status is not TaskStatus.SUCCEEDED:
                return f"dependency {dep!r} ended {o.status.value}"
        return None

    def _closed(
        self,
        pt: PlannedTask,
        status: TaskStatus,
        error_type: str,
        reason: str,
        *,
        mode: Mode | None = None,
        by: str = "coordinator",
    ) -> Outcome:
        """An outcome the coordinator decides without dispatching (skipped, denied)."""
        self._move(pt.task.task_id, status, reason, by=by)
        now = utcnow()
        return Outcome(
            task_id=pt.task.task_id,
            campaign_id=self.cid,
            agent_id=pt.agent,
            wave=pt.wave,
            status=status,
            mode=mode or self.opts.mode,
            attempts=0,
            start_time=now,
            end_time=now,
            error_type=error_type,
            error_msg=reason,
            tool=pt.task.tool,
        )

    # -- outputs -------------------------------------------------------------------------

    def _write_assignments(self, n: int, tasks: list[PlannedTask], gates: dict[str, Gate]) -> None:
        by_agent: dict[str, list[AgentAssignment]] = defaultdict(list)
        for pt in tasks:
            by_agent[pt.agent].append(
                AgentAssignment(
                    task_id=pt.task.task_id,
                    agent_id=pt.agent,
                    wave=n,
                    tool=pt.task.tool,
                    pinned=pt.pinned,
                    strategy=self.plan.strategy,
                    priority=pt.task.priority,
                    predicted_success=pt.task.predicted_success,
                    confidence=pt.task.confidence,
                    mode=gates[pt.task.task_id].mode if pt.task.task_id in gates else self.opts.mode,
                    mode_reason=gates[pt.task.task_id].reason if pt.task.task_id in gates else None,
                )
            )
        for agent in sorted({a.id for a in self.plan.agents} | set(by_agent)):  # every agent: one layout
            self.out.write_jsonl(
                self.out.agent_dir(n, agent) / OutputWriter.ASSIGNMENTS, by_agent.get(agent, [])
            )

    def _write_wave_outputs(self, n: int, outcomes: list[Outcome], raw: dict[str, bytes]) -> None:
        """``executed_tasks.jsonl`` per agent (each outcome's JSON as Redis holds it, ``raw``),
        the tool log's new lines and the state transitions so far."""
        by_agent: dict[str, list[bytes]] = defaultdict(list)
        for o in outcomes:
            by_agent[o.agent_id or "-"].append(raw[o.task_id])
        for agent in sorted({a.id for a in self.plan.agents} | set(by_agent)):
            self.out.write_raw_jsonl(
                self.out.agent_dir(n, agent) / OutputWriter.EXECUTED, by_agent.get(agent, [])
            )
        new = [o for o in outcomes if o.task_id not in self.preexisting]
        self.out.append_jsonl(OutputWriter.TOOL_LOG, (e for o in new for e in tool_log_entries(o)))
        self._flush_transitions()
        for o in outcomes:  # the workers moved these; follow them so later moves stay legal
            self.lifecycle.state[o.task_id] = o.status

    def _write_html(self, summary: ExecutionSummary, final: HealthReport | None) -> None:
        """``report.html``: charts of health per wave, throughput per agent, latency (self-contained)."""
        doc = summary.model_dump(mode="json")
        doc["optimizer"] = [d.model_dump(mode="json") for d in self.learner.decisions]
        healths = [r.health for r in self.learner.reports] + ([final] if final is not None else [])
        metrics = [r.metrics for r in self.learner.reports]
        html = render_html(doc, metrics, list(self.outcomes.values()), healths, self.latency)
        self.out.write_text(OutputWriter.HTML, html)

    def _flush_transitions(self, workers: bool = True) -> None:
        """Append the coordinator's and the workers' transitions so far, in time order, to
        ``state_transitions.jsonl`` (the workers' rows as Redis holds them: only ``at`` is read).

        ``workers=False``: the coordinator's alone, right after a dispatch. The file stays in
        time order: every move the coordinator made for a wave precedes its dispatch, and so
        every worker's move in it (a worker pushes its rows with its outcomes, late)."""
        rows = [(t.at, t.model_dump_json().encode()) for t in self.transitions]
        if workers:
            rows += [
                (datetime.fromisoformat(orjson.loads(x)["at"]), x)
                for x in self.store.pop_transitions_raw(self.cid)
            ]
        self.transitions.clear()
        if rows:
            rows.sort(key=lambda r: r[0])
            self.out.write_raw_jsonl(
                self.out.root / OutputWriter.TRANSITIONS, (x for _, x in rows), append=True
            )

    def _finish(self, status: CampaignStatus, abort_reason: str | None) -> ExecutionSummary:
        counts = StatusCounts()
        agents: dict[str, AgentSummary] = {}
        for o in self.outcomes.values():
            counts.add(o.status.value)
        for ws in self.wave_summaries:
            for aid, a in ws.agents.items():
                acc = agents.setdefault(aid, AgentSummary(agent_id=aid))
                for st, k in a.counts.by_status.items():
                    for _ in range(k):
                        acc.counts.add(st)
                acc.busy_ms += a.busy_ms
                acc.workers = sorted(set(acc.workers) | set(a.workers))
        for acc in agents.values():
            ran = acc.counts.total - acc.counts.by_status.get(TaskStatus.SKIPPED.value, 0)
            acc.mean_duration_ms = acc.busy_ms / ran if ran else 0.0
        if status == "running":
            all_ok = counts.total == len(self.plan.tasks) and counts.succeeded == counts.total
            status = "succeeded" if all_ok else "finished_with_failures"
        exit_code = {
            "succeeded": EXIT_OK,
            "finished_with_failures": EXIT_FAILURES,
            "aborted": EXIT_ABORTED,
            "interrupted": EXIT_INTERRUPTED,
        }[status]
        end = utcnow()
        _, final_health = self.learner.finish(list(self.outcomes.values()))
        summary = ExecutionSummary(
            campaign_id=self.cid,
            status=status,
            exit_code=exit_code,
            mode=self.opts.mode,
            counts=counts,
            agents=dict(sorted(agents.items())),
            waves=self.wave_summaries,
            start_time=self.start_time,
            end_time=end,
            wall_s=(end - self.start_time).total_seconds(),
            abort_reason=abort_reason,
            health=final_health.score if final_health else None,
            health_status=final_health.status if final_health else None,
        )
        self.out.write_json(OutputWriter.SUMMARY, summary)
        failed = [o for o in self.outcomes.values() if o.status is not TaskStatus.SUCCEEDED]
        self._flush_transitions()
        if self.plan.conflicts is not None:
            by_wave = {
                n: int(self.store.wave_counters(self.cid, n).get("lease_contention", 0))
                for n in self.plan.wave_numbers()
            }
            self.plan.conflicts.lease_contention_by_wave = {n: k for n, k in by_wave.items() if k}
            self.plan.conflicts.lease_contention_total = sum(by_wave.values())
            self.out.write_json(OutputWriter.CONFLICTS, self.plan.conflicts)
        context = ReportContext(
            escalation=self.opts.escalation,
            max_fail_percentage=self.opts.max_fail_percentage,
            max_failures=self.opts.max_failures,
            approvals=self.approvals.get(self.cid),
            rollbacks=self.rollbacks,
            reports=self.learner.reports,
            optimizer=optimizer_markdown(
                self.learner.decisions, self.learner.changes, self.learner.adjustments
            )
            if self.opts.optimize
            else "## What the optimizer changed and why\n\nNothing: the campaign ran with --no-optimize.",
        )
        self.out.write_text(OutputWriter.REPORT, render_report(summary, self.plan, failed, context))
        self._write_html(summary, final_health)
        self.store.update_campaign(self.cid, status=status, ended_at=end.isoformat(), exit_code=exit_code)
        self.store.event(self.cid, "campaign_finished", status=status, exit_code=exit_code)
        return summary


def _no_worker_message(agents: list[str], waited_s: float) -> str:
    queues = ", ".join(agent_queue(a) for a in agents)
    starts = "; ".join(f"buddy worker --agent {a}" for a in agents)
    return f"no live worker consumes {queues} (waited {waited_s:.0f} s); start one: {starts}"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("buddy", "celery", "kombu", "redis", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
