"""``buddy.resume``: continue a campaign from its first unfinished wave after its coordinator
died (a crash, ``kill -9``). Its state must be in Redis: an embedded campaign's ends with its run.

Tasks that have a final outcome are never run again; tasks whose attempt is still running on
a worker are waited for, not duplicated. The plan (and schedule) must hash to the digest the
campaign started with.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console

from buddy.api.campaign import plan_campaign, run_campaign
from buddy.api.options import RunArgs, tool_modules
from buddy.config import CampaignConfig, get_settings, load_campaign_config
from buddy.coordinator.approvals import Approver
from buddy.coordinator.options import CampaignOptions, Clock
from buddy.coordinator.result import CampaignResult
from buddy.errors import ConfigError, PlanError
from buddy.infra.probes import check_redis
from buddy.infra.transport import redact_url, redis_client
from buddy.models import AgentSpec, Strategy
from buddy.state.store import Store
from buddy.tools.registry import default_registry


class CampaignFinished(ConfigError):
    """``resume`` of a campaign that already finished (succeeded or finished with failures)."""


def resume(
    campaign_id: str,
    *,
    plan: str | Path,
    redis_url: str | None = None,
    schedule: str | Path | None = None,
    config: str | Path | None = None,
    local_workers: int = 0,
    tools: Iterable[str] = (),
    progress: bool = False,
    approver: Approver | None = None,
    hooks: Iterable[Any] = (),
    clock: Clock | None = None,
    console: Console | None = None,
) -> CampaignResult:
    """Resume ``campaign_id`` on the fleet at ``redis_url`` (default ``BUDDY_REDIS_URL``),
    with ``local_workers`` worker processes per agent started here.

    Raises :class:`~buddy.errors.ConfigError` when Redis has no such campaign (or no URL was
    given), :class:`CampaignFinished` when it already finished, :class:`~buddy.errors.PlanError`
    when the plan does not match the campaign's digest, and
    :class:`~buddy.errors.RedisUnavailable` when the Redis cannot be reached."""
    settings = get_settings()
    url = redis_url or settings.redis_url
    if not url:
        raise ConfigError("resume needs the fleet's Redis: pass redis_url= or set BUDDY_REDIS_URL")
    check_redis(url, settings.connect_timeout_s)
    info = Store(redis_client(url)).campaign(campaign_id)
    if not info or "options" not in info:
        raise ConfigError(
            f"no campaign {campaign_id!r} in Redis at {redact_url(url)} "
            "(an embedded campaign's state ends with its run)"
        )
    if info.get("status") in ("succeeded", "finished_with_failures"):
        raise CampaignFinished(
            f"campaign {campaign_id} already finished ({info['status']}); nothing to resume"
        )
    cid, plan = campaign_id, Path(plan)
    options = CampaignOptions.model_validate_json(info["options"])
    options.resume, options.progress, options.campaign_id = True, progress, cid
    agents = [AgentSpec.model_validate(a) for a in json.loads(info["config"])["agents"]]
    config_path = Path(config) if config else options.config_path
    cfg = load_campaign_config(config_path) if config_path else CampaignConfig()
    modules = tool_modules(RunArgs(tools=list(tools)), cfg, settings)
    registry = default_registry(modules)
    cp = plan_campaign(
        plan,
        registry,
        agents,
        Strategy(info["strategy"]),
        cfg,
        conflict=[],
        schedule=Path(schedule) if schedule else options.schedule_path,
        workdir=options.workdir,
    )
    if cp.digest != info.get("plan_digest"):
        raise PlanError.single(
            plan,
            f"sha256 {cp.digest[:16]}… does not match the campaign's plan digest "
            f"{info.get('plan_digest', '')[:16]}…; resume needs the same plan (and schedule)",
        )
    return run_campaign(
        cp,
        registry,
        options,
        agents,
        url=url,
        n_local=local_workers,
        env={"BUDDY_TOOLS": ",".join(modules)},
        hooks=list(hooks),
        approver=approver,
        clock=clock,
        console=console,
    )
