"""``buddy.Campaign``: validate and run a plan from Python (the CLI's ``run`` and ``validate``
build one and print what it returns).

Example::

    camp = buddy.Campaign(tasks, agents=["a1", "a2"], mode="live", approver=my_approver)
    camp.validate()            # raises buddy.PlanError; nothing dispatched
    result = camp.run()        # embedded Redis + local workers unless redis_url= is given
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console

from buddy.api.fleet import Fleet, sigint_shielded
from buddy.api.options import (
    RunArgs,
    campaign_options,
    check_keywords,
    conflict_policy,
    local_workers,
    resolve_agents,
    tool_modules,
    workdir,
    worker_env,
)
from buddy.config import CampaignConfig, get_settings, load_campaign_config
from buddy.coordinator.approvals import Approver
from buddy.coordinator.dispatch import attempt_worst_s
from buddy.coordinator.hooks import MetricsHook, ProgressHook
from buddy.coordinator.loop import Coordinator
from buddy.coordinator.options import CampaignOptions, Clock, new_campaign_id
from buddy.coordinator.result import CampaignResult
from buddy.errors import ConfigError, InfrastructureError
from buddy.infra.probes import check_broker
from buddy.infra.transport import redact_url
from buddy.models import AgentSpec, Strategy
from buddy.plan.build import build_plan
from buddy.plan.conflicts import ConflictsReport, resolve
from buddy.plan.model import CampaignPlan, summary_table
from buddy.plan.policy import ConflictType, Resolution
from buddy.tools.registry import ToolRegistry, default_registry


class PlanSummary(BaseModel):
    """What :meth:`Campaign.validate` found: ``table`` is waves × agents (header row first,
    a ``total`` row last), ``conflicts`` the plan's conflicts and their resolutions."""

    tasks: int
    waves: int
    agents: list[str]
    strategy: Strategy
    digest: str
    table: list[list[str]]
    conflicts: ConflictsReport | None
    warnings: list[str]


