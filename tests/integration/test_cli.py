"""The CLI is the front door: ``buddy validate``, ``buddy run`` (exit codes, the status line,
Ctrl-C) end to end in subprocesses. What a campaign does is tested through the Python API
(``test_campaign.py`` and the others); ``buddy resume`` after ``kill -9`` is in ``test_recovery.py``.

The Ctrl-C tests run on the embedded default (a private ``redis-server`` and local workers,
all in sessions of their own) and check that nothing the run started survives it, also when
Ctrl-C is pressed again while the run tears down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from tests.helpers import buddy
from tests.integration.test_campaign import write_plan

pytestmark = pytest.mark.integration

WIDE = {"COLUMNS": "500"}  # no wrapped lines
STATUS_LINE = re.compile(r"^(\w+): (\d+)/(\d+) succeeded in [\d.]+ s; outputs in (.+)$", re.MULTILINE)


def test_a_bad_plan_exits_2_with_file_and_line_and_dispatches_nothing(tmp_path: Path) -> None:
    plan = tmp_path / "plan.jsonl"
    plan.write_text('{"task_id": "a", "tool": "noop"}\n{"task_id": "a", "tool": "nope"}\nnot json\n')
    out = tmp_path / "out"
    # an unreachable Redis: had anything been dispatched, the run would fail differently (exit 3)
    proc = buddy("run", str(plan), "--out", str(out), "--redis-url", "redis://127.0.0.1:1/0", env=WIDE)
    assert proc.returncode == 2, proc.stderr
    assert f"{plan}:2: duplicate task_id 'a'" in proc.stderr
    assert f"{plan}:2: unknown tool 'nope'" in proc.stderr
    assert f"{plan}:3: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "cannot run the campaign" not in proc.stderr
    assert not out.exists()
    # validate says the same
    checked = buddy("validate", str(plan), env=WIDE)
    assert checked.returncode == 2 and f"{plan}:3: not valid JSON" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_validate_prints_waves_by_agents_and_the_conflicts(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.jsonl",
        [
            {"task_id": "a", "tool": "noop"},
            {"task_id": "b", "tool": "noop", "depends_on": ["a"]},
            {"task_id": "c", "tool": "file.write", "args": {"path": "x.txt", "content": "1"}},
            {"task_id": "d", "tool": "file.write", "args": {"path": "x.txt", "content": "2"}},
        ],
    )
    proc = buddy("validate", str(plan), "--agents", "a1,a2", "--workdir", str(tmp_path), env=WIDE)
    assert proc.returncode == 0, proc.stderr
    # the title wraps to the table's width
    assert f"{plan}: 4 tasks, 3 waves, strategy round_robin".replace(" ", "") in "".join(proc.stdout.split())
    rows = [[c.strip() for c in line.strip("│┃ ").split("│" if "│" in line else "┃")]
            for line in proc.stdout.splitlines() if "│" in line or "┃" in line]  # fmt: skip
    assert rows[0] == ["wave", "a1", "a2", "total"]
    assert rows[1:] == [
        ["1", "1", "1", "2"],
        ["2", "1", "0", "1"],
        ["3", "1", "0", "1"],
        ["total", "3", "1", "4"],
    ]
    assert f"conflict write_write on file:{tmp_path / 'x.txt'} (c, d): serialize" in proc.stdout
    assert re.search(r"plan OK \(sha256 [0-9a-f]{64}\)", proc.stdout)
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "outputs").exists()


def test_run_exits_0_when_all_succeed_and_1_with_failures(
    fleet: LocalFleet, fleet_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    good = write_plan(tmp_path / "good.jsonl", [{"task_id": f"t{i}", "tool": "noop"} for i in range(4)])
    out = tmp_path / "good"
    proc = buddy(
        "run", str(good), "--redis-url", fleet_redis.url, "--out", str(out), "--no-progress", env=WIDE
    )
    assert proc.returncode == 0, proc.stderr
    [line] = STATUS_LINE.findall(proc.stderr)
    assert line == ("succeeded", "4", "4", str(out))
    assert json.loads((out / "execution_summary.json").read_text())["exit_code"] == 0

    bad = write_plan(
        tmp_path / "bad.jsonl",
        [
            {"task_id": "ok", "tool": "noop"},
            {"task_id": "missing", "tool": "file.sha256", "args": {"path": str(tmp_path / "nope")}},
            {"task_id": "after", "tool": "noop", "depends_on": ["missing"]},
        ],
    )
    out = tmp_path / "bad"
    proc = buddy("run", str(bad), "--mode", "live", "--redis-url", fleet_redis.url, "--out", str(out),
                 "--no-progress", env=WIDE)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    [line] = STATUS_LINE.findall(proc.stderr)
    assert line == ("finished_with_failures", "1", "3", str(out))
    summary = json.loads((out / "execution_summary.json").read_text())
    assert summary["status"] == "finished_with_failures" and summary["exit_code"] == 1
    assert "Traceback" not in proc.stderr


# -- Ctrl-C and teardown ---------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it; two are the same process when pid and start time agree."""

    pid: int
    ppid: int = field(compare=False)
    start: int  # clock ticks after boot: tells a process from a later one with its pid
    state: str = field(compare=False)
    cmdline: str = field(compare=False)


def _procs() -> dict[int, Proc]:
    table = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(d.name)] = Proc(
            int(d.name), ppid=int(fields[1]), start=int(fields[19]), state=fields[0], cmdline=cmd
        )
    return table


def _descendants(table: dict[int, Proc], pid: int) -> set[Proc]:
    found: set[Proc] = set()
    frontier = {pid}
    while frontier:
        nxt = {p for p in table.values() if p.ppid in frontier and p not in found}
        found |= nxt
        frontier = {p.pid for p in nxt}
    return found


