"""Campaign hooks: code that runs around each wave without being part of the loop.

A hook is any object with some of the methods of :class:`CampaignHooks` (a typed no-op base
class, as dramatiq's ``Middleware``). The coordinator calls them through :class:`HookRunner`:
a hook that raises is logged with its name and the campaign goes on. The progress bar
(:class:`ProgressHook`) and the Prometheus metrics (:class:`MetricsHook`) are hooks too.

Order of calls: ``before_campaign`` once, then per wave ``before_wave``,
``on_approval_request`` (once, when tasks start waiting for a decision), ``on_approvals``
(while they wait), ``on_progress`` (while the wave runs) and ``after_wave``, then
``after_campaign`` once, also when the campaign aborted or was interrupted. ``on_pause`` and
``on_resume`` bracket each pause (the system lock, ``buddy pause``), at any point.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from buddy.coordinator.options import CampaignOptions
from buddy.models import Outcome, Pause

if TYPE_CHECKING:
    from datetime import datetime

    from buddy.analysis.wave import WaveReport
    from buddy.coordinator.approvals import ApprovalRequest
    from buddy.coordinator.result import CampaignResult
    from buddy.infra.prometheus import CampaignMetrics
    from buddy.plan.model import CampaignPlan
    from buddy.state.store import Store

log = logging.getLogger("buddy.hooks")


@dataclasses.dataclass
class CampaignContext:
    """What a hook may read about the running campaign. ``wave`` is the current wave (None
    before the first); ``wave_outcomes`` the current wave's final outcomes (set before
    ``after_wave``); ``failures`` the campaign's tasks in a failure status so far."""

    campaign_id: str
    plan: CampaignPlan
    options: CampaignOptions
    store: Store
    wave: int | None = None
    wave_tasks: int = 0
    wave_outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    failures: int = 0


class CampaignHooks:
    """Typed no-op hooks; subclass and override the ones you need."""

    def before_campaign(self, ctx: CampaignContext) -> None:
        """Once, after the campaign is recorded in Redis and before the first wave."""

    def before_wave(self, ctx: CampaignContext) -> None:
        """Before wave ``ctx.wave`` is gated and sent (``ctx.wave_tasks`` tasks)."""

    def on_approval_request(
        self, ctx: CampaignContext, requests: list[ApprovalRequest], timeout_at: datetime
    ) -> None:
        """Once per wave, when ``requests`` start waiting for a decision; undecided at
        ``timeout_at`` (UTC) they are denied."""

    def on_approvals(self, ctx: CampaignContext, waiting: int, approved: int, denied: int) -> None:
        """While tasks of the wave wait for an approval decision (called at every poll)."""

    def on_pause(self, ctx: CampaignContext, pause: Pause) -> None:
        """When the campaign pauses (``pause.until`` is None)."""

    def on_resume(self, ctx: CampaignContext, pause: Pause) -> None:
        """When a pause ends (``pause.until`` and ``pause.seconds`` set); not called when the
        campaign ends while paused (``--lock-timeout``, ``buddy abort``, Ctrl-C)."""

    def on_progress(self, ctx: CampaignContext, done: int, failed: int, running: int) -> None:
        """While the wave runs: tasks with an outcome, of them failed, and attempts running."""

    def after_wave(self, ctx: CampaignContext, report: WaveReport | None) -> None:
        """After the wave's outcomes are final and analyzed (``report``: its feedback, metrics,
        anomalies and health; None for a wave a resumed campaign had already finished and
        analyzed before)."""

    def after_campaign(self, ctx: CampaignContext, result: CampaignResult) -> None:
        """Once, after the outputs are written (also after an abort or Ctrl-C)."""


