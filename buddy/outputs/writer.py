"""The campaign's output folder (docs/architecture.md, "Outputs"): one writer, one place for file names.

Every JSONL line is one pydantic model's ``model_dump_json()``; JSON files are indented.
Files are written as each wave ends, so a campaign cut short still leaves what it did.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from buddy.models import Outcome, TaskStatus, ToolExecutionLogEntry


class OutputWriter:
    """Writes the files of ``outputs/<campaign>/`` under ``root``."""

    CAMPAIGN = "campaign.json"
    SUMMARY = "execution_summary.json"
    REPORT = "report.md"
    HTML = "report.html"
    TOOL_LOG = "tool_execution_log.jsonl"
    TRANSITIONS = "state_transitions.jsonl"
    CONFLICTS = "conflicts.json"
    ROLLBACKS = "rollback_events.jsonl"
    ASSIGNMENTS = "agent_assignments.jsonl"
    ADJUSTED = "adjusted_schedule.jsonl"
    EXECUTED = "executed_tasks.jsonl"
    METRICS = "metrics.jsonl"
    ANOMALIES = "anomalies.jsonl"
    HEALTH = "system_health.json"
    AGENT_METRICS = "agent_metrics.jsonl"
    TUNED = "tuned_parameters.jsonl"
    SIGNALS = "learning_signals.jsonl"
    FEEDBACK = "feedback"

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def agent_dir(self, wave: int, agent_id: str) -> Path:
        d = self.root / f"wave_{wave}" / f"agent_{agent_id}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_json(self, name: str, model: BaseModel) -> Path:
        path = self.root / name
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def write_jsonl(self, path: Path, rows: Iterable[BaseModel], *, append: bool = False) -> Path:
        with path.open("a" if append else "w", encoding="utf-8") as f:
            for row in rows:
                f.write(row.model_dump_json())
                f.write("\n")
        return path

    def write_raw_jsonl(self, path: Path, lines: Iterable[bytes], *, append: bool = False) -> Path:
        """Like :meth:`write_jsonl` for rows already serialized (one JSON document each, no
        newline): the outcomes and transitions as Redis holds them."""
        with path.open("ab" if append else "wb") as f:
            for line in lines:
                f.write(line)
                f.write(b"\n")
        return path

    def append_jsonl(self, name: str, rows: Iterable[BaseModel]) -> Path:
        return self.write_jsonl(self.root / name, rows, append=True)

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path


def tool_log_entries(o: Outcome) -> list[ToolExecutionLogEntry]:
    """One ``tool_execution_log.jsonl`` line per attempt of ``o``: its earlier failed attempts,
    then the last one; none for a task whose tool never ran (skipped, invalid)."""
    common = {
        "campaign_id": o.campaign_id,
        "task_id": o.task_id,
        "tool": o.tool or "",
        "agent_id": o.agent_id,
        "wave": o.wave,
        "mode": o.mode,
        "worker": o.worker,
    }
    rows = [
        ToolExecutionLogEntry(
            **common,
            attempt=e.attempt,
            status=TaskStatus.FAILED,
            start_time=None,
            end_time=e.at,
            duration_ms=0.0,
            error_type=e.error_type,
            error_msg=e.error_msg,
        )
        for e in o.errors
        if e.attempt < o.attempts
    ]
    if o.attempts:
        rows.append(
            ToolExecutionLogEntry(
                **common,
                attempt=o.attempts,
                status=o.status,
                start_time=o.start_time,
                end_time=o.end_time,
                duration_ms=o.duration_ms,
                error_type=o.error_type,
                error_msg=o.error_msg,
            )
        )
    return rows
