"""What the fleet learned, kept across campaigns: per-agent and per-tool profiles in Redis
(docs/architecture.md, "Learning between waves").

Keys (:class:`~buddy.state.keys.Keys`): ``buddy:profile:agent:<id>`` and
``buddy:profile:tool:<name>`` (hashes: one field ``profile``, the JSON of
:class:`AgentProfile` / :class:`ToolProfile`), indexed by the sets ``buddy:profiles:agents``
and ``buddy:profiles:tools``.

A profile is an average over the tasks seen so far, weighted by how recent they are: when a
campaign folds in new observations, the old ones count with ``samples × ½^(age / half_life_s)``
(``half_life_s`` default 7 days), so a fleet that changed is relearned within a few
campaigns, and a profile nobody refreshed fades (:meth:`Profile.weight`). A new campaign's
first wave starts from them (``--fresh`` ignores them); ``buddy profiles`` shows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, Field

from buddy.models import utcnow
from buddy.state.keys import PREFIX, _s

#: Seconds after which observations count half (7 days).
HALF_LIFE_S = 7 * 24 * 3600.0
#: Below this many effective samples a profile is not used to plan (it is still shown).
MIN_SAMPLES = 3.0


class Profile(BaseModel):
    """What both kinds of profile hold. ``samples``: tasks folded in (decayed);
    ``success``: share of attempts that did not fail (0–1); ``mean_duration_ms``: typical
    duration of one attempt (ms); ``updated_at``: the last fold (UTC)."""

    samples: float = Field(default=0.0, ge=0)
    success: float = Field(default=1.0, ge=0, le=1)
    mean_duration_ms: float = Field(default=0.0, ge=0)
    updated_at: datetime = Field(default_factory=utcnow)
    campaigns: int = Field(default=0, ge=0)

    def weight(self, now: datetime | None = None, half_life_s: float = HALF_LIFE_S) -> float:
        """The profile's samples as they count at ``now``: ``samples × ½^(age / half_life_s)``."""
        age = max(0.0, ((now or utcnow()) - self.updated_at).total_seconds())
        return self.samples * 0.5 ** (age / half_life_s)

    def usable(self, now: datetime | None = None) -> bool:
        """Enough recent evidence to plan with (:data:`MIN_SAMPLES`)."""
        return self.weight(now) >= MIN_SAMPLES


class AgentProfile(Profile):
    """One agent: ``service_rate`` is tasks per second per slot (1000 / mean duration when
    it ran anything); ``calibration_weight`` (0–1) the agent tuner's confidence weight;
    ``capacity`` the slots it last had."""

    agent_id: str
    service_rate: float = Field(default=0.0, ge=0)
    calibration_weight: float = Field(default=1.0, ge=0, le=1)
    capacity: int = Field(default=0, ge=0)


class ToolProfile(Profile):
    """One tool, over every agent that ran it."""

    tool: str


class Observation(BaseModel):
    """What one campaign saw of an agent or a tool: ``tasks`` executed, ``attempts`` and
    ``failed_attempts``, their summed duration (``busy_ms``, last attempt of each task)."""

    tasks: int = Field(ge=0)
    attempts: int = Field(ge=0)
    failed_attempts: int = Field(ge=0)
    busy_ms: float = Field(ge=0)


P = TypeVar("P", bound=Profile)


def fold(old: P, seen: Observation, now: datetime | None = None) -> P:
    """``old`` with ``seen`` folded in: averages weighted by decayed old samples and new tasks."""
    at = now or utcnow()
    if seen.tasks <= 0:
        return old
    w_old, w_new = old.weight(at), float(seen.tasks)
    total = w_old + w_new
    success = 1.0 - seen.failed_attempts / seen.attempts if seen.attempts else 1.0
    duration = seen.busy_ms / seen.tasks
    update: dict[str, Any] = {
        "samples": total,
        "success": (old.success * w_old + success * w_new) / total,
        "mean_duration_ms": (old.mean_duration_ms * w_old + duration * w_new) / total,
        "updated_at": at,
        "campaigns": old.campaigns + 1,
    }
    if isinstance(old, AgentProfile):
        mean = update["mean_duration_ms"]
        update["service_rate"] = 1000.0 / mean if mean > 0 else old.service_rate
    return old.model_copy(update=update)


