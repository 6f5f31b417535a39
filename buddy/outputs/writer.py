"""The campaign's output folder (docs/architecture.md, "Outputs"): one writer, one place for file names.

Every JSONL line is one pydantic model's ``model_dump_json()``; JSON files are indented.
Files are written as each wave ends, so a campaign cut short still leaves what it did.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import orjson
from pydantic import BaseModel

from buddy.models import AttemptError, Outcome, TaskStatus, ToolExecutionLogEntry


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
    #: in ``feedback/<phase>/``: the seeds' name of this system's feedback to that phase
    PHASE22_FEEDBACK = "phase22_feedback.jsonl"

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

    def replace_rows(self, path: Path, rows: Mapping[str, Sequence[bytes]]) -> bool:
        """Rewrite the JSONL file ``path`` with, for each task id of ``rows`` the file holds,
        its new rows (serialized, no newline) in place of its old ones (at the first old row);
        every other line stays as it is, in order. Rows of task ids the file does not hold are
        not added. The file is replaced atomically, and only when a line changed; a missing
        file is left missing. Returns whether the file changed."""
        if not rows or not path.is_file():
            return False
        old = path.read_bytes().splitlines()
        out: list[bytes] = []
        placed: set[str] = set()
        for line in old:
            tid = orjson.loads(line).get("task_id") if line.strip() else None
            if not isinstance(tid, str) or tid not in rows:
                out.append(line)
            elif tid not in placed:
                placed.add(tid)
                out.extend(rows[tid])
        if out == old:
            return False
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(b"".join(x + b"\n" for x in out))
        tmp.replace(path)
        return True

    def append_jsonl(self, name: str, rows: Iterable[BaseModel]) -> Path:
        return self.write_jsonl(self.root / name, rows, append=True)

    def write_text(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text, encoding="utf-8")
        return path


def tool_log_entries(o: Outcome) -> list[ToolExecutionLogEntry]:
    """One ``tool_execution_log.jsonl`` line per attempt of ``o``: its earlier failed attempts
    (from ``o.errors``), then the last one (from the outcome itself); none for a task whose
    tool never ran (``attempts`` 0: skipped, refused, denied before running).

    An earlier attempt's line has status ``failed``, the start time and duration the attempt's
    first error recorded (``start_time`` None and ``duration_ms`` 0 when not known: an attempt
    that died), ``end_time`` when that error was recorded, and that error; later errors of the
    same attempt (its rollback's) are added to ``error_msg``. The last line has the outcome's
    status, times (``duration_ms`` in milliseconds) and error, so a task compensated after its
    wave (``rolled_back``) says so there too.
    """
    common = {
        "campaign_id": o.campaign_id,
        "task_id": o.task_id,
        "tool": o.tool or "",
        "agent_id": o.agent_id,
        "wave": o.wave,
        "mode": o.mode,
        "worker": o.worker,
    }
    by_attempt: dict[int, list[AttemptError]] = {}
    for e in o.errors:
        if e.attempt < o.attempts:
            by_attempt.setdefault(e.attempt, []).append(e)
    rows = []
    for n in sorted(by_attempt):
        first, *more = by_attempt[n]
        msg = first.error_msg + "".join(f" (then {x.error_type}: {x.error_msg})" for x in more)
        rows.append(
            ToolExecutionLogEntry(
                **common,
                attempt=n,
                status=TaskStatus.FAILED,
                start_time=first.start_time,
                end_time=first.at,
                duration_ms=first.duration_ms or 0.0,
                error_type=first.error_type,
                error_msg=msg,
            )
        )
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
