"""The campaign's output folder (DESIGN.md, "Outputs"): one writer, one place for file names.

Every JSONL line is one pydantic model's ``model_dump_json()``; JSON files are indented.
Files are written as each wave ends, so a campaign cut short still leaves what it did.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel


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

    def append_jsonl(self, name: str, rows: Iterable[BaseModel]) -> Path:
        return self.write_jsonl(self.root / name, rows, append=True)

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path
