"""The agent tuner: each agent's parameters for the next wave, from the waves so far.

Pure and deterministic. :meth:`AgentTuner.tune` proposes per-agent parameters
(:class:`TunedParameters`) and one :class:`ParameterChange` per changed value (the lines of
``tuned_parameters.jsonl``, written by :mod:`buddy.outputs.analysis_files`);
:func:`plan_pool_changes` turns the concurrency changes into ``pool_grow`` /
``pool_shrink`` deltas. The rules are :class:`TunerConfig`'s (docs/architecture.md,
"Learning between waves").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from buddy.analysis.metrics import AgentWaveMetrics, WaveMetrics
from buddy.coordinator.dispatch import MAX_BATCH
from buddy.models import AgentSpec, utcnow


class TunerConfig(BaseModel):
    """Rules of :class:`AgentTuner` (each applies when the agent ran ``min_samples`` tasks).

    - concurrency: shrink by ``step`` when success < ``shrink_success``; grow by ``step`` when
      utilization ≥ ``grow_utilization`` and success ≥ ``grow_success``; ``step = max(1,
      round(concurrency · step_fraction))``; within ``min_concurrency``…``max_concurrency``.
    - max retries: −1 when at least ``min_retried`` tasks were retried and fewer than
      ``retry_useless`` of them succeeded; +1 when at least ``retry_useful`` of them succeeded
      and some retried task still failed; within 0…``max_retries_cap``.
    - timeout: ``timeout_factor`` × the agent's p99 latency, within ``min_timeout_s``…
      ``max_timeout_s``, changed only when it moves by more than ``timeout_hysteresis``.
    - batch size: ``floor(target_message_s / mean duration)``, within 1…``max_batch``.
    - confidence weight: over every wave so far, (predicted tasks that succeeded) / (Σ their
      predicted_success), within ``min_confidence_weight``…1; 1 until ``min_samples``
      predictions: below 1 the agent's results fall short of the predictions (calibration in
      the large), and task confidences on it should be scaled down by this factor.
    """

    model_config = ConfigDict(extra="forbid")

    min_samples: int = Field(default=3, ge=1)
    shrink_success: float = Field(default=0.60, ge=0, le=1)
    grow_utilization: float = Field(default=0.75, ge=0, le=1)
    grow_success: float = Field(default=0.90, ge=0, le=1)
    step_fraction: float = Field(default=0.25, gt=0, le=1)
    min_concurrency: int = Field(default=1, ge=1)
    max_concurrency: int = Field(default=64, ge=1, le=256)
    default_max_retries: int = Field(default=3, ge=0)
    min_retried: int = Field(default=3, ge=1)
    retry_useless: float = Field(default=0.25, ge=0, le=1)
    retry_useful: float = Field(default=0.60, ge=0, le=1)
    max_retries_cap: int = Field(default=6, ge=0)
    timeout_factor: float = Field(default=3.0, gt=0)
    min_timeout_s: float = Field(default=5.0, gt=0)
    max_timeout_s: float = Field(default=3600.0, gt=0)
    timeout_hysteresis: float = Field(default=0.20, ge=0)
    target_message_s: float = Field(default=0.25, gt=0)
    max_batch: int = Field(default=MAX_BATCH, ge=1)
    min_confidence_weight: float = Field(default=0.10, ge=0, le=1)


class TunedParameters(BaseModel):
    """An agent's parameters for the next wave; ``timeout_s`` None keeps the tools' own."""

    agent_id: str
    wave: int | None = None
    concurrency: int = Field(ge=1)
    max_retries: int = Field(ge=0)
    timeout_s: float | None = None
    batch_size: int = Field(default=1, ge=1)
    confidence_weight: float = Field(default=1.0, ge=0, le=1)
    reason: str = "initial"


class ParameterChange(BaseModel):
    """One changed parameter of one agent; a line of ``tuned_parameters.jsonl``: its value
    before (``old``) and after (``new``), why, and the evidence: the numbers of the agent's
    latest wave the rule read (``wave``: the wave they came from; counts, 0–1 rates,
    milliseconds as named)."""

    agent_id: str
    wave: int | None = None
    parameter: str
    old: Any
    new: Any
    reason: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    changed_at: datetime


class AgentTuner:
    """Proposes each agent's parameters for the next wave from the waves so far."""

    def __init__(self, config: TunerConfig | None = None) -> None:
        self.config = config or TunerConfig()

    def initial(self, agents: Sequence[AgentSpec]) -> dict[str, TunedParameters]:
        """Parameters before any wave: the agents' concurrency, the default retries."""
        return {
            a.id: TunedParameters(
                agent_id=a.id, concurrency=a.concurrency, max_retries=self.config.default_max_retries
            )
            for a in agents
        }

    def tune(
        self,
        agents: Sequence[AgentSpec],
        history: Sequence[WaveMetrics],
        current: Mapping[str, TunedParameters] | None = None,
        *,
        wave: int | None = None,
        now: datetime | None = None,
    ) -> tuple[dict[str, TunedParameters], list[ParameterChange]]:
        """New parameters per agent (for ``wave``) and the changes, from ``history`` (oldest
        first; the latest wave drives concurrency, retries, timeout and batch size, all of
        them the confidence weight). ``current``: the parameters in force (default
        :meth:`initial`)."""
        c = self.config
        at = now or utcnow()
        cur = dict(current) if current is not None else self.initial(agents)
        last = history[-1] if history else None
        out: dict[str, TunedParameters] = {}
        changes: list[ParameterChange] = []
        for spec in agents:
            old = cur.get(spec.id) or self.initial([spec])[spec.id]
            new = old.model_copy(update={"wave": wave})
            reasons: dict[str, str] = {}
            row = last.agents.get(spec.id) if last is not None else None
            if row is not None and row.executed >= c.min_samples:
                self._concurrency(row, old, new, reasons)
                self._retries(row, old, new, reasons)
                self._timeout(row, old, new, reasons)
                self._batch(row, old, new, reasons)
            self._weight(spec.id, history, old, new, reasons)
            new.reason = "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "unchanged"
            evidence = _evidence(row, last.wave if last is not None else None)
            for name, why in reasons.items():
                changes.append(
                    ParameterChange(
                        agent_id=spec.id,
                        wave=wave,
                        parameter=name,
                        old=getattr(old, name),
                        new=getattr(new, name),
                        reason=why,
                        evidence=evidence,
                        changed_at=at,
                    )
                )
            out[spec.id] = new
        return out, changes

    def _concurrency(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        step = max(1, round(old.concurrency * c.step_fraction))
        target = old.concurrency
        why = ""
        if row.success_rate < c.shrink_success:
            target = old.concurrency - step
            why = f"success {row.success_rate:.2f} < {c.shrink_success:.2f}: less pressure on a failing agent"
        elif row.utilization >= c.grow_utilization and row.success_rate >= c.grow_success:
            target = old.concurrency + step
            why = (
                f"utilization {row.utilization:.2f} ≥ {c.grow_utilization:.2f} "
                f"with success {row.success_rate:.2f}"
            )
        target = max(c.min_concurrency, min(c.max_concurrency, target))
        if target != old.concurrency:
            new.concurrency = target
            reasons["concurrency"] = why

    def _retries(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        if row.retried < c.min_retried:
            return
        helped = row.retried_succeeded / row.retried
        target = old.max_retries
        if helped < c.retry_useless:
            target = max(0, old.max_retries - 1)
            why = f"retries rarely help: {row.retried_succeeded} of {row.retried} retried tasks succeeded"
        elif helped >= c.retry_useful and row.retried_succeeded < row.retried:
            target = min(c.max_retries_cap, old.max_retries + 1)
            why = (
                f"retries help ({row.retried_succeeded} of {row.retried} retried tasks succeeded) "
                "but some retried tasks still failed"
            )
        if target != old.max_retries:
            new.max_retries = target
            reasons["max_retries"] = why

    def _timeout(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        if row.latency_p99_ms <= 0:
            return
        target = round(
            min(c.max_timeout_s, max(c.min_timeout_s, c.timeout_factor * row.latency_p99_ms / 1000)), 1
        )
        if old.timeout_s is not None and abs(target - old.timeout_s) <= c.timeout_hysteresis * old.timeout_s:
            return
        new.timeout_s = target
        reasons["timeout_s"] = f"{c.timeout_factor:g} × p99 latency {row.latency_p99_ms:.0f} ms"

    def _batch(
        self, row: AgentWaveMetrics, old: TunedParameters, new: TunedParameters, reasons: dict[str, str]
    ) -> None:
        c = self.config
        mean_s = row.mean_duration_ms / 1000
        target = c.max_batch if mean_s <= 0 else int(c.target_message_s // mean_s)
        target = max(1, min(c.max_batch, target))
        if target != old.batch_size:
            new.batch_size = target
            reasons["batch_size"] = (
                f"mean duration {row.mean_duration_ms:.1f} ms: "
                f"about {c.target_message_s:g} s of work per message"
            )

    def _weight(
        self,
        agent_id: str,
        history: Sequence[WaveMetrics],
        old: TunedParameters,
        new: TunedParameters,
        reasons: dict[str, str],
    ) -> None:
        c = self.config
        rows = [w.agents[agent_id] for w in history if agent_id in w.agents]
        n = sum(r.predicted_n for r in rows)
        if n < c.min_samples:
            return
        expected = sum(r.predicted_sum for r in rows)
        ok = sum(r.predicted_succeeded for r in rows)
        ratio = 1.0 if expected <= 0 else ok / expected
        target = round(max(c.min_confidence_weight, min(1.0, ratio)), 3)
        if target != old.confidence_weight:
            new.confidence_weight = target
            reasons["confidence_weight"] = (
                f"{ok} of {n} predicted tasks succeeded against {expected:.1f} expected"
            )


def _evidence(row: AgentWaveMetrics | None, wave: int | None) -> dict[str, Any]:
    """What the tuner's rules read of an agent's latest wave (empty before any)."""
    if row is None:
        return {}
    return {
        "wave": wave,
        "executed": row.executed,
        "success_rate": round(row.success_rate, 4),
        "utilization": round(row.utilization, 4),
        "retried": row.retried,
        "retried_succeeded": row.retried_succeeded,
        "mean_duration_ms": round(row.mean_duration_ms, 3),
        "latency_p99_ms": round(row.latency_p99_ms, 3),
    }


def plan_pool_changes(current: Mapping[str, int], tuned: Mapping[str, TunedParameters]) -> dict[str, int]:
    """Per agent, the change of pool size to send: ``tuned concurrency − current`` (positive:
    ``pool_grow`` by that many, negative: ``pool_shrink``). Only agents in both maps with a
    non-zero change, sorted by id. ``current`` is the concurrency in force per worker of the
    agent (the remote control acts per worker)."""
    return {
        aid: tuned[aid].concurrency - n
        for aid, n in sorted(current.items())
        if aid in tuned and tuned[aid].concurrency != n
    }