class HookRunner:
    """Calls every hook's method of a name, logging (not raising) what a hook raises."""

    def __init__(self, hooks: list[Any]) -> None:
        self.hooks = list(hooks)

    def emit(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            method = getattr(hook, name, None)
            if method is None:
                continue
            try:
                method(*args)
            except Exception:
                log.exception("hook %s.%s raised; the campaign goes on", _name(hook), name)


def _name(hook: Any) -> str:
    return getattr(hook, "name", None) or type(hook).__qualname__


class ProgressHook(CampaignHooks):
    """The rich progress bars of ``buddy run``: one per wave, one per approval wait."""

    name = "progress"

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.progress = Progress(
            TextColumn("[bold]wave {task.fields[wave]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed [red]{task.fields[failed]}[/] running [cyan]{task.fields[running]}[/]"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self.bar: Any = None
        self.approval_bar: Any = None

    def before_campaign(self, ctx: CampaignContext) -> None:
        self.progress.start()

    def before_wave(self, ctx: CampaignContext) -> None:
        self.bar = self.approval_bar = None

    def on_approvals(self, ctx: CampaignContext, waiting: int, approved: int, denied: int) -> None:
        total = waiting + approved + denied
        if self.approval_bar is None:
            self.approval_bar = self.progress.add_task(
                "", total=total, wave=f"{ctx.wave} approvals", failed=0, running=waiting
            )
        self.progress.update(self.approval_bar, completed=approved + denied, failed=denied, running=waiting)

    def on_progress(self, ctx: CampaignContext, done: int, failed: int, running: int) -> None:
        if self.bar is None:
            self.bar = self.progress.add_task("", total=ctx.wave_tasks, wave=ctx.wave, failed=0, running=0)
        self.progress.update(self.bar, completed=done, failed=failed, running=max(0, running))

    def on_pause(self, ctx: CampaignContext, pause: Pause) -> None:
        if self.bar is not None:
            self.progress.update(self.bar, wave=f"{ctx.wave} [yellow]paused ({pause.describe()})[/]")

    def on_resume(self, ctx: CampaignContext, pause: Pause) -> None:
        if self.bar is not None:
            self.progress.update(self.bar, wave=ctx.wave)

    def after_wave(self, ctx: CampaignContext, report: WaveReport | None) -> None:
        failed = sum(1 for o in ctx.wave_outcomes if o.status.value != "succeeded")
        self.on_progress(ctx, len(ctx.wave_outcomes), failed, 0)

    def after_campaign(self, ctx: CampaignContext, result: CampaignResult) -> None:
        self.progress.stop()


class MetricsHook(CampaignHooks):
    """Feeds a campaign's Prometheus metrics (``--metrics-port``): progress, outcomes, wave
    health, lease contention and the error budget (:mod:`buddy.infra.prometheus`)."""

    name = "prometheus"

    def __init__(self, metrics: CampaignMetrics) -> None:
        self.metrics = metrics

    def before_campaign(self, ctx: CampaignContext) -> None:
        self.metrics.set_campaign(ctx.campaign_id, len(ctx.plan.tasks), ctx.options.mode.value)

    def before_wave(self, ctx: CampaignContext) -> None:
        if ctx.wave is not None:
            self.metrics.set_current_wave(ctx.wave)

    def on_pause(self, ctx: CampaignContext, pause: Pause) -> None:
        self.metrics.set_paused(pause.kind, True)

    def on_resume(self, ctx: CampaignContext, pause: Pause) -> None:
        self.metrics.set_paused(pause.kind, False, pause.seconds or 0.0)

    def after_wave(self, ctx: CampaignContext, report: WaveReport | None) -> None:
        from buddy.infra.prometheus import error_budget

        self.metrics.observe_outcomes(ctx.wave_outcomes)
        if report is not None and ctx.wave is not None:
            self.metrics.set_wave_health(ctx.wave, report.health.score)
        if ctx.wave is not None:
            contention = ctx.store.wave_counters(ctx.campaign_id, ctx.wave).get("lease_contention") or 0
            self.metrics.inc_lease_contention(int(contention))
        self.metrics.set_error_budget(error_budget(ctx.failures, ctx.options.max_failures))
