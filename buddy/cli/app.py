"""The ``buddy`` command (typer + rich).

Exit codes: 0 all succeeded, 1 finished with other statuses, 2 invalid input (nothing was
dispatched), 3 aborted (a rule fired, or the fleet could not be reached), 130 interrupted.
A mistake in the input prints ``FILE:LINE: message`` lines, never a traceback.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from buddy.config import CampaignConfig, get_settings, load_campaign_config, parse_agents
from buddy.errors import (
    BuddyError,
    ConfigError,
    ContractError,
    InfrastructureError,
    PlanError,
    RedisUnavailable,
)
from buddy.infra.transport import (
    DEFAULT_REDIS_URL,
    BrokerUnavailable,
    check_broker,
    check_redis,
    redact_url,
    redis_client,
)
from buddy.models import AgentSpec, Mode, Strategy, agent_queue
from buddy.plan.build import CampaignPlan, build_plan, summary_table
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from buddy.coordinator.loop import CampaignOptions

app = typer.Typer(
    name="buddy",
    help="Run agent task plans as wave campaigns on a Celery + Redis worker fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

EXIT_INVALID, EXIT_ABORTED, EXIT_INTERRUPTED = 2, 3, 130


class AutoApprove(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


class ReviewMark(StrEnum):
    succeeded = "succeeded"
    failed = "failed"
    retry = "retry"


class RollbackScope(StrEnum):
    wave = "wave"
    campaign = "campaign"


def _fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


# -- shared loading -------------------------------------------------------------------------


def _load_config(path: Path | None) -> CampaignConfig:
    return load_campaign_config(path) if path else CampaignConfig()


def _resolve_agents(flag: str | None, config: CampaignConfig) -> list[AgentSpec]:
    if flag is not None:
        agents = parse_agents(flag)
        if config.agents:  # keep tools/concurrency the config gives for the same ids
            known = {a.id: a for a in config.agents}
            agents = [known.get(a.id, a) for a in agents]
        return agents
    return config.agents or parse_agents(None)


def _plan(
    plan: Path,
    schedule: Path | None,
    config: CampaignConfig,
    agents: list[AgentSpec],
    strategy: Strategy,
    workdir: Path,
    tools: list[str],
    conflict_flags: list[str] | None = None,
) -> CampaignPlan:
    """Validate ``plan``, resolve its conflicts (``plan.conflicts`` holds the report) and warn
    about tools that can outlast the visibility timeout. Raises PlanError / ConfigError."""
    from buddy.plan.conflicts import ConflictPolicy, ConflictType, Resolution, resolve
    from buddy.tools.registry import default_registry

    registry = default_registry([*get_settings().tools, *config.tools, *tools])
    chosen = dict(config.conflicts.resolutions)
    for flag in conflict_flags or []:
        kind, _, how = flag.partition("=")
        try:
            chosen[ConflictType(kind.strip())] = Resolution(how.strip())
        except ValueError:
            raise ConfigError(
                f"--conflict {flag}: expected TYPE=RESOLUTION with TYPE one of "
                f"{', '.join(t.value for t in ConflictType)} and RESOLUTION one of "
                f"{', '.join(r.value for r in Resolution)}"
            ) from None
    try:
        policy = ConflictPolicy(resolutions=chosen)
    except ValueError as e:
        raise ConfigError(f"conflict resolutions: {e}") from None
    cp = build_plan(
        plan,
        registry,
        agents,
        strategy,
        schedule_path=schedule,
        defaults=config.defaults,
        workdir=workdir,
        unpin_violations=policy.of(ConflictType.DEPENDENCY_VIOLATION) is Resolution.SERIALIZE,
    )
    cp.conflicts = resolve(cp, registry, policy)
    _warn_visibility(cp, registry)
    # The plan lives as long as the campaign: keep the cyclic GC from rescanning it at every
    # collection (a 100k-task plan is a few million objects).
    gc.freeze()
    return cp


def _warn_visibility(cp: CampaignPlan, registry: ToolRegistry) -> None:
    """Warn when one attempt of a tool of the plan can hold its message longer than Redis waits
    before redelivering it. Batches are cut so that their worst case fits
    (:func:`buddy.dispatch.slices`); a single attempt longer than the timeout cannot be."""
    from buddy.coordinator.dispatch import attempt_worst_s

    settings = get_settings()
    vt = settings.visibility_timeout_s
    pts = list(cp.tasks.values())
    worst: dict[str, float] = {}
    for pt, seconds in zip(pts, attempt_worst_s(pts, registry, settings.lease_wait_s), strict=True):
        worst[pt.task.tool] = max(worst.get(pt.task.tool, 0.0), seconds)
    for name, seconds in sorted(worst.items()):
        if seconds >= vt:
            err.print(
                f"warning: one attempt of {name} can hold its message for up to {seconds:.0f} s (timeout, "
                f"stop grace, lease wait), not less than BUDDY_VISIBILITY_TIMEOUT_S={vt}: Redis may "
                "deliver it again while it runs (its claim makes that delivery wait); raise the "
                "visibility timeout",
                highlight=False,
            )


def _split(values: list[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


# -- commands -------------------------------------------------------------------------------

PlanArg = Annotated[Path, typer.Argument(help="The plan: JSONL, one task per line.")]
ScheduleOpt = Annotated[
    Path | None, typer.Option("--schedule", help="JSONL lines {task_id, agent, wave} that pin tasks.")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="campaign.yaml: agents, strategy, mode, defaults.")
]
AgentsOpt = Annotated[
    str | None, typer.Option("--agents", help="Agent ids 'a1,a2,a3' or a count '3' (→ a1..a3). Default 3.")
]
StrategyOpt = Annotated[
    Strategy | None,
    typer.Option("--strategy", help="How unpinned tasks are assigned (see README). Default round_robin."),
]
WorkdirOpt = Annotated[
    Path | None, typer.Option("--workdir", help="Where relative paths in tool args resolve. Default: cwd.")
]
RedisOpt = Annotated[str | None, typer.Option("--redis-url", help="Default: BUDDY_REDIS_URL.")]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-url",
        help="Celery broker when not the Redis, e.g. amqp://USER:PASSWORD@host:5672/VHOST (RabbitMQ). "
        "Default: BUDDY_BROKER_URL.",
    ),
]
RootOpt = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help="Confine the file tools to this directory (BUDDY_FILE_ROOT): paths outside it are refused.",
    ),
]


def _set_root(root: Path | None) -> str | None:
    """Apply ``--root`` to this process's settings (BUDDY_FILE_ROOT); the root in force, if any."""
    if root is not None:
        os.environ["BUDDY_FILE_ROOT"] = str(root.expanduser().resolve())
        get_settings.cache_clear()
    return get_settings().file_root