def _marker(p: Proc) -> str | None:
    """The private Redis directory a process belongs to: a redis-server's working directory
    (it changes into ``--dir``), a worker's ``BUDDY_REDIS_URL`` socket directory."""
    try:
        if "redis-server" in p.cmdline:
            # its command line names the socket (``--unixsocket <dir>/redis.sock``, then its
            # title ``unixsocket:<dir>/redis.sock``); its working directory is ``--dir`` only
            # once it changed into it, not right after the spawn
            named = re.search(r"unixsocket[: ](\S+)", p.cmdline)
            return str(Path(named.group(1)).parent) if named else os.readlink(f"/proc/{p.pid}/cwd")
        env = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for kv in env:
        if kv.startswith(b"BUDDY_REDIS_URL=unix://"):
            return str(Path(kv.split(b"unix://", 1)[1].decode().rsplit("@", 1)[-1]).parent)
    return None


def _survivors(run_pid: int, seen: set[Proc], markers: set[str]) -> list[Proc]:
    """Live processes of the run: ones seen as its descendants (same pid and start time), and
    any other (an orphan reparented to PID 1 or a subreaper) whose private Redis directory is
    the run's, or a worker (or pool child) named after the run's pid (``<agent>-<n>-<pid>``)."""
    left = []
    for p in _procs().values():
        if p.state == "Z" or p.pid == os.getpid():
            continue
        named = ("worker" in p.cmdline or "celery" in p.cmdline) and re.search(
            rf"-\d+-{run_pid}\b", p.cmdline
        )
        if p in seen or named or _marker(p) in markers:
            left.append(p)
    return left


@dataclass
class Interrupted:
    pid: int
    code: int
    stderr: str
    seen: set[Proc]  # every descendant of the run seen while it ran
    markers: set[str]  # its private Redis directory
    out: Path
    alive_at_signal: list[int]  # how many of its processes (Redis, workers) lived at each SIGINT


def _run_and_interrupt(tmp_path: Path, signals: list[float], seconds: float) -> Interrupted:
    """``buddy run`` (embedded default, 3 agents) of six ``sleep`` tasks. Once wave 1 runs,
    SIGINT its process group (what a terminal's Ctrl-C does) at each of ``signals``: a delay
    in seconds after the previous one (the first: after the sleeps started), or -1 for "once
    the outputs are written" (the campaign is over and teardown begins)."""
    plan = write_plan(
        tmp_path / "plan.jsonl",
        [{"task_id": f"t{i}", "tool": "sleep", "args": {"seconds": seconds}} for i in range(6)],
    )
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")} | WIDE
    proc = subprocess.Popen(
        [sys.executable, "-m", "buddy", "run", str(plan), "--mode", "live", "--out", str(out), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    seen: set[Proc] = set()
    markers: set[str] = set()
    pending = list(signals)
    alive_at_signal: list[int] = []
    next_at: float | None = None  # when the next SIGINT is due (None: not yet started)
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            new = _descendants(_procs(), proc.pid) - seen  # redis-server, workers, pool children
            seen |= new
            markers |= {m for m in map(_marker, new) if m}
            now = time.monotonic()
            if next_at is None and (out / "wave_1").exists() and len(seen) >= 4:
                next_at = now + 0.5 + max(pending[0], 0.0) if pending else now  # the sleeps are running
            if next_at is not None and pending:
                due = (out / "execution_summary.json").exists() if pending[0] < 0 else now >= next_at
                if due:
                    os.killpg(proc.pid, signal.SIGINT)
                    table = _procs()
                    alive_at_signal.append(
                        sum(1 for p in seen if table.get(p.pid) == p and table[p.pid].state != "Z")
                    )
                    pending.pop(0)
                    next_at = now + (max(pending[0], 0.0) if pending else 0.0)
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert not pending, f"the run ended before every SIGINT was sent: {stderr}"
    return Interrupted(proc.pid, proc.returncode, stderr, seen, markers, out, alive_at_signal)


@pytest.mark.parametrize(
    "signals",
    [[], [0.0], [0.0, -1], [0.0, 0.3], [0.0, 0.05, 0.05, 0.05, 0.05, 0.05]],
    ids=["completes", "ctrl-c", "again-once-outputs-written", "again-during-teardown", "burst"],
)
def test_embedded_run_leaves_no_process_behind(tmp_path: Path, signals: list[float]) -> None:
    run = _run_and_interrupt(tmp_path, signals, seconds=0.3 if not signals else 4)
    redis = [p for p in run.seen if "redis-server" in p.cmdline]
    workers = [p for p in run.seen if "worker" in p.cmdline]
    assert redis and len(workers) >= 3, f"expected a redis-server and three workers: {run.seen}"
    assert run.markers, "the private Redis directory was never seen"
    assert "Traceback" not in run.stderr, run.stderr
    if not signals:
        assert run.code == 0, run.stderr
        assert STATUS_LINE.search(run.stderr), run.stderr
    else:
        assert run.code == 130, run.stderr
        assert "interrupted" in run.stderr
    if len(signals) > 1:
        # the last Ctrl-C came while the run still had a Redis or workers to stop
        assert run.alive_at_signal[-1] > 0, run.alive_at_signal
    if len(signals) <= 1 or signals[1] < 0:
        # one Ctrl-C, or a second one once they were written: the outputs are complete
        summary = json.loads((run.out / "execution_summary.json").read_text())
        assert summary["status"] == ("interrupted" if signals else "succeeded"), summary
        assert (run.out / "report.md").is_file()
    deadline = time.monotonic() + 5
    while (left := _survivors(run.pid, run.seen, run.markers)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], f"processes outlived buddy run: {left}"
    assert not any(Path(m).exists() for m in run.markers), "the private Redis directory was left behind"