class Campaign:
    """A plan and how to run it. ``tasks``: plan lines as dicts (the README's plan format, same
    validation and defaults) or models with those fields; :meth:`from_file` reads a JSONL plan.
    Every keyword of ``buddy run`` is a keyword here with the same name and meaning
    (:class:`~buddy.api.options.RunArgs`), plus ``approver`` (:data:`Approver`), ``hooks``
    (:class:`~buddy.coordinator.hooks.CampaignHooks` objects), ``fleet`` (a started
    :class:`Fleet` to run on), ``clock`` and ``console`` (where messages go; default stderr).

    Raises :class:`TypeError` for an unknown keyword (naming the nearest valid one) and
    :class:`~buddy.errors.ConfigError` for a bad value."""

    def __init__(
        self,
        tasks: Iterable[Mapping[str, Any] | BaseModel] | Path | None = None,
        *,
        approver: Approver | None = None,
        hooks: Iterable[Any] = (),
        fleet: Fleet | None = None,
        clock: Clock | None = None,
        console: Console | None = None,
        **options: Any,
    ) -> None:
        check_keywords(options, "Campaign()")
        try:
            self.args = RunArgs(**options)
        except ValidationError as e:
            raise ConfigError(_errors(e)) from None
        self.source: Path | list[Any] = tasks if isinstance(tasks, Path) else list(tasks or [])
        self.approver, self.hooks, self.fleet, self.clock = approver, list(hooks), fleet, clock
        self.console = console or Console(stderr=True)
        self.plan: CampaignPlan | None = None
        self.registry: ToolRegistry | None = None
        self.config = CampaignConfig()
        self.agents: list[AgentSpec] = []

    @classmethod
    def from_file(cls, plan: str | os.PathLike[str], **options: Any) -> Campaign:
        """A campaign of a JSONL plan file; ``schedule=``, ``config=`` and the rest as for
        ``buddy run``."""
        return cls(Path(plan), **options)

    # -- validate --------------------------------------------------------------------------

    def validate(self) -> PlanSummary:
        """Validate the whole plan (nothing is dispatched): waves, assignment, conflicts.
        Raises :class:`~buddy.errors.PlanError` (``.errors``: (source, line, message) each)
        or :class:`~buddy.errors.ConfigError`."""
        warnings = self._prepare()
        assert self.plan is not None
        return PlanSummary(
            tasks=len(self.plan.tasks),
            waves=len(self.plan.waves),
            agents=[a.id for a in self.plan.agents],
            strategy=self.plan.strategy,
            digest=self.plan.digest,
            table=summary_table(self.plan),
            conflicts=self.plan.conflicts,
            warnings=warnings,
        )

    def _prepare(self) -> list[str]:
        if self.args.root is not None:
            os.environ["BUDDY_FILE_ROOT"] = str(self.args.root.expanduser().resolve())
            get_settings.cache_clear()
        if self.args.config is not None:
            self.config = load_campaign_config(self.args.config)
        settings = get_settings()
        self.agents = resolve_agents(self.args.agents, self.config)
        self.registry = default_registry(tool_modules(self.args, self.config, settings))
        self.plan = plan_campaign(
            self.source,
            self.registry,
            self.agents,
            self.args.strategy or self.config.strategy or Strategy.ROUND_ROBIN,
            self.config,
            conflict=self.args.conflict,
            schedule=self.args.schedule,
            workdir=workdir(self.args, self.config),
        )
        return visibility_warnings(self.plan, self.registry)

    # -- run -------------------------------------------------------------------------------

    def run(self) -> CampaignResult:
        """Validate, then run every wave; returns the result (also in the outputs folder).

        Starts an embedded Redis and one worker per agent unless ``redis_url`` (or
        ``BUDDY_REDIS_URL``) or ``fleet`` is given, and stops them on every exit path.
        Raises :class:`~buddy.errors.PlanError` / ``ConfigError`` before anything starts,
        :class:`~buddy.errors.InfrastructureError` when Redis or the broker cannot be
        reached, and ``KeyboardInterrupt`` if interrupted before the first wave."""
        for w in self._prepare():
            self.console.print(f"warning: {w}", highlight=False)
        assert self.plan is not None and self.registry is not None
        settings = get_settings()
        url = self.fleet.url if self.fleet is not None else (self.args.redis_url or settings.redis_url)
        cid = self.args.campaign_id or new_campaign_id()
        wd = workdir(self.args, self.config)
        out = self.args.out_dir or Path("outputs") / cid
        options = campaign_options(self.args, self.config, cid, wd, out)
        env = worker_env(self.config, settings, tool_modules(self.args, self.config, settings))
        n_local = 0 if self.fleet is not None else local_workers(self.args, self.config, url)
        # The plan lives as long as the campaign: keep the cyclic GC from rescanning it at every
        # collection (a 100k-task plan is millions of objects); given back to it at the end.
        gc.freeze()
        try:
            return self._run(options, url, n_local, env)
        finally:
            gc.unfreeze()

    def _run(
        self, options: CampaignOptions, url: str | None, n_local: int, env: dict[str, str]
    ) -> CampaignResult:
        assert self.plan is not None and self.registry is not None
        return run_campaign(
            self.plan,
            self.registry,
            options,
            self.agents,
            url=url,
            n_local=n_local,
            env=env,
            fleet=self.fleet,
            hooks=self.hooks,
            approver=self.approver,
            clock=self.clock,
            console=self.console,
            metrics_port=self.args.metrics_port,
            metrics_address=self.args.metrics_address,
            broker_url=self.args.broker_url,
        )


def plan_campaign(
    source: Path | list[Any],
    registry: ToolRegistry,
    agents: list[AgentSpec],
    strategy: Strategy,
    config: CampaignConfig,
    *,
    conflict: list[str],
    schedule: Path | None,
    workdir: Path,
) -> CampaignPlan:
    """Validate, wave and assign a plan, and resolve its conflicts by ``campaign.yaml``'s
    resolutions overridden by ``conflict`` (``TYPE=RESOLUTION``) — for a run and for a resume
    alike. Raises :class:`~buddy.errors.PlanError` / ``ConfigError``."""
    policy = conflict_policy(config, conflict)
    plan = build_plan(
        source,
        registry,
        agents,
        strategy,
        schedule_path=schedule,
        defaults=config.defaults,
        workdir=workdir,
        unpin_violations=policy.of(ConflictType.DEPENDENCY_VIOLATION) is Resolution.SERIALIZE,
    )
    plan.conflicts = resolve(plan, registry, policy)
    return plan