ConflictOpt = Annotated[
    list[str] | None,
    typer.Option("--conflict", help="TYPE=RESOLUTION, e.g. write_write=priority (repeatable; see README)."),
]
ToolsOpt = Annotated[
    list[str] | None, typer.Option("--tools", help="Module(s) to import for their @buddy.tool contracts.")
]


@app.command()
def validate(
    plan: PlanArg,
    schedule: ScheduleOpt = None,
    config: ConfigOpt = None,
    agents: AgentsOpt = None,
    strategy: StrategyOpt = None,
    workdir: WorkdirOpt = None,
    tools: ToolsOpt = None,
    conflict: ConflictOpt = None,
    root: RootOpt = None,
) -> None:
    """Validate a plan (nothing is dispatched) and print its waves × agents and its conflicts."""
    try:
        _set_root(root)
        cfg = _load_config(config)
        specs = _resolve_agents(agents, cfg)
        wd = (workdir or Path(cfg.workdir or ".")).resolve()
        cp = _plan(
            plan,
            schedule,
            cfg,
            specs,
            strategy or cfg.strategy or Strategy.ROUND_ROBIN,
            wd,
            _split(tools),
            conflict,
        )
    except (PlanError, ConfigError, ContractError) as e:
        _fail(str(e))
    header, *rows = summary_table(cp)
    table = Table(title=f"{plan}: {len(cp.tasks)} tasks, {len(cp.waves)} waves, strategy {cp.strategy.value}")
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row, end_section=row[0] == "total")
    out.print(table)
    for c in cp.conflicts.conflicts if cp.conflicts else []:
        out.print(
            f"conflict {c.type.value} on {c.subject} ({', '.join(c.tasks)}): {c.resolution.value}"
            + (f"; {c.detail}" if c.detail else ""),
            highlight=False,
        )
    out.print(f"plan OK (sha256 {cp.digest})")


