"""Every option of a campaign run, and the one place their precedence is resolved.

Precedence, for each option: the argument (a ``buddy run`` flag or a ``Campaign`` keyword)
> ``campaign.yaml`` > the environment (``BUDDY_*``, :class:`~buddy.config.Settings`) > the
default. ``buddy run``'s flags and ``buddy.Campaign``'s keywords are the same names
(``--max-fail-percentage`` is ``max_fail_percentage``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from buddy.config import CampaignConfig, Settings, parse_agents
from buddy.coordinator.options import CampaignOptions, NotifyConfig
from buddy.errors import ConfigError
from buddy.models import AgentSpec, Mode, Strategy
from buddy.plan.policy import ConflictPolicy, ConflictType, Resolution


class RunArgs(BaseModel):
    """The arguments of one campaign run, as given (None: not given). Seconds for
    ``worker_wait``, ``approval_timeout``, ``wave_timeout``, ``lock_timeout``;
    ``max_fail_percentage`` 0–100; ``min_health`` a 0–100 score; ``notify_url`` a webhook
    that receives the campaign's notifications (campaign.yaml ``notify:``)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    schedule: Path | None = None
    config: Path | None = None
    agents: Any = None
    strategy: Strategy | None = None
    mode: Mode | None = None
    workdir: Path | None = None
    out_dir: Path | None = None
    redis_url: str | None = None
    broker_url: str | None = None
    local_workers: int | None = Field(default=None, ge=0, le=64)
    batch_size: int | None = Field(default=None, ge=1, le=1000)
    worker_wait: float = Field(default=10.0, ge=1)
    tools: list[str] = Field(default_factory=list)
    conflict: list[str] = Field(default_factory=list)
    progress: bool = False
    allow_critical: bool = False
    auto_approve: Literal["LOW", "MEDIUM", "HIGH"] | None = None
    approval_timeout: float | None = Field(default=None, gt=0)
    max_fail_percentage: float | None = Field(default=None, ge=0, le=100)
    min_health: float | None = Field(default=None, ge=0, le=100)
    optimize: bool = True
    max_failures: int | None = Field(default=None, ge=0)
    rollback_on_abort: bool = False
    rollback_scope: Literal["wave", "campaign"] = "wave"
    wave_timeout: float | None = Field(default=None, ge=1)
    lock_timeout: float | None = Field(default=None, gt=0)
    auto_lock: bool | None = None
    fresh: bool = False
    notify_url: HttpUrl | None = None
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_address: str = "127.0.0.1"
    root: Path | None = None
    campaign_id: str | None = None


#: The keyword names a campaign takes besides :class:`RunArgs`' (the Python API only).
API_ONLY = ("approver", "hooks", "clock", "console", "fleet")


def check_keywords(given: dict[str, Any], where: str) -> None:
    """Raise :class:`TypeError` for an unknown keyword, naming the nearest valid one."""
    valid = [*RunArgs.model_fields, *API_ONLY]
    for name in given:
        if name not in valid:
            near = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid: {', '.join(sorted(valid))}"
            raise TypeError(f"{where} got an unexpected keyword argument {name!r}{hint}")


def resolve_agents(value: Any, config: CampaignConfig) -> list[AgentSpec]:
    """Agents from ``value`` — a count (3 → a1..a3), ``"a1,a2"``, a list of ids or of
    :class:`AgentSpec` / dicts — keeping the tools and concurrency ``campaign.yaml`` gives
    the same ids; ``None``: the config's agents, else three."""
    if value is None:
        return config.agents or parse_agents(None)
    if isinstance(value, int) and not isinstance(value, bool):
        agents = parse_agents(str(value))
    elif isinstance(value, str):
        agents = parse_agents(value)
    else:
        items = list(value)
        if all(isinstance(a, str) for a in items):
            agents = parse_agents(",".join(items))
        else:
            agents = [a if isinstance(a, AgentSpec) else AgentSpec.model_validate(a) for a in items]
    if config.agents:
        known = {a.id: a for a in config.agents}
        agents = [known.get(a.id, a) for a in agents]
    return agents