def run_campaign(
    plan: CampaignPlan,
    registry: ToolRegistry,
    options: CampaignOptions,
    agents: list[AgentSpec],
    *,
    url: str | None,
    n_local: int,
    env: dict[str, str],
    fleet: Fleet | None = None,
    hooks: list[Any] | None = None,
    approver: Approver | None = None,
    clock: Clock | None = None,
    console: Console | None = None,
    metrics_port: int | None = None,
    metrics_address: str = "127.0.0.1",
    broker_url: str | None = None,
) -> CampaignResult:
    """Run (or resume) a campaign: the Redis (embedded when ``url`` is None), ``n_local``
    workers per agent, the coordinator. Everything started here goes on one ExitStack that
    is closed with SIGINT ignored, so a second Ctrl-C during teardown leaves nothing behind."""
    console = console or Console(stderr=True)
    if broker_url:
        os.environ["BUDDY_BROKER_URL"] = broker_url
        get_settings.cache_clear()
    settings = get_settings()
    if settings.broker_url:
        check_broker(settings.broker_url, settings.connect_timeout_s)
    out_root = options.out_dir or Path("outputs") / str(options.campaign_id)
    stack = ExitStack()
    try:
        with _sigterm_interrupts():
            if fleet is None:
                fleet = Fleet(
                    agents, redis_url=url, workers_per_agent=n_local, env=env, log_dir=out_root / "logs"
                )
                stack.callback(fleet.stop)
                fleet.start()
            fleet.add_campaign(str(options.campaign_id))  # the state file CLI commands find
            store = fleet.store()
            _ping(store, fleet.url)
            all_hooks: list[Any] = [ProgressHook(console, options.progress)]
            if options.notify is not None:
                from buddy.coordinator.notify import WebhookNotifier

                all_hooks.append(WebhookNotifier(options.notify))
            if metrics_port is not None:
                from buddy.infra.prometheus import CampaignMetrics, FleetCollector, serve

                metrics = CampaignMetrics(fleet=FleetCollector(store, agents=[a.id for a in agents]))
                server = serve(metrics.registry, metrics_port, metrics_address)
                stack.callback(server.stop)
                all_hooks.append(MetricsHook(metrics))
            options.redis_display = "embedded" if fleet.embedded is not None else redact_url(fleet.url)
            options.embedded = fleet.embedded is not None
            coordinator = Coordinator(
                plan,
                store,
                fleet.dispatcher(),
                registry,
                options,
                console=console,
                hooks=[*all_hooks, *(hooks or [])],
                approver=approver,
                clock=clock,
            )
            return coordinator.run()
    finally:
        with sigint_shielded():
            stack.close()


def _ping(store: Any, url: str) -> None:
    import redis

    try:
        store.r.ping()
    except redis.RedisError as e:
        raise InfrastructureError(f"cannot reach Redis at {redact_url(url)}: {e}") from None


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the campaign like Ctrl-C (outputs written, teardown run), main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def visibility_warnings(plan: CampaignPlan, registry: ToolRegistry) -> list[str]:
    """Tools of which one attempt can hold its message longer than Redis waits before
    delivering it again (``BUDDY_VISIBILITY_TIMEOUT_S``); batches are cut to fit
    (:func:`~buddy.coordinator.dispatch.slices`), a single attempt cannot be."""
    settings = get_settings()
    vt = settings.visibility_timeout_s
    pts = list(plan.tasks.values())
    worst: dict[str, float] = {}
    for pt, seconds in zip(pts, attempt_worst_s(pts, registry, settings.lease_wait_s), strict=True):
        worst[pt.task.tool] = max(worst.get(pt.task.tool, 0.0), seconds)
    return [
        f"one attempt of {name} can hold its message for up to {seconds:.0f} s (timeout, stop grace, lease "
        f"wait), not less than BUDDY_VISIBILITY_TIMEOUT_S={vt}: Redis may deliver it again while it runs "
        "(its claim makes that delivery wait); raise the visibility timeout"
        for name, seconds in sorted(worst.items())
        if seconds >= vt
    ]


def _errors(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