@app.command()
def run(
    plan: PlanArg,
    schedule: ScheduleOpt = None,
    config: ConfigOpt = None,
    agents: AgentsOpt = None,
    strategy: StrategyOpt = None,
    mode: Annotated[
        Mode | None, typer.Option("--mode", help="mock (default: nothing runs), dry_run (previews) or live.")
    ] = None,
    workdir: WorkdirOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder. Default outputs/<campaign>.")
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url", help="Redis of the fleet. Default: BUDDY_REDIS_URL, else an embedded Redis."
        ),
    ] = None,
    broker_url: BrokerOpt = None,
    local_workers: Annotated[
        int | None,
        typer.Option(
            "--local-workers",
            min=0,
            help="Local worker processes per agent. Default 1 with the embedded Redis, 0 with a Redis URL.",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, max=1000, help="Tasks per Celery message. Default: adaptive."),
    ] = None,
    worker_wait: Annotated[
        float,
        typer.Option("--worker-wait", min=1, help="Seconds an agent may have no live worker before abort."),
    ] = 10.0,
    tools: ToolsOpt = None,
    conflict: ConflictOpt = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the progress bars.")
    ] = True,
    allow_critical: Annotated[
        bool, typer.Option("--allow-critical", help="Let CRITICAL tools run live (still needing approval).")
    ] = False,
    auto_approve: Annotated[
        AutoApprove | None,
        typer.Option(
            "--auto-approve",
            help="Approve requests up to this risk without an operator (unattended runs; in the report).",
        ),
    ] = None,
    approval_timeout: Annotated[
        float | None,
        typer.Option(
            "--approval-timeout", min=0.1, help="Seconds a request may stay pending; then denied. 600."
        ),
    ] = None,
    max_fail_percentage: Annotated[
        float | None,
        typer.Option(
            "--max-fail-percentage",
            min=0,
            max=100,
            help="Abort when MORE than P% of a wave's tasks fail (failed, timed_out, rolled_back, "
            "needs_review, lost); "
            "later waves are not sent, exit 3. 0 aborts on the first failure; with P=50 a wave of one "
            "task that fails (100%) aborts; 100 never aborts.",
        ),
    ] = None,
    min_health: Annotated[
        float | None,
        typer.Option(
            "--min-health",
            min=0,
            max=100,
            help="Abort (exit 3) when a wave's health score (0-100) falls below this.",
        ),
    ] = None,
    optimize: Annotated[
        bool,
        typer.Option(
            "--optimize/--no-optimize",
            help="Between waves, re-tune agents and re-assign the next wave (default), or keep the plan.",
        ),
    ] = True,
    max_failures: Annotated[
        int | None,
        typer.Option(
            "--max-failures", min=0, help="Abort when MORE than N tasks have failed in the campaign."
        ),
    ] = None,
    rollback_on_abort: Annotated[
        bool,
        typer.Option(
            "--rollback-on-abort",
            help="On abort, compensate the succeeded reversible tasks (newest first); see --rollback-scope.",
        ),
    ] = False,
    rollback_scope: Annotated[
        RollbackScope,
        typer.Option("--rollback-scope", help="wave: the aborted wave only; campaign: every wave."),
    ] = RollbackScope.wave,
    wave_timeout: Annotated[
        float | None,
        typer.Option(
            "--wave-timeout",
            min=1,
            help="Seconds before a wave's members without an outcome count as lost (idempotent ones are "
            "sent once more). Default: from the tasks' timeouts and the agents' concurrency.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=0, max=65535, help="Serve Prometheus metrics here while it runs."),
    ] = None,
    metrics_address: Annotated[
        str, typer.Option("--metrics-address", help="Address for --metrics-port.")
    ] = "127.0.0.1",
    root: RootOpt = None,
) -> None:
    """Run a plan as a wave campaign and write its outputs."""
    from buddy.coordinator.loop import CampaignOptions, new_campaign_id

    _set_broker(broker_url)
    try:
        file_root = _set_root(root)
        settings = get_settings()
        url = redis_url or settings.redis_url
        cfg = _load_config(config)
        specs = _resolve_agents(agents, cfg)
        wd = (workdir or Path(cfg.workdir or ".")).resolve()
        strat = strategy or cfg.strategy or Strategy.ROUND_ROBIN
        tool_modules = [*settings.tools, *cfg.tools, *_split(tools)]
        cp = _plan(plan, schedule, cfg, specs, strat, wd, tool_modules, conflict)
    except (PlanError, ConfigError, ContractError) as e:
        _fail(str(e))  # bad input first (exit 2), whatever the Redis
    if url:  # the fleet's Redis: fail now, not after the local workers
        _probe(url)

    cid = new_campaign_id()
    out_root = out_dir or Path("outputs") / cid
    n_local = (
        local_workers
        if local_workers is not None
        else (cfg.local_workers if cfg.local_workers is not None else (0 if url else 1))
    )
    worker_env = {"BUDDY_TOOLS": ",".join(tool_modules)}
    if file_root:
        worker_env["BUDDY_FILE_ROOT"] = file_root
    if cfg.shell_allow:
        worker_env["BUDDY_SHELL_ALLOW"] = ",".join(sorted({*settings.shell_allow, *cfg.shell_allow}))
    if cfg.python_allow:
        worker_env["BUDDY_PYTHON_ALLOW"] = ",".join(sorted({*settings.python_allow, *cfg.python_allow}))

    options = CampaignOptions(
        mode=mode or cfg.mode or Mode.MOCK,
        workdir=wd,
        out_dir=out_root,
        batch_size=batch_size or cfg.batch_size,
        worker_wait_s=worker_wait,
        progress=progress,
        campaign_id=cid,
        schedule_path=schedule,
        config_path=config,
        escalation=cfg.escalation.model_copy(
            update={
                "allow_critical": allow_critical or cfg.escalation.allow_critical,
                "auto_approve": auto_approve.value if auto_approve else cfg.escalation.auto_approve,
            }
        ),
        approval_timeout_s=approval_timeout or cfg.approval_timeout_s or 600.0,
        max_fail_percentage=max_fail_percentage
        if max_fail_percentage is not None
        else cfg.max_fail_percentage,
        max_failures=max_failures if max_failures is not None else cfg.max_failures,
        rollback_on_abort=rollback_on_abort,
        rollback_scope=rollback_scope.value,
        wave_timeout_s=wave_timeout,
        optimize=optimize,
        min_health=min_health,
    )
    _execute(cp, options, url, specs, n_local, worker_env, tool_modules, metrics_port, metrics_address)


