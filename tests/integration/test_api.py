"""The Python API end to end: ``import buddy`` only, an in-memory plan run live on the embedded
default (a private ``redis-server`` and local worker processes), with an approver and a hook."""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Any

import pytest

import buddy


def _ours() -> set[int]:
    """Processes this test session started that a campaign could leave behind: redis-server
    and Celery workers, found by walking /proc for descendants of this process."""
    me = os.getpid()
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        names[int(d.name)] = cmd
    out = set()
    for pid, cmd in names.items():
        if "redis-server" not in cmd and "celery" not in cmd and "workers" not in cmd:
            continue
        p = pid
        while p in parents and p not in (0, 1):
            if parents[p] == me:
                out.add(pid)
                break
            p = parents[p]
        # start_new_session keeps the parent link: a reparented orphan has parent 1 and is
        # found by its socket/out dir below, not here
    return out


def _stdlib_files() -> list[Path]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    return sorted((lib / "json").glob("*.py"))


def _plan(victim: Path) -> list[dict[str, Any]]:
    files = _stdlib_files()
    tasks: list[dict[str, Any]] = [
        {"task_id": f"hash-{p.stem}", "tool": "file.sha256", "args": {"path": str(p)}, "confidence": 0.95}
        for p in files
    ]
    tasks.append(
        {
            "task_id": "echo",
            "tool": "shell",
            "args": {"argv": ["echo", "hello from buddy"]},
            "depends_on": [tasks[0]["task_id"]],
            "predicted_success": 0.9,
            "confidence": 0.95,
        }
    )
    tasks.append(
        {"task_id": "delete", "tool": "file.delete", "args": {"path": str(victim)}, "confidence": 0.95}
    )
    return tasks


class CountingHook(buddy.CampaignHooks):
    def __init__(self) -> None:
        self.after_wave_calls: list[int] = []
        self.results: list[buddy.CampaignResult] = []

    def after_wave(self, ctx: buddy.CampaignContext, report: Any) -> None:
        assert ctx.wave is not None
        self.after_wave_calls.append(ctx.wave)

    def after_campaign(self, ctx: buddy.CampaignContext, result: buddy.CampaignResult) -> None:
        self.results.append(result)


class BrokenHook(buddy.CampaignHooks):
    def before_wave(self, ctx: buddy.CampaignContext) -> None:
        raise RuntimeError("a hook that fails must not stop the campaign")


def test_a_library_campaign_runs_live_with_an_approver_and_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDDY_SHELL_ALLOW", "echo")
    monkeypatch.delenv("BUDDY_REDIS_URL", raising=False)
    victim = tmp_path / "keep.txt"
    victim.write_text("must survive\n")
    asked: list[buddy.ApprovalRequest] = []

    def approver(request: buddy.ApprovalRequest) -> bool:
        asked.append(request)
        return request.tool == "shell"

    hook = CountingHook()
    before = _ours()
    camp = buddy.Campaign(
        _plan(victim),
        agents=["a1", "a2"],
        mode="live",
        approver=approver,
        hooks=[BrokenHook(), hook],
        out_dir=tmp_path / "out",
    )
    result = camp.run()

    files = _stdlib_files()
    for p in files:
        o = result.outcomes[f"hash-{p.stem}"]
        assert o.status is buddy.TaskStatus.SUCCEEDED, o
        assert o.result is not None and o.result["sha256"] == hashlib.sha256(p.read_bytes()).hexdigest()
    echo = result.outcomes["echo"]
    assert echo.status is buddy.TaskStatus.SUCCEEDED, echo
    assert echo.result is not None and echo.result["stdout"].strip() == "hello from buddy"
    deleted = result.outcomes["delete"]
    assert deleted.status is buddy.TaskStatus.DENIED
    assert "approver" in (deleted.error_msg or "")
    assert victim.read_text() == "must survive\n"
    assert sorted(r.tool for r in asked) == ["file.delete", "shell"]
    assert all(r.campaign_id == result.campaign_id and r.confidence > 0 for r in asked)

    waves = len(result.summary.waves)
    assert waves == 2
    assert hook.after_wave_calls == [1, 2]
    assert hook.results == [result]
    assert result.status == "finished_with_failures" and result.exit_code == 1  # one task denied
    summary = json.loads((result.out_dir / "execution_summary.json").read_text())
    assert summary["counts"]["by_status"] == {"succeeded": len(files) + 1, "denied": 1}
    assert result.health is not None and 0 <= result.health.score <= 100
    assert [w.summary.wave for w in result.waves] == [1, 2]
    assert _ours() - before == set(), "the campaign left processes behind"


def test_a_dangling_dependency_raises_plan_error_naming_the_index(tmp_path: Path) -> None:
    tasks = _plan(tmp_path / "x")
    tasks.append({"task_id": "late", "tool": "file.sha256", "args": {"path": "a"}, "depends_on": ["nope"]})
    with pytest.raises(buddy.PlanError) as e:
        buddy.Campaign(tasks).validate()
    index = len(tasks)
    assert [(s, n) for s, n, _ in e.value.errors] == [("<tasks>", index)]
    assert "nope" in e.value.errors[0][2]
    assert f"<tasks>:{index}:" in str(e.value)


def test_unknown_keyword_names_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="did you mean 'max_fail_percentage'"):
        buddy.Campaign([], max_fail_percent=10)
