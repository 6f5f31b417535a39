"""A whole campaign in-process: the coordinator against the session's private Redis and a
real Celery worker in a thread (``start_worker``); outcomes, result, hooks and output files."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from buddy.coordinator.hooks import CampaignHooks
from buddy.coordinator.options import EXIT_ABORTED, EXIT_FAILURES, EXIT_OK
from buddy.models import Mode, TaskStatus
from tests.unit.coordinator.conftest import FakeClock, Fleet, Recorder, options


def two_waves(tmp_path: Path, missing: str | None = None) -> list[dict[str, Any]]:
    """2 waves x 2 agents: ``hash-x``/``hash-y`` in wave 1, ``again-x``/``again-y`` (each
    depending on its hash) in wave 2; the file named ``missing`` is not created."""
    lines = []
    for name in ("x", "y"):
        if name != missing:
            (tmp_path / f"{name}.txt").write_text(f"content of {name}\n")
        lines.append({"task_id": f"hash-{name}", "tool": "file.sha256", "args": {"path": f"{name}.txt"}})
        lines.append(
            {
                "task_id": f"again-{name}",
                "tool": "file.sha256",
                "args": {"path": f"{name}.txt"},
                "depends_on": [f"hash-{name}"],
            }
        )
    return [{"confidence": 0.9, **x} for x in lines]


def test_mock_campaign_of_two_waves_runs_every_task_and_writes_its_outputs(
    worker: Fleet, tmp_path: Path
) -> None:
    plan = worker.plan(two_waves(tmp_path), tmp_path)
    assert {t: (p.wave, p.agent) for t, p in plan.tasks.items()} == {
        "hash-x": (1, "a1"),
        "again-x": (2, "a1"),
        "hash-y": (1, "a2"),
        "again-y": (2, "a2"),
    }
    hooks = Recorder()

    c, result = worker.run(plan, options(tmp_path, mode=Mode.MOCK), hooks=[hooks])

    assert (result.status, result.exit_code, result.abort_reason) == ("succeeded", EXIT_OK, None)
    assert result.ok and result.campaign_id == c.cid
    assert result.out_dir == tmp_path / "out"
    assert set(result.outcomes) == {"hash-x", "hash-y", "again-x", "again-y"}
    for tid, o in result.outcomes.items():
        assert (o.status, o.mode, o.attempts) == (TaskStatus.SUCCEEDED, Mode.MOCK, 1), tid
        assert (o.wave, o.agent_id) == (plan.tasks[tid].wave, plan.tasks[tid].agent), tid
        assert o.campaign_id == c.cid and o.tool == "file.sha256"
        # mock mode: the digest of the path string, no file read
        path = plan.tasks[tid].task.args["path"]
        assert o.result == {"sha256": hashlib.sha256(path.encode()).hexdigest(), "bytes": 0}, tid
    assert [w.summary.wave for w in result.waves] == [1, 2]
    # hooks: once around the campaign, in order around each wave; the report of each wave
    assert hooks.calls == [
        ("before_campaign", None),
        ("before_wave", 1),
        ("after_wave", 1),
        ("before_wave", 2),
        ("after_wave", 2),
        ("after_campaign", 2),
    ]
    assert [r.summary.wave for r in hooks.reports] == [1, 2]
    assert hooks.results == [result] and hooks.approvals == []
    # outputs
    out = tmp_path / "out"
    for name in ("campaign.json", "execution_summary.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "execution_summary.json").read_text())
    assert (summary["campaign_id"], summary["status"], summary["exit_code"]) == (c.cid, "succeeded", 0)
    assert summary["mode"] == "mock"
    assert summary["counts"]["total"] == 4 and summary["counts"]["by_status"] == {"succeeded": 4}
    assert [w["wave"] for w in summary["waves"]] == [1, 2]
    assert [w["counts"]["total"] for w in summary["waves"]] == [2, 2]
    assert sorted(summary["agents"]) == ["a1", "a2"]
    assert all(a["counts"]["total"] == 2 for a in summary["agents"].values())
    for wave, agent, tid in (
        (1, "a1", "hash-x"),
        (1, "a2", "hash-y"),
        (2, "a1", "again-x"),
        (2, "a2", "again-y"),
    ):
        rows = (out / f"wave_{wave}" / f"agent_{agent}" / "executed_tasks.jsonl").read_text().splitlines()
        assert [json.loads(r)["task_id"] for r in rows] == [tid]
    # and Redis says the same
    assert worker.store.campaign(c.cid)["status"] == "succeeded"


def test_live_campaign_skips_the_dependent_of_a_failed_task(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(two_waves(tmp_path, missing="y"), tmp_path)

    _, result = worker.run(plan, options(tmp_path, mode=Mode.LIVE))

    assert (result.status, result.exit_code) == ("finished_with_failures", EXIT_FAILURES)
    got = {t: o.status for t, o in result.outcomes.items()}
    assert got == {
        "hash-x": TaskStatus.SUCCEEDED,
        "again-x": TaskStatus.SUCCEEDED,
        "hash-y": TaskStatus.FAILED,
        "again-y": TaskStatus.SKIPPED,
    }
    data = (tmp_path / "x.txt").read_bytes()
    real = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert result.outcomes["hash-x"].result == real and result.outcomes["again-x"].result == real
    assert result.outcomes["hash-x"].mode is Mode.LIVE
    assert result.outcomes["hash-y"].error_type == "FileNotFoundError"
    skipped = result.outcomes["again-y"]
    assert (skipped.error_type, skipped.attempts, skipped.wave) == ("upstream_failed", 0, 2)
    assert skipped.error_msg == "dependency 'hash-y' ended failed"
    summary = json.loads((tmp_path / "out" / "execution_summary.json").read_text())
    assert summary["counts"]["by_status"] == {"succeeded": 2, "failed": 1, "skipped": 1}
    assert summary["exit_code"] == EXIT_FAILURES


class Broken(CampaignHooks):
    def before_wave(self, ctx: Any) -> None:
        raise RuntimeError(f"broken before wave {ctx.wave}")


def test_a_failing_hook_is_logged_by_name_and_the_campaign_goes_on(
    worker: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = worker.plan(two_waves(tmp_path), tmp_path)
    after = Recorder()
    caplog.set_level(logging.ERROR, logger="buddy.hooks")

    _, result = worker.run(plan, options(tmp_path, mode=Mode.MOCK), hooks=[Broken(), after])

    assert result.status == "succeeded" and len(result.outcomes) == 4
    records = [r for r in caplog.records if r.name == "buddy.hooks"]
    assert [r.getMessage() for r in records] == [
        "hook Broken.before_wave raised; the campaign goes on",
        "hook Broken.before_wave raised; the campaign goes on",
    ]
    assert [str(r.exc_info[1]) for r in records if r.exc_info] == [
        "broken before wave 1",
        "broken before wave 2",
    ]
    # the hook after the broken one is still called every time
    assert [name for name, _ in after.calls].count("before_wave") == 2


def test_without_a_live_worker_the_campaign_aborts_after_the_wait(fleet: Fleet, tmp_path: Path) -> None:
    plan = fleet.plan(two_waves(tmp_path), tmp_path)
    hooks = Recorder()
    clock = FakeClock(now=0.0)

    _, result = fleet.run(plan, options(tmp_path, worker_wait_s=2.0), hooks=[hooks], clock=clock)

    assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED)
    assert result.abort_reason is not None
    assert result.abort_reason.startswith(
        "no live worker consumes buddy.agent.a1, buddy.agent.a2 (waited 2 s)"
    )
    assert 2.0 <= clock.now < 2.2
    assert result.outcomes == {} and result.waves == []
    assert hooks.calls == [("before_campaign", None), ("after_campaign", None)]
    summary = json.loads((tmp_path / "out" / "execution_summary.json").read_text())
    assert (summary["status"], summary["exit_code"]) == ("aborted", EXIT_ABORTED)
    assert summary["abort_reason"] == result.abort_reason


def test_a_deduplicated_twin_takes_the_outcome_of_the_call_that_ran(worker: Fleet, tmp_path: Path) -> None:
    from buddy.plan.conflicts import resolve
    from buddy.plan.policy import ConflictPolicy

    log = tmp_path / "log.txt"
    line = {"tool": "file.append", "args": {"path": str(log), "line": "hello"}, "confidence": 0.95}
    plan = worker.plan([{"task_id": "log-1", **line}, {"task_id": "log-2", **line}], tmp_path)
    plan.conflicts = resolve(plan, worker.registry, ConflictPolicy())
    assert len(plan.reuse) == 1

    _, result = worker.run(plan, options(tmp_path, mode=Mode.LIVE))

    assert log.read_text() == "hello\n"  # the irreversible call ran once
    assert result.status == "succeeded"
    ((twin, source),) = plan.reuse.items()
    assert result.outcomes[source].status is TaskStatus.SUCCEEDED
    copy = result.outcomes[twin]
    assert copy.status is TaskStatus.SUCCEEDED and copy.result == result.outcomes[source].result
    assert copy.mode_reason == f"deduplicated: takes the outcome of {source}, which ran the same call"