class Profiles:
    """Reads and writes profiles on a redis-py client ``r``."""

    def __init__(self, r: Any) -> None:
        self.r = r

    @staticmethod
    def agent_key(agent_id: str) -> str:
        return f"{PREFIX}profile:agent:{agent_id}"

    @staticmethod
    def tool_key(tool: str) -> str:
        return f"{PREFIX}profile:tool:{tool}"

    def agents(self, ids: Iterable[str] | None = None) -> dict[str, AgentProfile]:
        """Agent profiles by id (all when ``ids`` is None)."""
        names = sorted(ids) if ids is not None else sorted(_s(x) or "" for x in self.r.smembers(_AGENTS))
        raw = self._read([self.agent_key(a) for a in names])
        return {a: AgentProfile.model_validate_json(v) for a, v in zip(names, raw, strict=True) if v}

    def tools(self, names: Iterable[str] | None = None) -> dict[str, ToolProfile]:
        """Tool profiles by name (all when ``names`` is None)."""
        got = sorted(names) if names is not None else sorted(_s(x) or "" for x in self.r.smembers(_TOOLS))
        raw = self._read([self.tool_key(t) for t in got])
        return {t: ToolProfile.model_validate_json(v) for t, v in zip(got, raw, strict=True) if v}

    def _read(self, keys: list[str]) -> list[bytes | None]:
        if not keys:
            return []
        pipe = self.r.pipeline(transaction=False)
        for k in keys:
            pipe.hget(k, "profile")
        return list(pipe.execute())

    def record(
        self,
        agents: Mapping[str, tuple[Observation, float, int]],
        tools: Mapping[str, Observation],
        now: datetime | None = None,
    ) -> tuple[dict[str, AgentProfile], dict[str, ToolProfile]]:
        """Fold one campaign into the profiles: ``agents`` maps an agent id to (what it ran,
        its calibration weight 0–1, its capacity in slots), ``tools`` a tool name to what ran
        of it. One read and one write round trip; returns the new profiles."""
        at = now or utcnow()
        old_a, old_t = self.agents(agents), self.tools(tools)
        new_a: dict[str, AgentProfile] = {}
        for aid, (seen, weight, capacity) in agents.items():
            base = old_a.get(aid) or AgentProfile(agent_id=aid, updated_at=at)
            got = fold(base, seen, at)
            new_a[aid] = got.model_copy(update={"calibration_weight": weight, "capacity": capacity})
        new_t = {
            t: fold(old_t.get(t) or ToolProfile(tool=t, updated_at=at), seen, at) for t, seen in tools.items()
        }
        pipe = self.r.pipeline(transaction=False)
        for aid, p in new_a.items():
            pipe.hset(self.agent_key(aid), "profile", p.model_dump_json())
            pipe.sadd(_AGENTS, aid)
        for t, tp in new_t.items():
            pipe.hset(self.tool_key(t), "profile", tp.model_dump_json())
            pipe.sadd(_TOOLS, t)
        pipe.execute()
        return new_a, new_t

    def forget(self) -> int:
        """Remove every profile (``buddy profiles --forget``); returns how many."""
        keys = [self.agent_key(_s(a) or "") for a in self.r.smembers(_AGENTS)]
        keys += [self.tool_key(_s(t) or "") for t in self.r.smembers(_TOOLS)]
        if keys:
            self.r.delete(*keys, _AGENTS, _TOOLS)
        return len(keys)


_AGENTS = f"{PREFIX}profiles:agents"
_TOOLS = f"{PREFIX}profiles:tools"