def _execute(
    cp: CampaignPlan,
    options: CampaignOptions,
    url: str | None,
    specs: list[AgentSpec],
    n_local: int,
    worker_env: dict[str, str],
    tool_modules: list[str],
    metrics_port: int | None = None,
    metrics_address: str = "127.0.0.1",
) -> NoReturn:
    """Run (or resume) a campaign: Redis (embedded when ``url`` is None), local workers, the
    coordinator; stop what was started on every exit path, Ctrl-C and SIGTERM included."""
    from buddy.coordinator.loop import Coordinator
    from buddy.infra.fleet import LocalFleet
    from buddy.infra.prometheus import CampaignMetrics, FleetCollector, MetricsServer, serve
    from buddy.infra.redis_server import EmbeddedRedis
    from buddy.infra.transport import make_dispatcher
    from buddy.tools.registry import default_registry

    settings = get_settings()
    _probe_broker(settings.broker_url)  # before the embedded Redis and the local workers start
    out_root = options.out_dir or Path("outputs") / str(options.campaign_id)
    embedded: EmbeddedRedis | None = None
    fleet: LocalFleet | None = None
    metrics_server: MetricsServer | None = None
    previous = signal.signal(signal.SIGTERM, _sigterm)
    code = EXIT_ABORTED
    try:
        if url is None:
            embedded = EmbeddedRedis().start()
            url = embedded.url
        if n_local:
            fleet = LocalFleet(
                url, specs, workers_per_agent=n_local, env=worker_env, log_dir=out_root / "logs"
            )
            fleet.start()
        store = Store(
            redis_client(url), events_maxlen=settings.events_maxlen, stale_s=settings.heartbeat_stale_s
        )
        store.r.ping()
        metrics = None
        if metrics_port is not None:
            metrics = CampaignMetrics(fleet=FleetCollector(store, agents=[a.id for a in specs]))
            metrics_server = serve(metrics.registry, metrics_port, metrics_address)
        options.redis_display = "embedded" if embedded else redact_url(url)
        options.embedded = embedded is not None
        coordinator = Coordinator(
            cp,
            store,
            make_dispatcher(url, settings),
            default_registry(tool_modules),
            options,
            console=err,
            metrics=metrics,
        )
        summary = coordinator.run()
        code = summary.exit_code
        err.print(
            f"{summary.status}: {summary.counts.succeeded}/{len(cp.tasks)} succeeded "
            f"in {summary.wall_s:.1f} s; outputs in {out_root}",
            highlight=False,
        )
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
        err.print("interrupted")
    except (InfrastructureError, OSError) as e:
        err.print(f"cannot run the campaign: {e}", markup=False)
    except Exception as e:
        import redis as redis_mod

        if not isinstance(e, redis_mod.RedisError):
            raise
        err.print(f"cannot reach Redis at {redact_url(url or '')}: {e}", markup=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_server is not None:
            metrics_server.stop()
        if fleet is not None:
            fleet.stop()
        if embedded is not None:
            embedded.stop()
    raise typer.Exit(code)


@app.command()
def resume(
    campaign: Annotated[str, typer.Argument(help="Campaign id (its state must be in Redis).")],
    plan: Annotated[Path, typer.Option("--plan", help="The campaign's plan; its digest must match.")],
    schedule: ScheduleOpt = None,
    config: ConfigOpt = None,
    redis_url: RedisOpt = None,
    local_workers: Annotated[
        int, typer.Option("--local-workers", min=0, help="Local worker processes per agent (default 0).")
    ] = 0,
    tools: ToolsOpt = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Continue a campaign from its first unfinished wave (after a crash or kill -9 of the coordinator).

    Tasks that have a final outcome are never run again; tasks whose attempt is still running
    on a worker are waited for, not duplicated. The plan (and schedule) must hash to the digest
    the campaign started with.
    """
    from buddy.coordinator.loop import CampaignOptions

    settings = get_settings()
    store, url = _store(redis_url)
    info = _redis_call(url, lambda: store.campaign(campaign))
    if not info or "options" not in info:
        _fail(
            f"no campaign {campaign!r} in Redis at {redact_url(url)} "
            "(an embedded campaign's state ends with its run)"
        )
    if info.get("status") in ("succeeded", "finished_with_failures"):
        _fail(f"campaign {campaign} already finished ({info['status']}); nothing to resume", 0)
    options = CampaignOptions.model_validate_json(info["options"])
    options.resume, options.progress, options.campaign_id = True, progress, campaign
    stored = json.loads(info["config"])
    specs = [AgentSpec.model_validate(a) for a in stored["agents"]]
    try:
        cfg = _load_config(config or options.config_path)
        tool_modules = [*settings.tools, *cfg.tools, *_split(tools)]
        cp = _plan(
            plan,
            schedule or options.schedule_path,
            cfg,
            specs,
            Strategy(info["strategy"]),
            options.workdir,
            tool_modules,
        )
    except (PlanError, ConfigError, ContractError) as e:
        _fail(str(e))
    if cp.digest != info.get("plan_digest"):
        _fail(
            f"{plan}: sha256 {cp.digest[:16]}… does not match the campaign's plan digest "
            f"{info.get('plan_digest', '')[:16]}…; resume needs the same plan (and schedule)"
        )
    _execute(cp, options, url, specs, local_workers, {"BUDDY_TOOLS": ",".join(tool_modules)}, tool_modules)


@app.command()
def abort(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    reason: Annotated[str, typer.Option("--reason")] = "requested by an operator",
    redis_url: RedisOpt = None,
) -> None:
    """Stop a running campaign from another shell: no further wave is sent; it exits 3."""
    from buddy.safety.gates import operator

    store, url = _store(redis_url)
    info = _redis_call(url, lambda: store.campaign(campaign))
    if not info:
        _fail(f"no campaign {campaign!r} in Redis at {redact_url(url)}")
    if info.get("status") != "running":
        _fail(f"campaign {campaign} is {info.get('status')}, not running", 1)
    _redis_call(url, lambda: store.request_abort(campaign, f"{reason} (by {operator()})"))
    out.print(f"abort requested for {campaign}; its coordinator stops within a second")


@app.command()
def review(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    task: Annotated[str, typer.Argument(help="A task that ended needs_review or lost.")],
    mark: Annotated[ReviewMark, typer.Option("--mark", help="What really happened, or run it again.")],
    reason: Annotated[str, typer.Option("--reason")] = "",
    redis_url: RedisOpt = None,
) -> None:
    """Settle a task an operator must look at: mark it succeeded or failed, or `retry` it
    (the outcome is removed and `buddy resume` runs the task again)."""
    from buddy.models import TaskStatus
    from buddy.safety.gates import operator
    from buddy.state.lifecycle import transition

    store, url = _store(redis_url)
    o = _redis_call(url, lambda: store.outcomes(campaign, [task])).get(task)
    if o is None:
        _fail(f"campaign {campaign} has no outcome for task {task!r}")
    if o.status not in (TaskStatus.NEEDS_REVIEW, TaskStatus.LOST):
        _fail(f"task {task} is {o.status.value}; only needs_review or lost tasks are reviewed", 1)
    who = f"operator {operator()}"
    why = reason or f"marked {mark.value} in review"
    if mark is ReviewMark.retry:
        move = transition(campaign, task, o.status, TaskStatus.QUEUED, by=who, reason=why)
        _redis_call(url, lambda: store.forget_outcome(campaign, task, move))
        out.print(f"{task}: its outcome is removed; run `buddy resume {campaign} --plan …` to run it again")
        return
    status = TaskStatus(mark.value)
    move = transition(campaign, task, o.status, status, by=who, reason=why)
    settled = o.model_copy(
        update={"status": status, "error_msg": f"{o.error_msg or ''} [review: {why}]".strip()}
    )
    _redis_call(url, lambda: store.replace_outcome(settled, move))
    out.print(f"{task}: {o.status.value} → {status.value}")


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@app.command()
def worker(
    agent: Annotated[
        list[str], typer.Option("--agent", help="Agent id whose queue to consume (repeatable).")
    ],
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c", min=1, help="Pool size.")] = None,
    pool: Annotated[str, typer.Option("--pool", "-P", help="prefork, threads or solo.")] = "prefork",
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Worker node name (default <agents>@host).")
    ] = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Default: BUDDY_REDIS_URL.")] = None,
    broker_url: BrokerOpt = None,
    tools: ToolsOpt = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l")] = "INFO",
    local: Annotated[
        bool, typer.Option("--local", hidden=True, help="Started by `buddy run`: skip mingle and gossip.")
    ] = False,
    inject_failure_rate: Annotated[
        float | None,
        typer.Option(
            "--inject-failure-rate",
            min=0.0,
            max=1.0,
            help="TESTING AID: fail this fraction (0-1) of attempts with a retryable InjectedFailure.",
        ),
    ] = None,
    coordinator_queue: Annotated[
        bool, typer.Option("--coordinator-queue/--no-coordinator-queue", help="Also run chord bodies.")
    ] = True,
    root: RootOpt = None,
) -> None:
    """Start a Celery worker on the agents' queues (buddy.agent.<id>) and buddy.coordinator."""
    from buddy.models import AGENT_ID_RE, COORDINATOR_QUEUE

    ids = _split(agent)
    bad = [a for a in ids if not AGENT_ID_RE.match(a)]
    if not ids or bad:
        _fail(f"--agent: bad agent id(s) {', '.join(bad) or '(none)'}: use 1-64 of A-Z a-z 0-9 _ . -")
    if pool not in ("prefork", "threads", "solo"):
        _fail("--pool must be prefork, threads or solo")
    if redis_url:
        os.environ["BUDDY_REDIS_URL"] = redis_url
    _set_broker(broker_url)
    if tools:
        os.environ["BUDDY_TOOLS"] = ",".join([*get_settings().tools, *_split(tools)])
    if inject_failure_rate is not None:
        os.environ["BUDDY_INJECT_FAILURE_RATE"] = str(inject_failure_rate)
    _set_root(root)
    get_settings.cache_clear()
    _redis_url(None)  # a wrong URL or password: exit 3 now, not after Celery's 100 retries
    _probe_broker(get_settings().broker_url)
    try:
        from buddy.tools.registry import default_registry

        default_registry(get_settings().tools)  # fail now, not on the first task
    except ContractError as e:
        _fail(str(e))
    from workers import app as celery_app

    queues = [agent_queue(a) for a in ids] + ([COORDINATOR_QUEUE] if coordinator_queue else [])
    argv = ["worker", "-Q", ",".join(queues), "-P", pool, "-l", loglevel, "-E"]
    argv += ["-n", f"{name or '-'.join(ids)}@%h"]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if local:  # a private fleet has no neighbours to sync revokes with: start 1 s sooner
        argv += ["--without-mingle", "--without-gossip"]
    # Celery.worker_main drops the worker's exit code (an "Unrecoverable error" would exit 0 and
    # a supervisor restarting on failure only would leave the agent without a worker)
    code = celery_app.start(argv)
    if code:
        raise typer.Exit(code)


@app.command("tools")
def tools_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Every contract with its argument schema.")] = False,
    tools: ToolsOpt = None,
) -> None:
    """List the registered tools and their contracts."""
    from buddy.tools.registry import default_registry

    try:
        registry = default_registry([*get_settings().tools, *_split(tools)])
    except ContractError as e:
        _fail(str(e))
    settings = get_settings()
    if as_json:
        print(json.dumps([c.describe() for c in registry], indent=2))
        return
    table = Table(title="tools")
    for col in (
        "name",
        "risk",
        "reversible",
        "idempotent",
        "exclusive",
        "timeout s",
        "retries",
        "description",
    ):
        table.add_column(col)
    for c in registry:
        table.add_row(
            c.name,
            c.risk.value,
            "yes" if c.reversible else "no",
            "yes" if c.idempotent else ("by args" if c.idempotent_of else "no"),
            "yes" if c.exclusive else "no",
            f"{c.timeout_s:g}",
            str(c.retry.max_attempts - 1),
            c.description,
        )
    out.print(table)
    shell = ", ".join(settings.shell_allow) or "(empty: shell runs nothing)"
    python = ", ".join(settings.python_allow) or "(empty: python.call runs nothing)"
    out.print(f"shell allow-list (BUDDY_SHELL_ALLOW): {shell}")
    out.print(f"python.call allow-list (BUDDY_PYTHON_ALLOW): {python}")


def _probe(url: str) -> None:
    """PING the Redis at ``url`` once, without retries, within ``BUDDY_CONNECT_TIMEOUT_S`` seconds
    (:func:`buddy.transport.check_redis`). On failure print the redacted URL, what happened and
    the fix, and exit 3 (2 for a URL that is not a Redis URL); never a traceback."""
    try:
        check_redis(url, get_settings().connect_timeout_s)
    except (RedisUnavailable, ConfigError) as e:
        # unwrapped, so the URL and the fix can be copied whole
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ABORTED if isinstance(e, RedisUnavailable) else EXIT_INVALID) from None


