"""The examples are valid: the example plan and campaign config, and the demo's generated plan.

The full demo (a live campaign) is an integration test; here the demo's plan is built on a
small stdlib subset and validated, its HTTP server is checked, and :func:`demo.verify` is fed
outcomes with the true results and with wrong ones.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from buddy.cli.app import app
from buddy.config import load_campaign_config
from buddy.models import PlanTask, Strategy
from buddy.plan.build import build_plan
from buddy.tools.registry import default_registry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PLAN = EXAMPLES / "plan.example.jsonl"
CONFIG = EXAMPLES / "campaign.example.yaml"
#: What ops/Dockerfile copies into /app: the example plan may only use paths under these.
IN_IMAGE = ("pyproject.toml", "README.md", "buddy", "workers", "examples")


def _plan_lines(path: Path) -> list[PlanTask]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [PlanTask.model_validate_json(x) for x in lines if x.strip() and not x.startswith("#")]


# -- the example plan and config ------------------------------------------------------------


def test_example_campaign_config_loads() -> None:
    cfg = load_campaign_config(CONFIG)
    assert cfg.agents is not None
    assert [a.id for a in cfg.agents] == ["a1", "a2", "a3"]
    a3 = cfg.agents[2]
    assert a3.tools is not None and "shell" not in a3.tools and "file.sha256" not in a3.tools
    assert cfg.strategy == Strategy.LOAD_BALANCED


def test_example_plan_validates_with_the_example_config() -> None:
    cfg = load_campaign_config(CONFIG)
    assert cfg.agents is not None
    plan = build_plan(
        PLAN,
        default_registry(),
        cfg.agents,
        cfg.strategy or Strategy.ROUND_ROBIN,
        defaults=cfg.defaults,
        workdir=ROOT,
    )
    assert 8 <= len(plan.tasks) <= 15
    assert len(plan.waves) >= 3
    for pt in plan.tasks.values():  # capability routing held
        spec = next(a for a in plan.agents if a.id == pt.agent)
        assert spec.offers(pt.task.tool), f"{pt.task.task_id} went to {pt.agent}"


def test_example_plan_shows_every_field() -> None:
    tasks = _plan_lines(PLAN)
    given = {k for t in tasks for k in t.model_fields_set}
    assert {"depends_on", "resources", "priority", "predicted_success", "confidence"} <= given
    assert {"agent", "wave", "trigger_rule"} <= given


def test_example_plan_uses_only_what_the_image_holds() -> None:
    cfg = load_campaign_config(CONFIG)
    for t in _plan_lines(PLAN):
        path = str(t.args.get("path", ""))
        if t.tool == "file.write":
            assert Path(path).parent == Path("/tmp"), "write only where the non-root user may"
        elif path:
            assert not Path(path).is_absolute(), f"{t.task_id}: {path} is not relative to /app"
            assert Path(path).parts[0] in IN_IMAGE, f"{t.task_id}: {path} is not copied into the image"
            assert (ROOT / path).is_file(), f"{t.task_id}: {path} does not exist"
        if t.tool == "shell":
            assert t.args["argv"][0] in cfg.shell_allow


def test_validate_command_accepts_the_example() -> None:
    result = CliRunner().invoke(app, ["validate", str(PLAN), "--config", str(CONFIG)])
    assert result.exit_code == 0, result.output
    assert "plan OK" in result.output


# -- the demo -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("buddy_demo", EXAMPLES / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["buddy_demo"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_demo_serves_the_json_package(demo: ModuleType) -> None:
    root = demo.stdlib_dir() / "json"
    with demo.serve(root) as url, urllib.request.urlopen(f"{url}/decoder.py", timeout=5) as r:
        body = r.read()
    assert body == (root / "decoder.py").read_bytes()


def test_demo_plan_is_valid_and_layered(demo: ModuleType, tmp_path: Path) -> None:
    plan_path, config_path, exp = demo.build(tmp_path, "http://127.0.0.1:9", ["json"])
    cfg = load_campaign_config(config_path)
    assert cfg.agents is not None and cfg.mode is not None and cfg.mode.value == "live"
    assert cfg.shell_allow == [sys.executable]
    plan = build_plan(
        plan_path,
        default_registry(),
        cfg.agents,
        cfg.strategy or Strategy.ROUND_ROBIN,
        defaults=cfg.defaults,
        workdir=Path(cfg.workdir or "."),
    )
    n = len(exp.hashes)
    assert n == len(demo.find_sources(["json"])) >= 4
    assert len(exp.compiles) == n and len(exp.fetches) == n
    assert len(plan.tasks) == 3 * n + 1 == len(exp.task_ids)
    waves = {tid: pt.wave for tid, pt in plan.tasks.items()}
    assert {waves[t] for t in exp.hashes} == {1}
    assert {waves[t] for t in [*exp.compiles, *exp.fetches]} == {2}
    assert waves[exp.manifest_task] == 3
    for tid, pt in plan.tasks.items():
        assert pt.agent != "a3" or pt.task.tool in demo.A3_TOOLS, tid
    for pt in plan.tasks.values():
        if pt.task.tool == "shell":
            argv = pt.task.args["argv"]
            assert argv[0] == sys.executable and "-X" in argv and "py_compile" in argv


def _outcome(tid: str, tool: str, result: dict[str, Any], agent: str = "a1") -> dict[str, Any]:
    return {
        "task_id": tid,
        "campaign_id": "c-test",
        "agent_id": agent,
        "wave": 1,
        "status": "succeeded",
        "mode": "live",
        "tool": tool,
        "result": result,
    }


def _write_outcomes(out: Path, outcomes: list[dict[str, Any]]) -> None:
    d = out / "wave_1" / "agent_a1"
    d.mkdir(parents=True)
    (d / "executed_tasks.jsonl").write_text("".join(json.dumps(o) + "\n" for o in outcomes))


def _true_outcomes(exp: Any) -> list[dict[str, Any]]:
    rows = []
    for tid, s in exp.hashes.items():
        digest = hashlib.sha256(s.path.read_bytes()).hexdigest()
        rows.append(_outcome(tid, "file.sha256", {"sha256": digest, "bytes": s.size}))
    for tid in exp.compiles:
        rows.append(_outcome(tid, "shell", {"returncode": 0, "stdout": "", "stderr": ""}))
    for tid, s in exp.fetches.items():
        body = s.path.read_text(encoding="utf-8")
        rows.append(_outcome(tid, "http.request", {"status": 200, "body": body}, agent="a3"))
    rows.append(_outcome(exp.manifest_task, "file.write", {"bytes": 1, "created": True}))
    return rows


def test_demo_verify_accepts_the_truth(demo: ModuleType, tmp_path: Path) -> None:
    _, _, exp = demo.build(tmp_path / "work", "http://127.0.0.1:9", ["json"])
    exp.manifest_path.write_text(exp.manifest_content, encoding="utf-8")
    _write_outcomes(tmp_path / "out", _true_outcomes(exp))
    verdict = demo.verify(tmp_path / "out", exp, demo.snapshot(exp.watched_dirs))
    assert verdict.ok, verdict.problems
    n = len(exp.hashes)
    assert (verdict.hashes_ok, verdict.compiles_ok, verdict.pages_ok, verdict.manifest_ok) == (n, n, n, True)


def test_demo_verify_catches_lies(demo: ModuleType, tmp_path: Path) -> None:
    _, _, exp = demo.build(tmp_path / "work", "http://127.0.0.1:9", ["json"])
    rows = _true_outcomes(exp)
    rows[0]["result"]["sha256"] = "0" * 64  # a wrong hash
    compile_row = next(r for r in rows if r["tool"] == "shell")
    compile_row["status"], compile_row["error_msg"] = "failed", "SyntaxError"
    fetch_row = next(r for r in rows if r["tool"] == "http.request")
    fetch_row["result"]["body"] += "#"  # a page that is not the file
    shell_on_a3 = next(r for r in rows if r["tool"] == "shell" and r is not compile_row)
    shell_on_a3["agent_id"] = "a3"  # a tool a3 does not offer
    rows = [r for r in rows if r["task_id"] != exp.manifest_task]  # the manifest never ran
    _write_outcomes(tmp_path / "out", rows)
    verdict = demo.verify(tmp_path / "out", exp)
    text = "\n".join(verdict.problems)
    assert not verdict.ok
    assert rows[0]["task_id"] in text
    assert compile_row["task_id"] in text
    assert fetch_row["task_id"] in text
    assert "agent a3 ran shell" in text
    assert f"{exp.manifest_task}: no outcome" in text
    assert not verdict.manifest_ok


def _result(exp: Any, out: Path, rows: list[dict[str, Any]], status: str = "succeeded") -> Any:
    from buddy import CampaignResult, Outcome
    from buddy.models import ExecutionSummary, StatusCounts

    counts = StatusCounts()
    for r in rows:
        counts.add(r["status"])
    summary = ExecutionSummary(
        campaign_id="c-test",
        status=status,  # type: ignore[arg-type]
        exit_code=0 if status == "succeeded" else 1,
        mode="live",  # type: ignore[arg-type]
        counts=counts,
        agents={},
        waves=[],
        start_time="2026-01-01T00:00:00Z",  # type: ignore[arg-type]
        end_time=None,
        wall_s=1.0,
    )
    (out / "execution_summary.json").write_text(summary.model_dump_json())
    outcomes = {r["task_id"]: Outcome.model_validate(r) for r in rows}
    return CampaignResult(
        campaign_id="c-test",
        status=summary.status,
        exit_code=summary.exit_code,
        out_dir=out,
        summary=summary,
        outcomes=outcomes,
        health=None,
        waves=[],
    )


def test_demo_checks_the_campaign_result_against_the_files(demo: ModuleType, tmp_path: Path) -> None:
    _, _, exp = demo.build(tmp_path / "work", "http://127.0.0.1:9", ["json"])
    exp.manifest_path.write_text(exp.manifest_content, encoding="utf-8")
    rows = _true_outcomes(exp)
    out = tmp_path / "out"
    _write_outcomes(out, rows)
    verdict = demo.verify(out, exp, None, _result(exp, out, rows))
    assert verdict.ok, verdict.problems

    told = json.loads(json.dumps(rows))
    told[0]["result"]["sha256"] = "f" * 64  # the result says another hash than the file
    told = told[:-1]  # and has no outcome for the manifest
    problems = demo.check_result(_result(exp, out, told, status="finished_with_failures"), out, exp)
    text = "\n".join(problems)
    assert "finished_with_failures (exit code 1)" in text
    assert f"{rows[0]['task_id']}: the CampaignResult and executed_tasks.jsonl differ in result" in text
    assert exp.manifest_task in text and "without an outcome in the CampaignResult" in text
    assert "the summary counts" in text
