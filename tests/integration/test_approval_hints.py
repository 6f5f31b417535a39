"""The approval hint works when pasted: ``buddy run`` on the embedded default (its own
``redis-server`` and local worker, nothing configured) prints the command that approves a
HIGH-risk task; run as it was printed, in a process of its own, it reaches that Redis and the
campaign goes on. Meanwhile ``buddy status``, given no URL at all, finds the campaign through
the embedded Redis's state file and says what it waits for.

``XDG_STATE_HOME`` is the test's own directory, so no other campaign of this machine is seen;
nothing here touches 127.0.0.1:6379."""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from buddy.safety.gates import operator
from tests.helpers import buddy, redis_server_path
from tests.integration.test_campaign import write_plan

pytestmark = pytest.mark.integration


def clean_env(state: Path) -> dict[str, str]:
    """This environment without ``BUDDY_*`` (nothing configured), with its own state directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    env["XDG_STATE_HOME"] = str(state)
    return env


def test_a_pasted_approval_hint_reaches_the_embedded_redis_and_the_campaign_goes_on(tmp_path: Path) -> None:
    redis_server_path()  # skipped locally / failed under CI without a redis-server
    victim = tmp_path / "victim.txt"
    victim.write_text("delete me once approved\n")
    plan = write_plan(
        tmp_path / "plan.jsonl",
        [
            {"task_id": "first", "tool": "noop"},
            {"task_id": "rm", "tool": "file.delete", "args": {"path": str(victim)}, "depends_on": ["first"]},
        ],
        confidence=0.95,  # HIGH needs 0.8 to run live, then an approval
    )
    state = tmp_path / "state"
    env = clean_env(state)
    out = tmp_path / "out"
    run = subprocess.Popen(
        [sys.executable, "-m", "buddy", "run", str(plan), "--mode", "live", "--no-progress",
         "--approval-timeout", "120", "--out", str(out), "--workdir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    printed: list[str] = []

    def read() -> None:
        assert run.stderr is not None
        for line in run.stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        hint = None
        deadline = time.monotonic() + 90
        while hint is None:
            assert run.poll() is None, "".join(printed)
            assert time.monotonic() < deadline, "no approval hint within 90 s:\n" + "".join(printed)
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            printed.append(line)
            if line.strip().startswith("buddy approvals approve "):
                hint = line.strip()
        argv = shlex.split(hint)
        cid = argv[3]
        assert argv[:3] == ["buddy", "approvals", "approve"] and argv[4:6] == ["--wave", "2"]
        assert "--redis-url" in argv and argv[argv.index("--redis-url") + 1].startswith("unix://")
        assert any(
            line.strip().startswith(f"buddy approvals list {cid} --redis-url unix://") for line in printed
        )

        # no URL anywhere: the state file leads `buddy status` to the embedded Redis
        status = buddy("status", env={"XDG_STATE_HOME": str(state), "COLUMNS": "250"})
        assert status.returncode == 0, status.stderr
        assert "using the running embedded Redis" in status.stderr
        assert (
            f"{cid}" in status.stdout
            and "waiting for approval (1 task, wave 2, times out at" in status.stdout
        )

        pasted = subprocess.run(
            [sys.executable, "-m", "buddy", *argv[1:]], capture_output=True, text=True, env=env, timeout=60
        )  # `buddy` as printed, through this interpreter
        assert pasted.returncode == 0, pasted.stdout + pasted.stderr
        assert f"rm: approved by {operator()}" in pasted.stdout

        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    reader.join(10)
    while not lines.empty():
        printed.append(lines.get())
    assert run.returncode == 0, "".join(printed)
    assert not victim.exists()
    assert (out / "execution_summary.json").exists()
    assert list((state / "buddy" / "embedded").glob("*.json")) == []  # removed with the fleet
