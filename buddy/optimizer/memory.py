"""What a campaign leaves for the next one: its live executions folded into the agent and tool
profiles (:mod:`buddy.state.profiles`), and what a new campaign takes from them before its
first wave (docs/architecture.md, "Learning between waves").

Only live executions count: a mock or dry-run task measures the tool's stand-in, not the
agent. :func:`recall` returns the usable profiles (enough recent samples) of the plan's agents
and tools; the learner seeds from them the adaptive scheduler's per-agent duration and
success, the tuner's batch size and confidence weight, so wave 1 is assigned and batched as
the last campaign ended.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from buddy.analysis.outcomes import executed
from buddy.models import Mode, Outcome
from buddy.optimizer.scheduler import AdaptiveScheduler, AgentEstimate
from buddy.optimizer.tuner import ParameterChange, TunedParameters, TunerConfig
from buddy.state.profiles import AgentProfile, Observation, Profiles, ToolProfile


def observations(outcomes: Iterable[Outcome]) -> tuple[dict[str, Observation], dict[str, Observation]]:
    """Per agent and per tool, what the live executions among ``outcomes`` show: tasks,
    attempts, failed attempts (each recorded error), summed duration of the last attempts (ms)."""
    agents: dict[str, list[int | float]] = {}
    tools: dict[str, list[int | float]] = {}
    for o in outcomes:
        if o.mode is not Mode.LIVE or not executed(o):
            continue
        row = (1, max(1, o.attempts), len(o.errors), o.duration_ms)
        for key, into in ((o.agent_id, agents), (o.tool, tools)):
            if key:
                acc = into.setdefault(key, [0, 0, 0, 0.0])
                for i, v in enumerate(row):
                    acc[i] += v
    return _obs(agents), _obs(tools)


def _obs(acc: Mapping[str, list[int | float]]) -> dict[str, Observation]:
    return {
        k: Observation(tasks=int(t), attempts=int(a), failed_attempts=min(int(f), int(a)), busy_ms=float(b))
        for k, (t, a, f, b) in acc.items()
    }


def remember(
    profiles: Profiles,
    outcomes: Iterable[Outcome],
    weights: Mapping[str, float],
    capacity: Mapping[str, int],
    now: datetime | None = None,
) -> tuple[dict[str, AgentProfile], dict[str, ToolProfile]]:
    """Fold a finished campaign's live executions into the profiles; ``weights``: each agent's
    confidence weight (0–1), ``capacity``: its slots. Returns the profiles written."""
    agents, tools = observations(outcomes)
    rows = {aid: (seen, weights.get(aid, 1.0), capacity.get(aid, 0)) for aid, seen in agents.items()}
    if not rows and not tools:
        return {}, {}
    return profiles.record(rows, tools, now)


@dataclass
class Recalled:
    """The usable profiles a new campaign starts from (empty with ``--fresh``)."""

    agents: dict[str, AgentProfile] = field(default_factory=dict)
    tools: dict[str, ToolProfile] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for the console and report.md: what was known before the first wave."""
        if not self.agents and not self.tools:
            return "nothing: no usable profile of these agents or tools in Redis"
        parts = [
            f"{a}: {p.service_rate:.1f} tasks/s per slot, success {p.success:.2f}, "
            f"weight {p.calibration_weight:.2f}"
            for a, p in sorted(self.agents.items())
        ]
        parts += [
            f"{t}: {p.mean_duration_ms:.1f} ms, success {p.success:.2f}"
            for t, p in sorted(self.tools.items())
        ]
        return "; ".join(parts) + " (buddy:profile:*)"


def recall(
    profiles: Profiles, agent_ids: Iterable[str], tools: Iterable[str], now: datetime | None = None
) -> Recalled:
    """The usable profiles (:meth:`~buddy.state.profiles.Profile.usable`) of ``agent_ids`` and
    ``tools``."""
    return Recalled(
        {a: p for a, p in profiles.agents(agent_ids).items() if p.usable(now)},
        {t: p for t, p in profiles.tools(set(tools)).items() if p.usable(now)},
    )


def seeded_scheduler(recalled: Recalled) -> AdaptiveScheduler:
    """An adaptive scheduler that starts from the recalled profiles: per agent its typical
    duration and success (no observation yet: a profile alone never marks an agent
    degraded), per tool the fleet's typical duration."""
    s = AdaptiveScheduler(
        estimates={
            aid: AgentEstimate(agent_id=aid, duration_s=p.mean_duration_ms / 1000, success=p.success)
            for aid, p in recalled.agents.items()
            if p.mean_duration_ms > 0
        }
    )
    s.tool_s = {t: p.mean_duration_ms / 1000 for t, p in recalled.tools.items() if p.mean_duration_ms > 0}
    return s


def seeded_parameters(
    recalled: Recalled, tuned: Mapping[str, TunedParameters], config: TunerConfig, now: datetime | None = None
) -> tuple[dict[str, TunedParameters], list[ParameterChange]]:
    """The tuner's starting parameters with the recalled profiles applied: each agent's batch
    size (``target_message_s`` of work per message at its typical duration) and confidence
    weight; one :class:`ParameterChange` (wave 1) per value taken, its evidence the profile."""
    at = now or datetime.now(UTC)
    out = dict(tuned)
    changes: list[ParameterChange] = []
    for aid, p in sorted(recalled.agents.items()):
        old = out.get(aid)
        if old is None:
            continue
        update: dict[str, Any] = {}
        if p.mean_duration_ms > 0:
            update["batch_size"] = max(
                1, min(config.max_batch, int(config.target_message_s // (p.mean_duration_ms / 1000)))
            )
        if p.calibration_weight != old.confidence_weight:
            update["confidence_weight"] = p.calibration_weight
        evidence = {"profile": f"buddy:profile:agent:{aid}", "samples": round(p.weight(at), 1),
                    "mean_duration_ms": round(p.mean_duration_ms, 3), "success": round(p.success, 4),
                    "updated_at": p.updated_at.isoformat()}  # fmt: skip
        for name, value in update.items():
            if getattr(old, name) == value:
                continue
            changes.append(
                ParameterChange(
                    agent_id=aid,
                    wave=1,
                    parameter=name,
                    old=getattr(old, name),
                    new=value,
                    reason="from the agent's profile (earlier campaigns)",
                    evidence=evidence,
                    changed_at=at,
                )
            )
        out[aid] = old.model_copy(update=update | {"wave": 1})
    return out, changes
