"""The analysis files of ``outputs/<campaign>/``: feedback, monitoring, health, tuning.

Their layout is docs/architecture.md, "Outputs".

:mod:`buddy.analysis` and :mod:`buddy.optimizer` only compute; these functions write what
they computed, through an :class:`~buddy.outputs.writer.OutputWriter` (whose class constants
hold the file names). One ``model_dump_json()`` per JSONL line; JSON files are replaced
atomically.

- :func:`write_feedback`: each learning signal to its phase's file, and every signal to
  ``learning_signals.jsonl`` (appended).
- :func:`write_monitoring`: a wave's line of ``metrics.jsonl``, its ``anomalies.jsonl`` lines,
  ``wave_<n>/agent_<id>/agent_metrics.jsonl``, and ``system_health.json``.
- :func:`write_system_health`: ``system_health.json`` alone (the campaign-wide one at the end).
- :func:`write_tuned_parameters`: ``wave_<n>/agent_<id>/tuned_parameters.jsonl`` (appended).

Routing of the learning signals (:data:`SIGNAL_FILES`; the folder is the signal's target
phase, :data:`buddy.analysis.signals.SIGNAL_TARGETS`)

=========================  ==========  ============================================
signal_type                target      file under ``<out>/feedback/``
=========================  ==========  ============================================
heuristic_feedback         phase16     ``phase16/heuristic_feedback.jsonl``
agent_performance          phase18     ``phase18/coordination_feedback.jsonl``
multi_agent_coordination   phase18     ``phase18/coordination_feedback.jsonl``
prediction_validation      phase20     ``phase20/prediction_validation_feedback.jsonl``
tool_reliability           phase19     ``phase19/phase22_feedback.jsonl``
execution_mode_analysis    phase19     ``phase19/phase22_feedback.jsonl``
approval_mismatch          phase19     ``phase19/phase22_feedback.jsonl``
conflict_pattern           phase19     ``phase19/phase22_feedback.jsonl``
=========================  ==========  ============================================
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from buddy.analysis.anomalies import Anomaly
from buddy.analysis.feedback import WaveFeedback
from buddy.analysis.health import HealthReport
from buddy.analysis.metrics import CampaignMetrics, WaveMetrics
from buddy.analysis.signals import SIGNAL_TARGETS, LearningSignal
from buddy.optimizer.tuner import ParameterChange
from buddy.outputs.writer import OutputWriter

#: signal_type → its file in the target phase's folder under ``feedback/`` (module docstring).
SIGNAL_FILES: dict[str, str] = {
    "heuristic_feedback": "heuristic_feedback.jsonl",
    "agent_performance": "coordination_feedback.jsonl",
    "multi_agent_coordination": "coordination_feedback.jsonl",
    "prediction_validation": "prediction_validation_feedback.jsonl",
    "tool_reliability": "phase22_feedback.jsonl",
    "execution_mode_analysis": "phase22_feedback.jsonl",
    "approval_mismatch": "phase22_feedback.jsonl",
    "conflict_pattern": "phase22_feedback.jsonl",
}


class SystemHealth(BaseModel):
    """``system_health.json``: the latest health, its metrics and anomalies, and every wave's health."""

    campaign_id: str
    updated_at: datetime
    health: HealthReport
    metrics: WaveMetrics | CampaignMetrics
    anomalies: list[Anomaly]
    history: list[HealthReport] = Field(default_factory=list)


def signal_path(root: Path, signal_type: str) -> Path:
    """Where a signal of ``signal_type`` goes: ``<root>/feedback/<phase>/<file>``.

    Raises :class:`KeyError` for an unknown signal type."""
    return root / OutputWriter.FEEDBACK / SIGNAL_TARGETS[signal_type] / SIGNAL_FILES[signal_type]


def write_feedback(out: OutputWriter, feedback: WaveFeedback) -> list[Path]:
    """Append the wave's signals to their routed files and to ``learning_signals.jsonl``;
    folders are created. Returns the files written, sorted."""
    grouped: dict[Path, list[LearningSignal]] = defaultdict(list)
    for s in feedback.signals:
        grouped[signal_path(out.root, s.signal_type)].append(s)
    grouped[out.root / OutputWriter.SIGNALS] = list(feedback.signals)
    for path, rows in grouped.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        out.write_jsonl(path, rows, append=True)
    return sorted(grouped)


def write_monitoring(
    out: OutputWriter,
    metrics: WaveMetrics,
    anomalies: Sequence[Anomaly],
    report: HealthReport,
    history: Sequence[HealthReport] = (),
) -> list[Path]:
    """Write one wave's monitoring files.

    Appends ``metrics.jsonl`` (one line) and ``anomalies.jsonl``, writes
    ``wave_<n>/agent_<id>/agent_metrics.jsonl`` per agent (one line each), and replaces
    ``system_health.json`` (``history``: earlier waves' reports; this one is added).
    Returns the paths written.
    """
    out.create()
    written = [
        out.append_jsonl(OutputWriter.METRICS, [metrics]),
        out.append_jsonl(OutputWriter.ANOMALIES, anomalies),
    ]
    for aid, row in metrics.agents.items():
        written.append(out.write_jsonl(out.agent_dir(metrics.wave, aid) / OutputWriter.AGENT_METRICS, [row]))
    written.append(write_system_health(out, metrics, anomalies, report, history))
    return written


def write_system_health(
    out: OutputWriter,
    metrics: WaveMetrics | CampaignMetrics,
    anomalies: Sequence[Anomaly],
    report: HealthReport,
    history: Sequence[HealthReport] = (),
) -> Path:
    """Replace ``system_health.json`` atomically (for the final, campaign-wide one too).

    ``history``: the waves' reports before ``report``; a wave's ``report`` is added to it,
    the campaign's is not (it is ``health``)."""
    doc = SystemHealth(
        campaign_id=metrics.campaign_id,
        updated_at=report.generated_at,
        health=report,
        metrics=metrics,
        anomalies=list(anomalies),
        history=[*history, report] if isinstance(metrics, WaveMetrics) else list(history),
    )
    return out.write_json(OutputWriter.HEALTH, doc)


def write_tuned_parameters(out: OutputWriter, wave: int, changes: Sequence[ParameterChange]) -> list[Path]:
    """Append each agent's parameter changes for ``wave`` to
    ``wave_<n>/agent_<id>/tuned_parameters.jsonl``. Returns the files written."""
    by_agent: dict[str, list[ParameterChange]] = defaultdict(list)
    for c in changes:
        by_agent[c.agent_id].append(c)
    return [
        out.write_jsonl(out.agent_dir(wave, aid) / OutputWriter.TUNED, rows, append=True)
        for aid, rows in sorted(by_agent.items())
    ]