def _set_broker(broker_url: str | None) -> None:
    """``--broker-url``: becomes ``BUDDY_BROKER_URL`` of this process, so the coordinator's app,
    :class:`buddy.fleet.LocalFleet`'s workers (they inherit the environment) and Celery agree."""
    if broker_url:
        os.environ["BUDDY_BROKER_URL"] = broker_url
        get_settings.cache_clear()


def _probe_broker(url: str | None) -> None:
    """Connect once to the broker ``url`` (``BUDDY_BROKER_URL``; None: the broker is the Redis,
    probed by :func:`_probe`) within ``BUDDY_CONNECT_TIMEOUT_S`` seconds, without retries
    (:func:`buddy.transport.check_broker`). On failure print the redacted URL, what happened and
    the fix, and exit 3 (2 for a URL that is not a broker URL)."""
    if not url:
        return
    try:
        check_broker(url, get_settings().connect_timeout_s)
    except (BrokerUnavailable, RedisUnavailable, ConfigError) as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID if isinstance(e, ConfigError) else EXIT_ABORTED) from None


def _redis_url(redis_url: str | None) -> str:
    """The Redis of a command: ``--redis-url``, else ``BUDDY_REDIS_URL``, else localhost:6379,
    probed once (:func:`_probe`) before the command does any work."""
    url = redis_url or get_settings().redis_url or DEFAULT_REDIS_URL
    _probe(url)
    return url


