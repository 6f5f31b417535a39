"""What a finished campaign returns to a program (``buddy.Campaign.run()``, ``buddy.resume``).

Every number in it is what the output folder holds: the same records the coordinator
wrote to ``execution_summary.json``, ``metrics.jsonl``, ``system_health.json`` and the
signal files (docs/architecture.md, "Outputs").
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from buddy.analysis.anomalies import Anomaly
from buddy.analysis.health import HealthReport
from buddy.analysis.signals import LearningSignal
from buddy.analysis.wave import WaveReport
from buddy.models import CampaignStatus, ExecutionSummary, Outcome


class CampaignResult(BaseModel):
    """A campaign's end. ``status`` is ``succeeded`` only when every task succeeded;
    ``exit_code`` is what ``buddy run`` exits with (0 succeeded, 1 finished with failures,
    3 aborted, 130 interrupted); ``outcomes`` every task's final outcome by task id (tasks
    never reached, e.g. after an abort, are absent); ``health`` the campaign's health (0–100
    score and status; None when no wave was analyzed); ``waves`` each analyzed wave's report
    (summary, feedback, metrics, anomalies, health); ``anomalies`` and ``signals`` all waves'
    anomalies and learning signals in wave order; ``tasks`` the plan's number of tasks."""

    campaign_id: str
    status: CampaignStatus
    exit_code: int
    out_dir: Path
    summary: ExecutionSummary
    outcomes: dict[str, Outcome]
    health: HealthReport | None
    waves: list[WaveReport]
    tasks: int = 0
    abort_reason: str | None = None

    @property
    def anomalies(self) -> list[Anomaly]:
        return [a for w in self.waves for a in w.anomalies]

    @property
    def signals(self) -> list[LearningSignal]:
        return [s for w in self.waves for s in w.feedback.signals]

    @property
    def ok(self) -> bool:
        """True when every task succeeded."""
        return self.status == "succeeded"
