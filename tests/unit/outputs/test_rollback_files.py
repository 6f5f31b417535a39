"""After a compensation the files written at each wave's close show the final outcomes.

:meth:`CampaignFiles.rollbacks` rewrites the compensated tasks' lines of
``wave_<n>/agent_<id>/executed_tasks.jsonl`` and ``tool_execution_log.jsonl`` (every other
line unchanged, byte for byte), and :func:`summaries_after` recomputes those waves' summaries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from buddy.analysis.agents import status_counts, summarize_wave
from buddy.coordinator.rollback import summaries_after
from buddy.models import AttemptError, Mode, Outcome, RollbackEvent, TaskStatus
from buddy.outputs.campaign import CampaignFiles
from buddy.outputs.writer import OutputWriter, tool_log_entries

T0 = datetime(2024, 1, 1, tzinfo=UTC)
CID = "c-rb"
S = TaskStatus
EventStatus = Literal["rolled_back", "failed", "skipped", "not_reversible"]


def o(task_id: str, wave: int, agent: str, status: TaskStatus, **kw: object) -> Outcome:
    base: dict[str, object] = {
        "task_id": task_id,
        "campaign_id": CID,
        "agent_id": agent,
        "wave": wave,
        "status": status,
        "mode": Mode.LIVE,
        "attempts": 1,
        "start_time": T0 + timedelta(seconds=wave),
        "end_time": T0 + timedelta(seconds=wave + 1),
        "duration_ms": 1000.0,
        "worker": "w1",
        "tool": "file.write",
    }
    return Outcome.model_validate(base | kw)


FLAKE = AttemptError(attempt=1, error_type="Flake", error_msg="no", at=T0, start_time=T0, duration_ms=3.0)
WAVES = {
    1: [
        o("w1", 1, "a1", S.SUCCEEDED),
        o("flaky", 1, "a1", S.SUCCEEDED, attempts=2, errors=[FLAKE]),
        o("bad", 1, "a2", S.FAILED, error_type="Boom"),
    ],
    2: [o("w2", 2, "a2", S.SUCCEEDED), o("after", 2, "a1", S.SKIPPED, attempts=0, worker=None)],
}


def write_waves(root: Path) -> CampaignFiles:
    files = CampaignFiles(OutputWriter(root), ["a1", "a2"])
    files.begin(None, None)
    for n, outs in WAVES.items():
        files.wave(n, outs, {x.task_id: x.model_dump_json().encode() for x in outs}, outs)
    return files


def event(task_id: str, wave: int, agent: str, status: EventStatus = "rolled_back") -> RollbackEvent:
    return RollbackEvent(
        campaign_id=CID, task_id=task_id, tool="file.write", agent_id=agent, wave=wave, status=status, at=T0
    )  # fmt: skip


def executed(root: Path, n: int, agent: str) -> list[dict[str, object]]:
    path = root / f"wave_{n}" / f"agent_{agent}" / OutputWriter.EXECUTED
    return [json.loads(x) for x in path.read_text().splitlines()]


def files_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


def test_rollbacks_rewrite_the_compensated_tasks_lines_and_nothing_else(tmp_path: Path) -> None:
    files = write_waves(tmp_path)
    before = files_bytes(tmp_path)
    final = {x.task_id: x for outs in WAVES.values() for x in outs}
    for tid in ("w1", "w2"):
        final[tid] = final[tid].model_copy(update={"status": S.ROLLED_BACK, "rolled_back": True})
    events = [event("w2", 2, "a2"), event("w1", 1, "a1"), event("flaky", 1, "a1", "not_reversible")]

    waves = files.rollbacks(events, final)

    assert waves == [1, 2]
    after = files_bytes(tmp_path)
    changed = {name for name in after if after[name] != before.get(name)}
    assert changed == {
        "rollback_events.jsonl",
        "tool_execution_log.jsonl",
        "wave_1/agent_a1/executed_tasks.jsonl",
        "wave_2/agent_a2/executed_tasks.jsonl",
    }
    # the wave files read the final outcomes, in their order
    assert [(r["task_id"], r["status"], r["rolled_back"]) for r in executed(tmp_path, 1, "a1")] == [
        ("w1", "rolled_back", True),
        ("flaky", "succeeded", False),
    ]
    assert [(r["task_id"], r["status"]) for r in executed(tmp_path, 2, "a2")] == [("w2", "rolled_back")]
    for n, outs in WAVES.items():
        for x in outs:
            rows = {r["task_id"]: r for r in executed(tmp_path, n, x.agent_id or "-")}
            assert Outcome.model_validate(rows[x.task_id]) == final[x.task_id]
    # the tool log is what tool_log_entries makes of the final outcomes, lines in the same order
    log = (tmp_path / OutputWriter.TOOL_LOG).read_text().splitlines()
    want = [e.model_dump_json() for n in WAVES for x in WAVES[n] for e in tool_log_entries(final[x.task_id])]
    assert log == want
    assert [json.loads(x)["task_id"] for x in log] == ["w1", "flaky", "flaky", "bad", "w2"]
    events_file = (tmp_path / OutputWriter.ROLLBACKS).read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in events_file] == ["w2", "w1", "flaky"]


def test_a_fenced_compensation_shows_needs_review(tmp_path: Path) -> None:
    files = write_waves(tmp_path)
    final = {x.task_id: x for outs in WAVES.values() for x in outs}
    final["w2"] = final["w2"].model_copy(
        update={"status": S.NEEDS_REVIEW, "error_type": "lease_lost", "error_msg": "compensation fenced off"}
    )
    assert files.rollbacks([event("w2", 2, "a2", "failed")], final) == [2]
    (row,) = executed(tmp_path, 2, "a2")
    assert (row["status"], row["error_type"]) == ("needs_review", "lease_lost")


def test_without_outcomes_or_changes_only_the_events_are_written(tmp_path: Path) -> None:
    files = write_waves(tmp_path)
    before = files_bytes(tmp_path)
    final = {x.task_id: x for outs in WAVES.values() for x in outs}

    assert files.rollbacks([event("w1", 1, "a1", "failed")]) == []
    assert files.rollbacks([event("w1", 1, "a1", "failed")], final) == []  # nothing changed
    # a task no wave file holds (its wave never closed here) is not added anywhere
    ghost = o("ghost", 3, "a1", S.ROLLED_BACK, rolled_back=True)
    assert files.rollbacks([event("ghost", 3, "a1")], {"ghost": ghost}) == []

    after = files_bytes(tmp_path)
    assert {n for n in after if after[n] != before.get(n)} == {"rollback_events.jsonl"}
    assert not (tmp_path / "wave_3").exists()
    assert len((tmp_path / OutputWriter.ROLLBACKS).read_text().splitlines()) == 3


def test_summaries_after_recompute_only_the_changed_waves() -> None:
    summaries = [summarize_wave(CID, n, outs) for n, outs in WAVES.items()]
    final = {x.task_id: x for outs in WAVES.values() for x in outs}
    final["w2"] = final["w2"].model_copy(update={"status": S.ROLLED_BACK, "rolled_back": True})

    again = summaries_after(summaries, final, [2])

    assert again[0] is summaries[0]
    assert again[1].counts.by_status == {"rolled_back": 1, "skipped": 1}
    assert again[1].success_rate == 0.0
    assert again[1].agents["a2"].counts.by_status == {"rolled_back": 1}
    assert (again[1].wall_s, again[1].throughput_tps) == (summaries[1].wall_s, summaries[1].throughput_tps)
    # the waves add up to the campaign's counts again
    total: dict[str, int] = {}
    for s in again:
        for k, v in s.counts.by_status.items():
            total[k] = total.get(k, 0) + v
    assert total == status_counts(final.values()).by_status
    assert summaries_after(summaries, final, []) == summaries