def _store(redis_url: str | None) -> tuple[Store, str]:
    """A :class:`Store` on the command's Redis (:func:`_redis_url`: probed first) and its URL."""
    url = _redis_url(redis_url)
    return Store(redis_client(url), stale_s=get_settings().heartbeat_stale_s), url


@app.command()
def status(
    campaign: Annotated[str | None, typer.Argument(help="Campaign id; none lists recent campaigns.")] = None,
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Default: BUDDY_REDIS_URL.")] = None,
) -> None:
    """Show campaigns and their waves, read from Redis."""
    import redis as redis_mod

    store, url = _store(redis_url)
    try:
        if campaign is None:
            table = Table(title="campaigns")
            for col in ("campaign", "status", "mode", "tasks", "waves", "current wave", "created"):
                table.add_column(col)
            for cid in store.campaign_ids():
                c = store.campaign(cid)
                table.add_row(
                    cid, c.get("status", "?"), c.get("mode", ""), c.get("tasks", ""), c.get("waves", ""),
                    c.get("current_wave", ""), c.get("created_at", ""),
                )  # fmt: skip
            out.print(table)
            return
        c = store.campaign(campaign)
        if not c:
            _fail(f"no campaign {campaign!r} in Redis at {redact_url(url)}")
        out.print(
            f"[bold]{campaign}[/]: {c.get('status')} (mode {c.get('mode')}, {c.get('tasks')} tasks, "
            f"{c.get('waves')} waves, outputs {c.get('out_dir')})"
        )
        table = Table()
        for col in ("wave", "dispatched", "done", "failed", "running", "started"):
            table.add_column(col)
        for n in range(1, int(c.get("current_wave") or 0) + 1):
            w = store.wave_counters(campaign, n)
            if w:
                table.add_row(
                    str(n), w.get("dispatched", "0"), w.get("done", "0"), w.get("failed", "0"),
                    w.get("running", "0"), w.get("started_at", ""),
                )  # fmt: skip
        out.print(table)
    except redis_mod.RedisError as e:
        _fail(f"cannot reach Redis at {redact_url(url)}: {e}", EXIT_ABORTED)


