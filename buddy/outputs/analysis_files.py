"""The analysis files of ``outputs/<campaign>/``: feedback, monitoring, health, tuning.

Their layout is docs/architecture.md, "Outputs".

:mod:`buddy.analysis` and :mod:`buddy.optimizer` only compute; these functions write what
they computed, through an :class:`~buddy.outputs.writer.OutputWriter` (whose class constants
hold the file names). One ``model_dump_json()`` per JSONL line; JSON files are replaced
atomically.

- :func:`write_feedback`: each learning signal to its type's file and its phase's
  ``phase22_feedback.jsonl``, and every signal to ``learning_signals.jsonl`` (appended).
- :func:`write_monitoring`: a wave's line of ``metrics.jsonl``, its ``anomalies.jsonl`` lines,
  ``wave_<n>/agent_<id>/agent_metrics.jsonl``, and ``system_health.json``.
- :func:`write_system_health`: ``system_health.json`` alone (the campaign-wide one at the end);
  it leads with the seeds' fields ``wave, health_score, health_status, metrics, anomalies``
  (:class:`SystemHealth`).
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

The seeds' files (:data:`SEED_FEEDBACK`): the source documents read this system's (Phase 22's)
feedback from ``feedback/phase16/``, ``phase18/`` and ``phase20/`` under one name,
``phase22_feedback.jsonl``. Each of those files gets the signals the table above routes to its
phase, by the same rule (the target phase of the signal's type), except the signals about one
task (:func:`buddy.analysis.signals.per_task`: one ``prediction_validation`` per executed
task, 47 MB at 100k tasks, issue 17), which stay in the type's file alone:

- ``phase16/phase22_feedback.jsonl``: ``heuristic_feedback`` (one line per tool per wave);
- ``phase18/phase22_feedback.jsonl``: ``agent_performance`` and ``multi_agent_coordination``
  (one line per agent per wave, and one per wave with issues);
- ``phase20/phase22_feedback.jsonl``: the ``prediction_validation`` wave summaries (kind
  ``calibration``: Brier, ECE, bias, accuracy and verdict counts; one line per wave) — a
  subset of ``prediction_validation_feedback.jsonl``, which keeps the per-task lines;
- ``phase19/phase22_feedback.jsonl`` is already the type file of its four types.

The lines for phases 16 and 18 repeat those of their type files; both are small (they grow
with tools and agents, not tasks), and the type files keep their names for the consumers that
read them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, Field

from buddy.analysis.anomalies import Anomaly
from buddy.analysis.feedback import WaveFeedback
from buddy.analysis.health import HealthReport, HealthStatus
from buddy.analysis.metrics import CampaignMetrics, WaveMetrics
from buddy.analysis.signals import SIGNAL_TARGETS, LearningSignal, per_task
from buddy.optimizer.tuner import ParameterChange
from buddy.outputs.writer import OutputWriter

#: The file the source documents read this system's feedback from, in each phase's folder.
SEED_FEEDBACK = OutputWriter.PHASE22_FEEDBACK
#: The phases whose folder holds a :data:`SEED_FEEDBACK` besides its type files (module docstring).
SEED_FEEDBACK_PHASES = ("phase16", "phase18", "phase20")
#: signal_type → its file in the target phase's folder under ``feedback/`` (module docstring).
SIGNAL_FILES: dict[str, str] = {
    "heuristic_feedback": "heuristic_feedback.jsonl",
    "agent_performance": "coordination_feedback.jsonl",
    "multi_agent_coordination": "coordination_feedback.jsonl",
    "prediction_validation": "prediction_validation_feedback.jsonl",
    "tool_reliability": SEED_FEEDBACK,
    "execution_mode_analysis": SEED_FEEDBACK,
    "approval_mismatch": SEED_FEEDBACK,
    "conflict_pattern": SEED_FEEDBACK,
}


class SystemHealth(BaseModel):
    """``system_health.json``: the seeds' fields first, then the latest health report and every
    wave's health.

    The seeds' fields: ``wave`` (the last wave the file covers; None before any), ``health_score``
    (0–100) and ``health_status`` (EXCELLENT|GOOD|FAIR|POOR) — ``health.score`` and
    ``health.status`` again —, ``metrics`` and ``anomalies``. ``health``: the whole report
    (components, weights, penalty); ``history``: every wave's report so far.
    """

    wave: int | None = None
    health_score: float = Field(ge=0, le=100)
    health_status: HealthStatus
    metrics: WaveMetrics | CampaignMetrics
    anomalies: list[Anomaly]
    campaign_id: str
    updated_at: datetime
    health: HealthReport
    history: list[HealthReport] = Field(default_factory=list)


def signal_path(root: Path, signal_type: str) -> Path:
    """Where a signal of ``signal_type`` goes: ``<root>/feedback/<phase>/<file>``.

    Raises :class:`KeyError` for an unknown signal type."""
    return root / OutputWriter.FEEDBACK / SIGNAL_TARGETS[signal_type] / SIGNAL_FILES[signal_type]


def signal_paths(root: Path, signal: LearningSignal) -> list[Path]:
    """Every phase file ``signal`` is appended to: its type's file (:func:`signal_path`), and
    its phase's :data:`SEED_FEEDBACK` when that is another file and the signal is not about
    one task (module docstring)."""
    paths = [signal_path(root, signal.signal_type)]
    phase = SIGNAL_TARGETS[signal.signal_type]
    if phase in SEED_FEEDBACK_PHASES and not per_task(signal):
        seed = root / OutputWriter.FEEDBACK / phase / SEED_FEEDBACK
        if seed != paths[0]:
            paths.append(seed)
    return paths


def write_feedback(out: OutputWriter, feedback: WaveFeedback) -> list[Path]:
    """Append the wave's signals to their routed files (:func:`signal_paths`) and to
    ``learning_signals.jsonl``; folders are created. Returns the files written, sorted."""
    grouped: dict[Path, list[LearningSignal]] = defaultdict(list)
    for s in feedback.signals:
        for path in signal_paths(out.root, s):
            grouped[path].append(s)
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
    the campaign's is not (it is ``health``). ``wave``: the wave's number, or for the
    campaign the last (highest) wave of ``history``."""
    if isinstance(metrics, WaveMetrics):
        wave: int | None = metrics.wave
        rows = [*history, report]
    else:
        wave = max((h.wave for h in history if h.wave is not None), default=None)
        rows = list(history)
    doc = SystemHealth(
        wave=wave,
        health_score=report.score,
        health_status=report.status,
        metrics=metrics,
        anomalies=list(anomalies),
        campaign_id=metrics.campaign_id,
        updated_at=report.generated_at,
        health=report,
        history=rows,
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
