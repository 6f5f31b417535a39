"""One truth for every count (issue 14): a campaign with every kind of outcome, and every output
that shows a count of it read back and held to the final outcomes.

A live campaign of two waves on a real worker in a thread (``worker`` fixture):

- wave 1: ``ok`` succeeds; ``flaky`` fails its first attempt and succeeds on the retry; ``bad``
  fails (a tool error); ``refused`` is denied by the worker (``python.call`` off the
  allow-list: its attempt ran and refused); ``unapproved`` is denied by the approver
  (``file.delete`` is HIGH: it never runs); ``write1`` writes a file (reversible);
- wave 2: ``after-bad`` is skipped (its dependency failed); ``write2`` writes a file; ``bad2``
  fails: 1 of 3 tasks is more than ``max_fail_percentage`` 25, so the campaign aborts and
  ``--rollback-on-abort`` (scope ``campaign``) compensates ``write1`` and ``write2``.

The truth is the outcomes Redis holds at the end. ``execution_summary.json`` (counts, per wave,
per agent), the wave files (``executed_tasks.jsonl``), ``tool_execution_log.jsonl``,
``state_transitions.jsonl``, ``rollback_events.jsonl``, ``report.md``, ``report.html``,
``system_health.json`` and the :class:`CampaignResult` must all say the same.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from buddy.coordinator.options import EXIT_ABORTED
from buddy.models import Mode, Outcome, TaskStatus
from buddy.outputs.writer import OutputWriter, tool_log_entries
from tests.unit.coordinator.conftest import Fleet, options

S = TaskStatus

#: Every task's final status, and its wave.
EXPECTED: dict[str, tuple[int, TaskStatus]] = {
    "ok": (1, S.SUCCEEDED),
    "flaky": (1, S.SUCCEEDED),
    "bad": (1, S.FAILED),
    "refused": (1, S.DENIED),
    "unapproved": (1, S.DENIED),
    "write1": (1, S.ROLLED_BACK),
    "after-bad": (2, S.SKIPPED),
    "write2": (2, S.ROLLED_BACK),
    "bad2": (2, S.FAILED),
}
#: Tasks whose tool never ran: no attempt, no line in the tool log.
NEVER_RAN = {"unapproved", "after-bad"}


def plan_lines(tmp_path: Path) -> list[dict[str, Any]]:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("f1", "f2", "victim"):
        (data / f"{name}.txt").write_text(f"version one of {name}\n")
    lines: list[dict[str, Any]] = [
        {"task_id": "ok", "tool": "noop", "wave": 1},
        {"task_id": "flaky", "tool": "flaky", "args": {"fail_first": 1}, "wave": 1},
        {"task_id": "bad", "tool": "file.sha256", "args": {"path": str(data / "missing.txt")}, "wave": 1},
        {"task_id": "refused", "tool": "python.call", "args": {"target": "os:getcwd"}, "wave": 1},
        {"task_id": "unapproved", "tool": "file.delete", "args": {"path": str(data / "victim.txt")}, "wave": 1},
        {"task_id": "write1", "tool": "file.write", "args": {"path": str(data / "f1.txt"), "content": "2"}, "wave": 1},
        {"task_id": "after-bad", "tool": "noop", "depends_on": ["bad"], "wave": 2},
        {"task_id": "write2", "tool": "file.write", "args": {"path": str(data / "f2.txt"), "content": "2"}, "wave": 2},
        {"task_id": "bad2", "tool": "file.sha256", "args": {"path": str(data / "missing2.txt")}, "wave": 2},
    ]  # fmt: skip
    return [{"confidence": 0.95, **x} for x in lines]


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def by_status(statuses: list[str]) -> dict[str, int]:
    """Status → how many, sorted by status."""
    return dict(sorted(Counter(statuses).items()))


def md_table(md: str, section: str) -> list[list[str]]:
    """The body rows of the first table under ``## <section>``, cells stripped."""
    lines = md.split(f"## {section}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [[c.strip() for c in r.strip("|").split("|")] for r in lines[start + 2 : end]]


def md_other(counts: dict[str, int]) -> str:
    """report.md's "other" cell: every status but succeeded and failed, sorted."""
    rest = {k: v for k, v in counts.items() if k not in ("succeeded", "failed")}
    return ", ".join(f"{k} {v}" for k, v in sorted(rest.items())) or "–"


def test_every_output_agrees_on_every_count(worker: Fleet, tmp_path: Path) -> None:
    plan = worker.plan(plan_lines(tmp_path), tmp_path)
    opts = options(
        tmp_path, mode=Mode.LIVE, max_fail_percentage=25, rollback_on_abort=True, rollback_scope="campaign"
    )

    c, result = worker.run(plan, opts, approver=lambda request: False)

    out = tmp_path / "out"
    # -- the truth: the final outcomes in Redis, which the result returns --------------------
    assert (result.status, result.exit_code) == ("aborted", EXIT_ABORTED), result.abort_reason
    assert result.abort_reason is not None and "max_fail_percentage" in result.abort_reason
    truth: dict[str, Outcome] = worker.store.outcomes(c.cid)
    assert result.outcomes == truth
    assert {t: (o.wave, o.status) for t, o in truth.items()} == EXPECTED
    assert (truth["flaky"].attempts, [e.attempt for e in truth["flaky"].errors]) == (2, [1])
    assert truth["refused"].error_type == "ToolDeniedError"
    assert truth["unapproved"].error_type == "approval_denied"
    assert truth["after-bad"].error_type == "upstream_failed"
    assert all(truth[t].rolled_back and truth[t].error_type is None for t in ("write1", "write2"))
    counts = by_status([o.status.value for o in truth.values()])
    assert counts == {"succeeded": 2, "failed": 2, "denied": 2, "rolled_back": 2, "skipped": 1}
    per_wave = {n: by_status([s.value for w, s in EXPECTED.values() if w == n]) for n in (1, 2)}
    per_agent = {
        a: by_status([o.status.value for o in truth.values() if o.agent_id == a])
        for a in sorted({o.agent_id or "-" for o in truth.values()})
    }
    assert sum(sum(x.values()) for x in per_agent.values()) == len(EXPECTED)

    # -- execution_summary.json and CampaignResult.summary -----------------------------------
    summary = json.loads((out / OutputWriter.SUMMARY).read_text())
    assert summary == result.summary.model_dump(mode="json")
    assert summary["counts"] == {"total": len(EXPECTED), "by_status": counts}
    assert {w["wave"]: w["counts"]["by_status"] for w in summary["waves"]} == per_wave
    assert {a: s["counts"]["by_status"] for a, s in summary["agents"].items()} == per_agent
    for w in summary["waves"]:
        assert w["counts"]["total"] == sum(per_wave[w["wave"]].values())
        assert w["success_rate"] == pytest.approx(
            per_wave[w["wave"]].get("succeeded", 0) / w["counts"]["total"]
        )
        wave_agents = {
            a: by_status([o.status.value for o in truth.values() if o.wave == w["wave"] and o.agent_id == a])
            for a in w["agents"]
        }
        assert {a: x["counts"]["by_status"] for a, x in w["agents"].items()} == wave_agents
    assert [r.summary.wave for r in result.waves] == [1, 2]

    # -- the wave files: each outcome as Redis holds it, in its wave's agent folder ------------
    rows: dict[str, tuple[int, str, Outcome]] = {}
    for path in sorted(out.glob(f"wave_*/agent_*/{OutputWriter.EXECUTED}")):
        n, agent = int(path.parent.parent.name.removeprefix("wave_")), path.parent.name.removeprefix("agent_")
        for row in jsonl(path):
            assert row["task_id"] not in rows, row["task_id"]
            rows[row["task_id"]] = (n, agent, Outcome.model_validate(row))
    assert set(rows) == set(truth)
    for tid, (n, agent, o) in rows.items():
        assert (n, agent) == (truth[tid].wave, truth[tid].agent_id), tid
        assert o == truth[tid], tid  # status rolled_back and rolled_back true for write1, write2
    assert {n: by_status([o.status.value for m, _, o in rows.values() if m == n]) for n in (1, 2)} == per_wave

    # -- tool_execution_log.jsonl: one line per attempt, the last one the outcome's -----------
    log = jsonl(out / OutputWriter.TOOL_LOG)
    lines: dict[str, list[dict[str, Any]]] = {}
    for x in log:
        lines.setdefault(x["task_id"], []).append(x)
    assert set(lines) == set(truth) - NEVER_RAN
    for tid, got in lines.items():
        o = truth[tid]
        assert [x["attempt"] for x in got] == list(range(1, o.attempts + 1)), tid
        assert got[-1]["status"] == o.status.value, tid
        assert got == [json.loads(e.model_dump_json()) for e in tool_log_entries(o)], tid
        for x in got:  # every attempt that ran, failed ones too, has its real start and duration
            assert x["start_time"] is not None and x["end_time"] is not None, (tid, x["attempt"])
            assert x["duration_ms"] > 0, (tid, x["attempt"])
    assert [x["status"] for x in lines["flaky"]] == ["failed", "succeeded"]
    assert lines["flaky"][0]["error_type"] == "FlakyError"
    assert lines["flaky"][0]["start_time"] < lines["flaky"][1]["start_time"]
    assert by_status([got[-1]["status"] for got in lines.values()]) == by_status(
        [o.status.value for t, o in truth.items() if t not in NEVER_RAN]
    )
    for tid in NEVER_RAN:
        assert (truth[tid].attempts, truth[tid].errors) == (0, []), tid

    # -- state_transitions.jsonl: every task's last state is its outcome's --------------------
    transitions = jsonl(out / OutputWriter.TRANSITIONS)
    assert [t["at"] for t in transitions] == sorted(t["at"] for t in transitions)
    last = {t["task_id"]: t["to"] for t in transitions}
    assert last == {t: o.status.value for t, o in truth.items()}
    assert {(t["task_id"], t["from"], t["to"]) for t in transitions} >= {
        ("write1", "succeeded", "rolled_back"),
        ("write2", "succeeded", "rolled_back"),
    }

    # -- rollback_events.jsonl: what was compensated is what ended rolled_back ----------------
    events = jsonl(out / OutputWriter.ROLLBACKS)
    assert [e.model_dump(mode="json") for e in c.rollbacks] == events
    rolled = {e["task_id"] for e in events if e["status"] == "rolled_back"}
    assert rolled == {t for t, o in truth.items() if o.status is S.ROLLED_BACK} == {"write1", "write2"}
    assert [e["task_id"] for e in events if e["status"] == "rolled_back"] == [
        "write2",
        "write1",
    ]  # newest first

    # -- report.md -----------------------------------------------------------------------------
    md = (out / OutputWriter.REPORT).read_text()
    assert (
        f"- outcomes: {len(EXPECTED)} of {len(EXPECTED)}; succeeded {counts['succeeded']}, "
        f"failed {counts['failed']}, other: {md_other(counts)}"
    ) in md
    md_waves = {int(r[0]): r for r in md_table(md, "Waves")}
    assert set(md_waves) == {1, 2}
    for n, want in per_wave.items():
        total = sum(want.values())
        assert md_waves[n][1:5] == [
            str(total),
            str(want.get("succeeded", 0)),
            str(want.get("failed", 0)),
            md_other(want),
        ], n
        assert md_waves[n][5] == f"{want.get('succeeded', 0) / total:.2f}"
    md_agents = {r[0]: r for r in md_table(md, "Agents")}
    assert set(md_agents) == set(per_agent)
    for a, want in per_agent.items():
        total = sum(want.values())
        assert md_agents[a][1:4] == [
            str(total),
            str(want.get("succeeded", 0)),
            str(total - want.get("succeeded", 0)),
        ]
    not_ok = {r[0].strip("`"): r[3] for r in md_table(md, "Tasks that did not succeed")}
    assert not_ok == {t: o.status.value for t, o in truth.items() if o.status is not S.SUCCEEDED}
    md_rollback = {r[0].strip("`"): r[3] for r in md_table(md, "Rollback")}
    assert md_rollback == {e["task_id"]: e["status"] for e in events}

    # -- report.html: the overview's counts ----------------------------------------------------
    html = (out / OutputWriter.HTML).read_text()
    overview = dict(re.findall(r'<tr><th class="l">([^<]*)</th><td class="l">([^<]*)</td></tr>', html))
    assert overview["tasks"] == str(len(EXPECTED))
    assert overview["by status"] == ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    tbody = html.split("<h2>Waves</h2>", 1)[1].split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    html_waves = {
        int(r[0]): r for r in (re.findall(r"<td[^>]*>(.*?)</td>", x) for x in tbody.split("</tr>")) if r
    }
    assert {n: r[1:3] for n, r in html_waves.items()} == {
        w["wave"]: [str(w["counts"]["total"]), f"{w['success_rate']:.3g}"] for w in summary["waves"]
    }

    # -- system_health.json: the campaign's metrics count the same tasks ----------------------
    health = json.loads((out / OutputWriter.HEALTH).read_text())
    assert health["campaign_id"] == c.cid and health["metrics"]["tasks"] == len(EXPECTED)
    assert result.health is not None and summary["health"] == pytest.approx(health["health"]["score"])
    assert [h["wave"] for h in health["history"]] == [1, 2]

    # -- the analysis and the report after the compensation -----------------------------------
    # system_health.json counts on the final outcomes: the two compensated writes count
    assert health["metrics"]["rollback_frequency"] > 0
    assert health["metrics"]["by_status"] == counts
    # report.md's health table shows no second success rate that could disagree with the
    # waves table: its column is the fleet's success (skipped, denied, cancelled left out)
    assert "fleet success" in md and "| success |" not in md.split("## Health, anomalies")[1]
    # an outcome the coordinator decided without running the task has no start time
    assert {t: truth[t].start_time for t in NEVER_RAN} == dict.fromkeys(NEVER_RAN)