@app.command()
def agents(
    redis_url: Annotated[str | None, typer.Option("--redis-url", help="Default: BUDDY_REDIS_URL.")] = None,
) -> None:
    """Show every agent's state: status, live workers, in flight, processed, failed."""
    import redis as redis_mod

    store, url = _store(redis_url)
    try:
        table = Table(title="agents")
        for col in (
            "agent",
            "queue",
            "status",
            "live workers",
            "heartbeat age s",
            "in flight",
            "processed",
            "failed",
        ):
            table.add_column(col)
        for aid in store.agent_ids():
            a = store.agent_info(aid)
            table.add_row(
                aid,
                agent_queue(aid),
                a.status,
                ", ".join(a.live_workers) or "–",
                f"{a.heartbeat_age_s:.1f}" if a.heartbeat_age_s is not None else "–",
                str(a.in_flight),
                str(a.processed),
                str(a.failed),
                ", ".join(f"{k}={a.params[k]}" for k in ("concurrency", "confidence_weight") if k in a.params)
                or "–",
            )
        out.print(table)
    except redis_mod.RedisError as e:
        _fail(f"cannot reach Redis at {redact_url(url)}: {e}", EXIT_ABORTED)


@app.command("lock")
def lock_cmd(
    reason: Annotated[str, typer.Option("--reason", help="Why; shown to every campaign that runs mock.")],
    redis_url: RedisOpt = None,
) -> None:
    """Lock the system: every campaign runs mock until `buddy unlock` (checked per wave and per task)."""
    from buddy.safety.gates import lock

    store, url = _store(redis_url)
    _redis_call(url, lambda: lock(store, reason))
    out.print(f"locked: {reason}")


@app.command("unlock")
def unlock_cmd(redis_url: RedisOpt = None) -> None:
    """Remove the system lock."""
    from buddy.safety.gates import unlock

    store, url = _store(redis_url)
    was = _redis_call(url, lambda: unlock(store))
    out.print("unlocked" if was else "was not locked")


approvals_app = typer.Typer(help="List, approve and deny approval requests of HIGH/CRITICAL tasks.")
app.add_typer(approvals_app, name="approvals")


