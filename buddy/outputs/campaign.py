"""The coordinator's files of ``outputs/<campaign>/`` (docs/architecture.md, "Outputs"):
per wave and agent the assignments, adjusted schedule and executed tasks; the tool log and
state transitions as they grow; at the end the summary and the reports.

One truth: a wave's ``executed_tasks.jsonl`` and the tool log's lines are written from the
outcomes Redis holds when the wave closes, and rewritten from the final ones when a later
compensation changes a task (:meth:`CampaignFiles.rollbacks`), so no file keeps showing
``succeeded`` for a task that ended ``rolled_back``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import orjson

from buddy.models import (
    AgentAssignment,
    CampaignInfo,
    ExecutionSummary,
    Mode,
    Outcome,
    RollbackEvent,
    ScheduleAdjustment,
    Strategy,
)
from buddy.outputs.writer import OutputWriter, tool_log_entries
from buddy.plan.conflicts import ConflictsReport
from buddy.plan.model import PlannedTask
from buddy.safety.gates import Gate
from buddy.state.lifecycle import Transition


class CampaignFiles:
    """Writes one campaign's files through an :class:`OutputWriter`. ``agent_ids``: every
    agent of the plan (each gets a folder per wave, so every wave has one layout)."""

    def __init__(self, out: OutputWriter, agent_ids: Sequence[str]) -> None:
        self.out = out
        self.agent_ids = list(agent_ids)

    @property
    def root(self) -> Path:
        return self.out.root

    def begin(self, info: CampaignInfo | None, conflicts: ConflictsReport | None) -> None:
        """Create the folder; ``campaign.json`` (not on resume: ``info`` None) and ``conflicts.json``."""
        self.out.create()
        if conflicts is not None:
            self.out.write_json(OutputWriter.CONFLICTS, conflicts)
        if info is not None:
            self.out.write_json(OutputWriter.CAMPAIGN, info)

    def rewrite_tool_log(self, outcomes: Iterable[Outcome]) -> None:
        """A resumed campaign's tool log, rebuilt from the outcomes Redis holds."""
        ordered = sorted(outcomes, key=lambda o: (o.wave, o.task_id))
        self.out.write_jsonl(
            self.out.root / OutputWriter.TOOL_LOG, (e for o in ordered for e in tool_log_entries(o))
        )

    def assignments(
        self, n: int, tasks: list[PlannedTask], gates: dict[str, Gate], mode: Mode, strategy: Strategy
    ) -> None:
        """``wave_<n>/agent_<id>/agent_assignments.jsonl`` for every agent."""
        by_agent: dict[str, list[AgentAssignment]] = defaultdict(list)
        for pt in tasks:
            gate = gates.get(pt.task.task_id)
            by_agent[pt.agent].append(
                AgentAssignment(
                    task_id=pt.task.task_id,
                    agent_id=pt.agent,
                    wave=n,
                    tool=pt.task.tool,
                    pinned=pt.pinned,
                    strategy=strategy,
                    priority=pt.task.priority,
                    predicted_success=pt.task.predicted_success,
                    confidence=pt.task.confidence,
                    mode=gate.mode if gate is not None else mode,
                    mode_reason=gate.reason if gate is not None else None,
                )
            )
        for agent in sorted(set(self.agent_ids) | set(by_agent)):
            self.out.write_jsonl(
                self.out.agent_dir(n, agent) / OutputWriter.ASSIGNMENTS, by_agent.get(agent, [])
            )

    def adjustments(self, n: int, moves: list[ScheduleAdjustment]) -> None:
        """Append failover and optimizer moves to ``wave_<n>/agent_<to>/adjusted_schedule.jsonl``."""
        by_to: dict[str, list[ScheduleAdjustment]] = defaultdict(list)
        for m in moves:
            by_to[m.to_agent].append(m)
        for to, rows in by_to.items():
            self.out.write_jsonl(self.out.agent_dir(n, to) / OutputWriter.ADJUSTED, rows, append=True)

    def wave(self, n: int, outcomes: list[Outcome], raw: dict[str, bytes], new: list[Outcome]) -> None:
        """``executed_tasks.jsonl`` per agent (each outcome's JSON as Redis holds it, ``raw``) and
        the tool log's lines for ``new`` outcomes (not those a resumed campaign had before).
        A compensation after the wave rewrites its tasks' lines (:meth:`rollbacks`)."""
        by_agent: dict[str, list[bytes]] = defaultdict(list)
        for o in outcomes:
            by_agent[o.agent_id or "-"].append(raw[o.task_id])
        for agent in sorted(set(self.agent_ids) | set(by_agent)):
            self.out.write_raw_jsonl(
                self.out.agent_dir(n, agent) / OutputWriter.EXECUTED, by_agent.get(agent, [])
            )
        self.out.append_jsonl(OutputWriter.TOOL_LOG, (e for o in new for e in tool_log_entries(o)))

    def transitions(self, mine: list[Transition], workers_raw: list[bytes]) -> None:
        """Append the coordinator's transitions and the workers' (as Redis holds them: only
        ``at`` is read), in time order, to ``state_transitions.jsonl``."""
        rows = [(t.at, t.model_dump_json().encode()) for t in mine]
        rows += [(datetime.fromisoformat(orjson.loads(x)["at"]), x) for x in workers_raw]
        if rows:
            rows.sort(key=lambda r: r[0])
            self.out.write_raw_jsonl(
                self.out.root / OutputWriter.TRANSITIONS, (x for _, x in rows), append=True
            )

    def rollbacks(
        self, events: list[RollbackEvent], outcomes: Mapping[str, Outcome] | None = None
    ) -> list[int]:
        """Append ``events`` to ``rollback_events.jsonl``; with ``outcomes`` (task id → final
        outcome as Redis holds it after the compensations; only the events' tasks are read),
        rewrite what the files written at each wave's close said about those tasks: their
        line in ``wave_<n>/agent_<id>/executed_tasks.jsonl`` and their lines in
        ``tool_execution_log.jsonl`` (:func:`~buddy.outputs.writer.tool_log_entries`), so a
        compensated task reads ``rolled_back`` there too (``needs_review`` when its
        compensation was fenced off).

        Returns the waves whose ``executed_tasks.jsonl`` changed, ascending: their summaries
        (``execution_summary.json``, ``report.md``) must be computed again from the final
        outcomes (:func:`buddy.coordinator.rollback.summaries_after`).
        """
        self.out.append_jsonl(OutputWriter.ROLLBACKS, events)
        if outcomes is None:
            return []
        changed = [outcomes[t] for t in dict.fromkeys(e.task_id for e in events) if t in outcomes]
        by_file: dict[tuple[int, str], dict[str, list[bytes]]] = defaultdict(dict)
        for o in changed:
            by_file[(o.wave, o.agent_id or "-")][o.task_id] = [o.model_dump_json().encode()]
        waves = {
            n
            for (n, agent), rows in by_file.items()
            if self.out.replace_rows(self.root / f"wave_{n}" / f"agent_{agent}" / OutputWriter.EXECUTED, rows)
        }
        self.out.replace_rows(
            self.root / OutputWriter.TOOL_LOG,
            {o.task_id: [e.model_dump_json().encode() for e in tool_log_entries(o)] for o in changed},
        )
        return sorted(waves)

    def finish(
        self, summary: ExecutionSummary, conflicts: ConflictsReport | None, report_md: str, html: str
    ) -> None:
        """``execution_summary.json``, ``conflicts.json`` (with lease contention), ``report.md``,
        ``report.html``."""
        self.out.write_json(OutputWriter.SUMMARY, summary)
        if conflicts is not None:
            self.out.write_json(OutputWriter.CONFLICTS, conflicts)
        self.out.write_text(OutputWriter.REPORT, report_md)
        self.out.write_text(OutputWriter.HTML, html)
