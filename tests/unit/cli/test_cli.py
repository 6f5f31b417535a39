"""The CLI's own behaviour: plugin tools, clear errors for bad input, the validate summary."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from buddy.cli.app import app

runner = CliRunner()


def test_tools_module_registers_a_plugin_tool() -> None:
    res = runner.invoke(app, ["tools", "--json", "--tools", "tests.fixtures.sample_tools"])
    assert res.exit_code == 0, res.output
    names = {t["name"]: t for t in json.loads(res.stdout)}
    assert names["sample.upper"]["description"] == "Upper-case a string (a plugin tool for tests)."
    assert names["sample.upper"]["args_schema"]["required"] == ["text"]
    assert "file.sha256" in names


def test_a_bad_contract_module_is_refused_with_exit_2() -> None:
    res = runner.invoke(app, ["tools", "--tools", "tests.fixtures.bad_tools"])
    assert res.exit_code == 2
    assert "sample.broken" in res.stderr and "reversible=True needs a rollback" in res.stderr


def test_a_missing_tool_module_is_a_clear_error() -> None:
    res = runner.invoke(app, ["tools", "--tools", "no.such.module"])
    assert res.exit_code == 2 and "cannot import tool module 'no.such.module'" in res.stderr


def test_validate_prints_waves_by_agents(tmp_path: Path) -> None:
    plan = tmp_path / "p.jsonl"
    plan.write_text(
        "\n".join(
            json.dumps(x)
            for x in [
                {"task_id": "a", "tool": "noop"},
                {"task_id": "b", "tool": "noop"},
                {"task_id": "c", "tool": "noop", "depends_on": ["a", "b"]},
            ]
        )
    )
    res = runner.invoke(app, ["validate", str(plan), "--agents", "2"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.stdout.splitlines() if "│" in x]
    assert [x.split("│")[1].strip() for x in lines] == ["1", "2", "total"]
    assert "plan OK" in res.stdout


def test_validate_reports_every_error_with_file_and_line(tmp_path: Path) -> None:
    plan = tmp_path / "p.jsonl"
    plan.write_text('{"task_id": "a", "tool": "noop"}\n{"task_id": "a", "tool": "noop"}\n[1]\n')
    res = runner.invoke(app, ["validate", str(plan)])
    assert res.exit_code == 2
    assert f"{plan}:2:" in res.stderr and f"{plan}:3:" in res.stderr and "Traceback" not in res.stderr


def test_bad_config_file_is_exit_2(tmp_path: Path) -> None:
    plan = tmp_path / "p.jsonl"
    plan.write_text('{"task_id": "a", "tool": "noop"}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text("agents:\n  - id: a1\n    concurrency: zero\n")
    res = runner.invoke(app, ["run", str(plan), "--config", str(cfg)])
    assert res.exit_code == 2 and "agents.0.concurrency" in res.stderr