def conflict_policy(config: CampaignConfig, flags: list[str]) -> ConflictPolicy:
    """``campaign.yaml``'s conflict resolutions overridden by ``TYPE=RESOLUTION`` arguments.
    Raises :class:`ConfigError` for a malformed one."""
    chosen = dict(config.conflicts.resolutions)
    for flag in flags:
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
        return ConflictPolicy(resolutions=chosen)
    except ValueError as e:
        raise ConfigError(f"conflict resolutions: {e}") from None


def tool_modules(args: RunArgs, config: CampaignConfig, settings: Settings) -> list[str]:
    """Modules imported for their ``@buddy.tool`` contracts: environment, config, arguments."""
    return [*settings.tools, *config.tools, *args.tools]


def workdir(args: RunArgs, config: CampaignConfig) -> Path:
    return (args.workdir or Path(config.workdir or ".")).resolve()


def campaign_options(
    args: RunArgs, config: CampaignConfig, campaign_id: str, workdir: Path, out_dir: Path
) -> CampaignOptions:
    """The coordinator's options, each resolved by the precedence of the module docstring."""
    return CampaignOptions(
        mode=args.mode or config.mode or Mode.MOCK,
        workdir=workdir,
        out_dir=out_dir,
        batch_size=args.batch_size or config.batch_size,
        worker_wait_s=args.worker_wait,
        progress=args.progress,
        campaign_id=campaign_id,
        schedule_path=args.schedule,
        config_path=args.config,
        escalation=config.escalation.model_copy(
            update={
                "allow_critical": args.allow_critical or config.escalation.allow_critical,
                "auto_approve": args.auto_approve or config.escalation.auto_approve,
            }
        ),
        approval_timeout_s=args.approval_timeout or config.approval_timeout_s or 600.0,
        max_fail_percentage=args.max_fail_percentage
        if args.max_fail_percentage is not None
        else config.max_fail_percentage,
        max_failures=args.max_failures if args.max_failures is not None else config.max_failures,
        rollback_on_abort=args.rollback_on_abort,
        rollback_scope=args.rollback_scope,
        wave_timeout_s=args.wave_timeout,
        optimize=args.optimize,
        min_health=args.min_health,
        lock_timeout_s=args.lock_timeout if args.lock_timeout is not None else config.lock_timeout_s,
        auto_lock=args.auto_lock if args.auto_lock is not None else config.auto_lock,
        monitor=config.monitor,
        notify=notify_config(args, config),
        fresh=args.fresh,
    )


def notify_config(args: RunArgs, config: CampaignConfig) -> NotifyConfig | None:
    """The webhook: ``notify_url`` (``--notify-url``) over campaign.yaml's ``notify.url``,
    keeping the file's other settings (RunArgs validated the URL: http or https)."""
    if args.notify_url is None:
        return config.notify
    base = config.notify.model_dump(exclude={"url"}) if config.notify else {}
    return NotifyConfig.model_validate({**base, "url": str(args.notify_url)})


def local_workers(args: RunArgs, config: CampaignConfig, redis_url: str | None) -> int:
    """Worker processes per agent started here: 1 with the embedded Redis, 0 with a Redis URL."""
    if args.local_workers is not None:
        return args.local_workers
    if config.local_workers is not None:
        return config.local_workers
    return 0 if redis_url else 1


def worker_env(config: CampaignConfig, settings: Settings, modules: list[str]) -> dict[str, str]:
    """Environment for local workers: tool modules, file root and allow-lists."""
    env = {"BUDDY_TOOLS": ",".join(modules)}
    if settings.file_root:
        env["BUDDY_FILE_ROOT"] = settings.file_root
    if config.shell_allow:
        env["BUDDY_SHELL_ALLOW"] = ",".join(sorted({*settings.shell_allow, *config.shell_allow}))
    if config.python_allow:
        env["BUDDY_PYTHON_ALLOW"] = ",".join(sorted({*settings.python_allow, *config.python_allow}))
    return env