@approvals_app.command("list")
def approvals_list(
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign id; none: recent campaigns' requests.")
    ] = None,
    pending_only: Annotated[bool, typer.Option("--pending", help="Only undecided requests.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    redis_url: RedisOpt = None,
) -> None:
    """Show approval requests: task, wave, risk, tool, status, who decided and when."""
    from buddy.safety.gates import Approvals

    store, url = _store(redis_url)
    approvals = Approvals(store)
    cids = [campaign] if campaign else _redis_call(url, approvals.campaigns)
    rows = [
        a
        for cid in cids
        for a in _redis_call(url, partial(approvals.get, cid))
        if not pending_only or a.status == "pending"
    ]
    if as_json:
        for a in rows:
            print(a.model_dump_json())
        return
    table = Table(title="approval requests")
    cols = ["task", "wave", "risk", "tool", "status", "by", "decided at", "reason", "args"]
    if campaign is None:
        cols.insert(0, "campaign")
    for col in cols:
        table.add_column(col, overflow="fold")
    for a in rows:
        cells = [a.task_id, str(a.wave), a.risk.value, a.tool, a.status, a.by or "–",
                 a.decided_at or "–", a.reason or "–", a.summary[:80]]  # fmt: skip
        table.add_row(*([a.campaign_id, *cells] if campaign is None else cells))
    out.print(table)


def _decide(
    campaign: str,
    tasks: list[str] | None,
    wave: int | None,
    status: Literal["approved", "denied"],
    reason: str,
    by: str | None,
    redis_url: str | None,
) -> None:
    from buddy.safety.gates import Approvals, operator

    store, url = _store(redis_url)
    approvals = Approvals(store)
    ids = list(tasks or [])
    if wave is not None:
        ids += [a.task_id for a in _redis_call(url, lambda: approvals.get(campaign)) if a.wave == wave]
    if not ids:
        _fail("name the tasks (TASK…) or a wave (--wave N)")
    result = _redis_call(
        url, lambda: approvals.decide(campaign, ids, status, by=by or operator(), reason=reason)
    )
    bad = {t: r for t, r in result.items() if r != "decided"}
    for t, r in result.items():
        out.print(f"{t}: {status if r == 'decided' else r}", highlight=False)
    if bad:
        raise typer.Exit(EXIT_INVALID if any(r == "no request" for r in bad.values()) else 1)


@approvals_app.command("approve")
def approvals_approve(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    tasks: Annotated[list[str] | None, typer.Argument(help="Task ids.")] = None,
    wave: Annotated[int | None, typer.Option("--wave", help="Every pending request of wave N.")] = None,
    reason: Annotated[str, typer.Option("--reason")] = "",
    by: Annotated[str | None, typer.Option("--by", help="Who approves (default user@host).")] = None,
    redis_url: RedisOpt = None,
) -> None:
    """Approve pending requests (from any machine); who and when are recorded."""
    _decide(campaign, tasks, wave, "approved", reason, by, redis_url)


@approvals_app.command("deny")
def approvals_deny(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    tasks: Annotated[list[str] | None, typer.Argument(help="Task ids.")] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded and shown in the outcome).")] = "",
    wave: Annotated[int | None, typer.Option("--wave", help="Every pending request of wave N.")] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who denies (default user@host).")] = None,
    redis_url: RedisOpt = None,
) -> None:
    """Deny pending requests: those tasks end `denied` and nothing of them runs."""
    if not reason:
        _fail("--reason is required to deny")
    _decide(campaign, tasks, wave, "denied", reason, by, redis_url)


@app.command("rollback")
def rollback_cmd(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    wave: Annotated[int | None, typer.Option("--wave", help="Only this wave (default: every wave).")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds to wait for the workers.")
    ] = 300,
    redis_url: RedisOpt = None,
    tools: ToolsOpt = None,
) -> None:
    """Compensate a campaign's succeeded reversible tasks, newest first, through its agents' workers.

    Needs the campaign's Redis (a fleet's; an embedded campaign's Redis is gone with it) and a
    live worker for each agent that ran a task to undo. Irreversible tasks are listed, not undone.
    """
    from buddy.coordinator.rollback import compensate
    from buddy.infra.transport import make_dispatcher
    from buddy.tools.registry import default_registry

    store, url = _store(redis_url)
    info = _redis_call(url, lambda: store.campaign(campaign))
    if not info:
        _fail(f"no campaign {campaign!r} in Redis at {redact_url(url)}")
    registry = default_registry([*get_settings().tools, *_split(tools)])
    outcomes = _redis_call(url, lambda: store.outcomes(campaign))
    events = _redis_call(
        url,
        lambda: compensate(
            make_dispatcher(url), store, campaign, outcomes.values(), registry, wave=wave, timeout_s=timeout
        ),
    )
    table = Table(title=f"rollback of {campaign}")
    for col in ("task", "wave", "agent", "status", "detail"):
        table.add_column(col)
    for e in events:
        table.add_row(e.task_id, str(e.wave or "–"), e.agent_id or "–", e.status, e.error or e.reason or "–")
    out.print(table)
    out_dir = Path(info.get("out_dir") or "")
    if out_dir.is_dir() and events:
        from buddy.outputs.writer import OutputWriter

        OutputWriter(out_dir).append_jsonl(OutputWriter.ROLLBACKS, events)
        out.print(f"appended to {out_dir / OutputWriter.ROLLBACKS}")
    if any(e.status == "failed" for e in events):
        raise typer.Exit(1)


T = TypeVar("T")


def _redis_call(url: str, fn: Callable[[], T]) -> T:
    import redis as redis_mod

    try:
        return fn()
    except redis_mod.RedisError as e:
        _fail(f"cannot reach Redis at {redact_url(url)}: {e}", EXIT_ABORTED)


def main() -> None:
    """Entry point of the ``buddy`` console script."""
    try:
        from buddy.infra.logs import setup_logging

        setup_logging(get_settings())
        app()
    except BuddyError as e:  # a user-facing error that escaped a command
        err.print(f"error: {e}", markup=False)
        sys.exit(EXIT_INVALID if isinstance(e, (PlanError, ConfigError, ContractError)) else EXIT_ABORTED)


from buddy.cli.ops import register  # noqa: E402  (the ops commands: flower, exporter, doctor)

register(app)
