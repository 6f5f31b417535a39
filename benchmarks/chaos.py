"""Chaos suite: Buddy's promises under faults and hostile input, counted over many runs.

Usage: ``python -m benchmarks.chaos [--runs 10] [--fuzz 500] [--trials a,b,c] [--json PATH]
[--seed N] [--run-timeout S] [--keep DIR] [--smoke]``

One private Redis (:class:`~buddy.redis_server.EmbeddedRedis`, unix socket, AOF on so that it
can be restarted) and one ``buddy worker`` per agent (``a1``, ``a2``; prefork, 2 processes;
:class:`~buddy.fleet.LocalFleet`) serve every trial; a killed worker is replaced at once. The
fleet runs with ``BUDDY_VISIBILITY_TIMEOUT_S=10``, ``BUDDY_HEARTBEAT_STALE_S=6``,
``BUDDY_LEASE_TTL_S=2`` and ``BUDDY_PYTHON_ALLOW=benchmarks.chaos_target``. Each run has a
fresh campaign id and its own files; campaigns run as ``buddy run`` subprocesses (``--mode
live --batch-size 1 --local-workers 0``) so that they can be killed, each bounded by
``--run-timeout`` seconds (a run past it is a *hang*: the coordinator is killed).
``--smoke`` (what ``tests/integration/test_chaos_smoke.py`` runs, with ``--runs 1 --fuzz
20``) uses 6-task campaigns, a 4 MB file and heartbeats every second, stale after 4 s
(``BUDDY_HEARTBEAT_INTERVAL_S=1``, ``BUDDY_HEARTBEAT_STALE_S=4``) so that stalls are found
sooner. ``--keep DIR`` copies plans, ledgers, campaign outputs, coordinator and worker logs
and the fuzzer's failing plans to DIR (they are in a temporary directory otherwise).

The *ledger campaign* of most trials is a wave of ``python.call`` tasks of
:func:`benchmarks.chaos_target.append_line`: each sleeps 0.2–0.6 s, appends its own line to a
ledger file (an irreversible, non-idempotent effect), sleeps 0.1 s. The ledger is the ground
truth: a line twice is a duplicated effect; a task whose outcome says ``succeeded`` but whose
line is missing, or a task with no outcome once the campaign ended, is *lost* (a loss nobody
reported). ``needs_review``, ``lost`` and ``failed`` outcomes are reported losses and fine.

Trials (``--trials``, default all):

``worker_kill``
    kill -9 of agent ``a1``'s worker mid-wave (after two ledger lines, plus 0–0.3 s): even
    runs its whole process group (main process and pool children), odd runs the main process
    only (the pool children live on as orphans); a replacement worker starts at once.
``worker_kill_pop``
    kill -9 in the pop window: half the tasks are pinned to ``a1``; the moment the coordinator
    records the wave's dispatch (``buddy:campaign:<cid>:dispatched``, written just before the
    chord is sent), ``a1``'s main process is stopped (SIGSTOP). Redis still answers the
    ``BRPOP`` it had sent: a message leaves the queue into the socket of a process that will
    never record it as unacked. 0.3 s later the worker is killed and replaced. That message
    exists nowhere any more: only the coordinator can notice it. A run *hits the window* when
    one of ``a1``'s tasks is neither queued, nor unacked, nor claimed, nor done at the kill
    (the notes count hits and misses).
``coordinator_kill``
    kill -9 of the ``buddy run`` coordinator 0–0.6 s after wave 2 of 3 was dispatched, then
    ``buddy resume <cid> --plan ...``; each line at most once, every task an outcome.
``redis_pause``
    SIGSTOP of the Redis server for 3 s mid-wave, then SIGCONT. Even runs early in the wave
    (after two lines: every pool slot busy), odd runs two lines before its end (slots falling
    idle: workers wait in ``BRPOP`` while they still hold unacked messages).
``redis_restart``
    the Redis server stopped (SIGTERM: it writes its AOF) mid-wave and started again on the
    same socket and data 1 s later; workers and coordinator reconnect. Early and late runs
    as for ``redis_pause``.
``paused_lease``
    a live ``file.write`` of an 8 MB file on ``a1``; ``a1``'s pool processes are stopped
    (SIGSTOP) at one step of the write, cycling over the runs: once the lease is taken
    (``buddy:lease:file:...`` exists), once the temporary file ``.<name>.*.buddy-tmp``
    exists, once the target was replaced (a new inode). Meanwhile a second campaign on
    ``a2`` writes the same file (its lease wait outlasts the stopped holder's 2 s lease) and
    should succeed; then SIGCONT. *Stale accepted*: the second campaign succeeded but the
    file does not hold its content (the stopped holder's write landed later, or was rolled
    back over it), or the first reported ``succeeded`` although it was stopped before its
    commit. The notes give the step each pause actually hit.
``forged_malformed``
    while a ledger campaign runs, onto both agent queues: ``not json``, ``''``, ``42``,
    ``["a", "list"]``, bytes that are not UTF-8, an envelope without properties, a real
    envelope with a body that is not base64, one whose body decodes to ``["a"]``, six seeded
    random items; and through Celery well-formed ``buddy.execute_batch`` messages: a
    ``file.append`` for a campaign nobody started, a ``file.append`` task that was never
    dispatched in the running campaign, and a dispatched ledger task replayed with a
    tampered line. Then: the same worker processes alive with fresh heartbeats, the queues
    drained, no forged effect (each one counts as *stale accepted*), and a small normal
    campaign succeeds afterwards. Growth of ``buddy:deadletter`` is a note.
``fuzz_plans``
    ``--fuzz`` hypothesis-generated plan files (valid and broken lines, mutated JSON, junk
    bytes, deep nesting, huge numbers, duplicate keys) through ``build_plan`` + conflict
    resolution in a child interpreter (a stuck plan cannot stop the suite), a few of them
    also through ``buddy validate``. Any exception but ``PlanError`` in-process, or any
    exit code but 0/2 or a ``Traceback`` from the CLI, is a traceback; a plan taking more
    than 5 s is a hang.

Columns: ``runs``; ``lost`` (unreported losses, above); ``duplicated`` (extra ledger lines);
``stale acc.`` (stale or forged effects accepted, or a newer write undone); ``hangs``;
``tracebacks`` (``Traceback`` printed by a ``buddy`` command, an unexpected exception in the
fuzzer, and in ``forged_malformed`` any traceback in the workers' logs: tracebacks a worker
logs while Redis is paused or restarting are counted in the notes only); ``worker deaths``
(worker processes the trial did not kill that exited); ``max detect s`` (the longest time from
a worker kill to the campaign acting on one of the tasks the killed worker held or had popped:
an outcome written after the kill, or a ``tasks_resent`` event naming it); ``unexpected``
(runs that ended otherwise than the trial requires: an exit code other than 0/1, the
follow-up or second campaign failing; see the notes); ``wall s``.

Acceptance (exit code 0 only when all hold): 0 duplicated, 0 stale accepted, 0 hangs, 0
worker deaths, 0 tracebacks, 0 lost, every detection within 30 s, 0 unexpected endings, and
coverage: at least 10 runs per fault trial and 500 fuzzed plans.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("a1", "a2")
TARGET = "benchmarks.chaos_target:append_line"
TARGET_MODULE = "benchmarks.chaos_target"
#: The fleet's settings: fast redelivery and stale detection, short leases.
FLEET_ENV = {
    "BUDDY_VISIBILITY_TIMEOUT_S": "10",
    "BUDDY_HEARTBEAT_STALE_S": "6",
    "BUDDY_LEASE_TTL_S": "2",
    "BUDDY_PYTHON_ALLOW": TARGET_MODULE,
    "BUDDY_TOOLS": "",
}
#: What ``--smoke`` changes: faster heartbeats, so that stalls are detected sooner.
SMOKE_ENV = {"BUDDY_HEARTBEAT_INTERVAL_S": "1", "BUDDY_HEARTBEAT_STALE_S": "4"}
TRIALS = (
    "worker_kill",
    "worker_kill_pop",
    "coordinator_kill",
    "redis_pause",
    "redis_restart",
    "paused_lease",
    "forged_malformed",
    "fuzz_plans",
)
#: Acceptance: runs per fault trial, fuzzed plans, seconds to detect a lost message.
MIN_RUNS, MIN_FUZZ, DETECT_LIMIT_S = 10, 500, 30.0
#: A fuzzed plan taking longer than this (seconds) in-process counts as a hang.
FUZZ_SLOW_S = 5.0
TRACEBACK = "Traceback (most recent call last)"
#: kombu's Redis transport: the hash of unacked messages, the priority-queue key separator.
UNACKED_KEY = "unacked"
PRIORITY_SEP = "\x06\x16"
DEADLETTER_KEY = "buddy:deadletter"
#: A queue no worker reads: real envelopes are sent there and popped back to be tampered with.
CAPTURE_QUEUE = "buddy.chaos.capture"


# -- records -------------------------------------------------------------------------------


@dataclass
class Params:
    """What to run. ``smoke`` shrinks the campaigns (the test suite's run)."""

    runs: int = 10
    fuzz: int = 500
    trials: list[str] = field(default_factory=lambda: list(TRIALS))
    json_path: Path | None = None
    seed: int = 1
    run_timeout_s: float = 120.0
    ledger_tasks: int = 12
    lease_bytes: int = 8 << 20
    redis_pause_s: float = 3.0
    redis_down_s: float = 1.0
    keep: Path | None = None
    smoke: bool = False
    settings: dict[str, str] = field(default_factory=lambda: dict(FLEET_ENV))

    @classmethod
    def smoke_params(cls, **kw: Any) -> Params:
        """One run of each trial at small sizes (what ``make test`` runs)."""
        base: dict[str, Any] = {
            "runs": 1,
            "fuzz": 20,
            "ledger_tasks": 6,
            "lease_bytes": 4 << 20,
            "run_timeout_s": 90.0,
            "smoke": True,
            # heartbeats every second, stale after 4 s: stall detection in about half the time
            "settings": FLEET_ENV | SMOKE_ENV,
        }
        return cls(**(base | kw))


@dataclass
class RunRecord:
    """What one run of a trial found (summed into a :class:`TrialResult`)."""

    lost: int = 0
    duplicated: int = 0
    stale_accepted: int = 0
    hang: bool = False
    tracebacks: int = 0
    worker_deaths: int = 0
    unexpected: bool = False
    detect_s: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


@dataclass
class TrialResult:
    """One trial over all its runs: the row of the chaos table."""

    trial: str
    runs: int = 0
    lost: int = 0
    duplicated: int = 0
    stale_accepted: int = 0
    hangs: int = 0
    tracebacks: int = 0
    worker_deaths: int = 0
    unexpected: int = 0
    max_detect_s: float | None = None
    wall_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def absorb(self, run: RunRecord, index: int) -> None:
        """Add one run's counts; its notes are kept with the run number."""
        self.runs += 1
        self.lost += run.lost
        self.duplicated += run.duplicated
        self.stale_accepted += run.stale_accepted
        self.hangs += int(run.hang)
        self.tracebacks += run.tracebacks
        self.worker_deaths += run.worker_deaths
        self.unexpected += int(run.unexpected)
        if run.detect_s:
            self.max_detect_s = round(max(self.max_detect_s or 0.0, *run.detect_s), 2)
        for k, v in run.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0) + v
        for k, v in run.tags.items():
            self.tags[k] = self.tags.get(k, 0) + v
        self.notes.extend(f"run {index}: {n}" for n in run.notes)

    def summary_notes(self) -> list[str]:
        """Statuses and tags first, then the runs' own notes (at most 12 of them)."""
        out = []
        if self.statuses:
            out.append("statuses " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())))
        if self.tags:
            out.append(", ".join(f"{k} {v}" for k, v in sorted(self.tags.items())))
        out.extend(self.notes[:12])
        if len(self.notes) > 12:
            out.append(f"... and {len(self.notes) - 12} more notes (see --json)")
        return out


# -- processes -----------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _pythonpath() -> str:
    """``PYTHONPATH`` for child processes: this checkout first (workers import the target)."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def child_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``buddy`` subprocess: no inherited ``BUDDY_*``, the fleet's
    settings (``settings``, default :data:`FLEET_ENV`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    env.update(FLEET_ENV if settings is None else settings)
    env["PYTHONPATH"] = _pythonpath()
    return env


def children_of(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (``/proc``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_until(
    cond: Callable[[], object],
    timeout_s: float,
    *,
    proc: subprocess.Popen[bytes] | None = None,
    poll_s: float = 0.05,
) -> bool:
    """Poll ``cond`` until it is true (True), ``timeout_s`` passes or ``proc`` exits (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(cond())
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def lines_of(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def count_tracebacks(text: str) -> int:
    return text.count(TRACEBACK)


class Rig:
    """The private Redis and one worker per agent, shared by the trials of one invocation.

    ``expected`` holds the pids the trials killed on purpose; any other worker main process
    that exits is a worker death (:meth:`deaths`), and is replaced.
    """

    def __init__(self, work: Path, concurrency: int = 2, settings: dict[str, str] | None = None) -> None:
        self.work = work
        #: ``BUDDY_*`` settings of the workers and of the coordinators started against them
        self.settings = dict(FLEET_ENV if settings is None else settings)
        self.concurrency = concurrency
        self.redis_dir = work / "redis"
        self.redis: Any = None
        self.fleets: dict[str, Any] = {}
        self.retired: list[Any] = []
        self.started_at: dict[str, float] = {}
        self.expected: set[int] = set()
        self.generation = 0
        self._store: Any = None
        self._sender: Any = None

    # life cycle
    def start(self) -> Rig:
        from buddy.infra.redis_server import EmbeddedRedis

        self.redis_dir.mkdir(parents=True, exist_ok=True)
        self.redis = EmbeddedRedis(appendonly=True, directory=self.redis_dir).start()
        try:
            for agent in AGENTS:
                self.fleets[agent] = self._start_worker(agent)
            self.wait_ready(AGENTS, 90)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop every worker this rig started (replaced ones too) and the Redis server."""
        for f in [*self.fleets.values(), *self.retired]:
            with contextlib.suppress(Exception):
                f.stop(grace_s=2)
        self.fleets.clear()
        self.retired.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                if self.redis.proc is not None:
                    _signal(self.redis.proc.pid, signal.SIGCONT)  # a pause trial may have stopped it
                self.redis.stop()
            self.redis = None

    def __enter__(self) -> Rig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return str(self.redis.url)

    @property
    def store(self) -> Any:
        """A :class:`~buddy.state.Store` on the rig's Redis, with the fleet's stale limit."""
        if self._store is None:
            from buddy.infra.transport import redis_client
            from buddy.state.store import Store

            self._store = Store(redis_client(self.url), stale_s=self.stale_s)
        return self._store

    @property
    def stale_s(self) -> float:
        """Seconds after which the fleet counts a heartbeat as stale."""
        return float(self.settings.get("BUDDY_HEARTBEAT_STALE_S", "10"))

    @property
    def r(self) -> Any:
        return self.store.r

    @property
    def sender(self) -> Any:
        """A Celery app on the rig's Redis, for forged messages."""
        if self._sender is None:
            from buddy.infra.transport import make_celery

            self._sender = make_celery(self.url)
        return self._sender

    # workers
    def _start_worker(self, agent: str) -> Any:
        from buddy.infra.fleet import LocalFleet
        from buddy.models import AgentSpec

        self.generation += 1
        env = {**self.settings, "PYTHONPATH": _pythonpath()}
        fleet = LocalFleet(
            self.url,
            [AgentSpec(id=agent, concurrency=self.concurrency)],
            env=env,
            log_dir=self.work / "logs" / f"{agent}-{self.generation}",
        )
        self.started_at[agent] = time.time()
        # LocalFleet adds to this process's environment: keep a caller's BUDDY_* out of it
        saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("BUDDY_")}
        try:
            return fleet.start()
        finally:
            os.environ.update(saved)

    def main_pid(self, agent: str) -> int:
        return int(self.fleets[agent].procs[0].pid)

    def pool_pids(self, agent: str) -> list[int]:
        return children_of(self.main_pid(agent))

    def worker_pids(self) -> dict[str, int]:
        return {a: self.main_pid(a) for a in self.fleets}

    def kill_worker(self, agent: str, *, main_only: bool = False) -> tuple[float, set[int]]:
        """kill -9 ``agent``'s worker (its process group, or only its main process); returns
        the time of the kill and the pids it had (main and pool)."""
        main = self.main_pid(agent)
        pids = {main, *children_of(main)}
        self.expected |= pids
        if main_only:
            _signal(main, signal.SIGKILL)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(main, signal.SIGKILL)
        at = time.time()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.fleets[agent].procs[0].wait(timeout=5)
        return at, pids

    def replace_worker(self, agent: str) -> None:
        """Start a new worker for ``agent``; the old one (killed) is stopped at :meth:`reap`."""
        self.retired.append(self.fleets[agent])
        self.fleets[agent] = self._start_worker(agent)

    def reap(self) -> None:
        """Stop what is left of replaced workers (orphaned pool processes of a killed main)."""
        for f in self.retired:
            with contextlib.suppress(Exception):
                f.stop(grace_s=0)
        self.retired.clear()

    def ready(self, agent: str) -> bool:
        """``agent``'s current worker runs and has sent a heartbeat since it started."""
        from buddy.state.keys import Keys

        if self.fleets[agent].procs[0].poll() is not None:
            return False
        rows = self.r.zrangebyscore(Keys.agent_workers(agent), self.started_at[agent], "+inf")
        return bool(rows)

    def wait_ready(self, agents: Sequence[str] = AGENTS, timeout_s: float = 60.0) -> bool:
        return wait_until(lambda: all(self.ready(a) for a in agents), timeout_s, poll_s=0.1)

    def deaths(self) -> int:
        """Worker main processes that exited without a trial killing them; each is replaced."""
        dead = 0
        for agent in list(self.fleets):
            proc = self.fleets[agent].procs[0]
            if proc.poll() is not None and proc.pid not in self.expected:
                dead += 1
                log(f"  worker of {agent} (pid {proc.pid}) exited with {proc.returncode}: replacing it")
                self.replace_worker(agent)
        return dead

    def heal(self) -> int:
        """Between runs: count unexpected deaths, reap replaced workers, wait for every agent."""
        dead = self.deaths()
        self.reap()
        if not self.wait_ready(AGENTS, 60):
            log("  warning: not every agent has a live worker after 60 s")
        return dead

    # logs
    def log_marks(self) -> dict[Path, int]:
        return {p: p.stat().st_size for p in (self.work / "logs").glob("*/*.log")}

    def log_since(self, marks: dict[Path, int]) -> str:
        out = []
        for p in sorted((self.work / "logs").glob("*/*.log")):
            with p.open("rb") as f:
                f.seek(marks.get(p, 0))
                out.append(f.read().decode("utf-8", "replace"))
        return "".join(out)

    # redis faults
    def redis_pid(self) -> int:
        return int(self.redis.proc.pid)

    def restart_redis(self, down_s: float) -> None:
        """Stop the server (SIGTERM: it writes its AOF), wait ``down_s``, start it again on the
        same socket and data."""
        from buddy.infra.redis_server import EmbeddedRedis

        self.redis.stop()
        time.sleep(down_s)
        self.redis = EmbeddedRedis(appendonly=True, directory=self.redis_dir).start()

    def run_dir(self, trial: str, index: int) -> Path:
        d = self.work / trial / f"run-{index}"
        d.mkdir(parents=True, exist_ok=True)
        return d


# -- campaigns -----------------------------------------------------------------------------


class Campaign:
    """One ``buddy run`` (or ``buddy resume``) subprocess in its own session, output to files."""

    def __init__(self, argv: list[str], where: Path, name: str, settings: dict[str, str]) -> None:
        self.stdout = where / f"{name}.stdout"
        self.stderr = where / f"{name}.stderr"
        with self.stdout.open("wb") as so, self.stderr.open("wb") as se:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv,
                env=child_env(settings),
                stdin=subprocess.DEVNULL,
                stdout=so,
                stderr=se,
                cwd=ROOT,
                start_new_session=True,
            )

    @classmethod
    def run(cls, rig: Rig, plan: Path, out: Path, agents: Sequence[str] = AGENTS, *extra: str) -> Campaign:
        argv = [sys.executable, "-m", "buddy", "run", str(plan), "--agents", ",".join(agents),
                "--mode", "live", "--redis-url", rig.url, "--out", str(out), "--local-workers", "0",
                "--no-progress", "--batch-size", "1", "--workdir", str(out.parent),
                # the trials fail tasks on purpose: the monitor locking the system would pause them
                "--no-auto-lock", *extra]  # fmt: skip
        return cls(argv, out.parent, out.name, rig.settings)

    @classmethod
    def resume(cls, rig: Rig, cid: str, plan: Path, where: Path) -> Campaign:
        argv = [sys.executable, "-m", "buddy", "resume", cid, "--plan", str(plan), "--redis-url", rig.url,
                "--no-progress"]  # fmt: skip
        return cls(argv, where, "resume", rig.settings)

    def campaign_id(self, out: Path, timeout_s: float = 30.0) -> str | None:
        """The campaign id from ``out/campaign.json`` (written before anything is dispatched)."""
        path = out / "campaign.json"

        def read() -> str | None:
            try:
                return str(json.loads(path.read_text())["campaign_id"])
            except (OSError, ValueError, KeyError):
                return None

        wait_until(lambda: read() is not None, timeout_s, proc=self.proc, poll_s=0.002)
        return read()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None after ``timeout_s`` (then the process is killed: a hang)."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.stdout, self.stderr) if p.exists())

    def tail(self, n: int = 400) -> str:
        return " ".join(self.output()[-n:].split())


def ledger_tasks(
    ledger: Path,
    n: int,
    rng: random.Random,
    *,
    waves: int = 1,
    pin: Callable[[int], str | None] | None = None,
    prefix: str = "append",
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """``n`` ledger tasks spread over ``waves`` waves; returns the plan lines and task → line."""
    rows, expect = [], {}
    per_wave = max(1, -(-n // waves))
    for i in range(n):
        tid, line = f"{prefix}-{i}", f"{ledger.parent.name} {prefix} {i}"
        kwargs = {
            "path": str(ledger),
            "line": line,
            "before_s": round(rng.uniform(0.2, 0.6), 3),
            "after_s": 0.1,
        }
        row: dict[str, Any] = {
            "task_id": tid,
            "tool": "python.call",
            "args": {"target": TARGET, "kwargs": kwargs},
            "confidence": 0.9,
            "predicted_success": 0.9,
        }
        if waves > 1:
            row["wave"] = 1 + i // per_wave
        agent = pin(i) if pin else None
        if agent:
            row["agent"] = agent
        rows.append(row)
        expect[tid] = line
    return rows, expect


def write_plan(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def events(r: Any, cid: str) -> list[tuple[float, str, Any]]:
    """The campaign's event stream as ``(epoch seconds, type, data)``, oldest first."""
    from buddy.state.keys import Keys

    out = []
    for eid, fields in r.xrange(Keys.events(cid)):
        eid = eid.decode() if isinstance(eid, bytes) else eid
        f = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
        raw = f.get("data") or b"null"
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        typ = f.get("type") or b""
        out.append((int(eid.split("-")[0]) / 1000, typ.decode() if isinstance(typ, bytes) else typ, data))
    return out


# -- broker inspection ---------------------------------------------------------------------


def message_task_ids(envelope: Any) -> list[str]:
    """Task ids carried by one kombu envelope of ``buddy.execute_batch`` (none if unreadable)."""
    try:
        env = envelope if isinstance(envelope, dict) else json.loads(envelope)
        body = env["body"]
        if env.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _, kwargs, _ = json.loads(body)
        return [str(i["task_id"]) for i in kwargs.get("items", [])]
    except Exception:
        return []


def queued_task_ids(r: Any, agents: Sequence[str] = AGENTS) -> set[str]:
    """Task ids in messages still waiting on the agents' queues (every priority list)."""
    from buddy.models import agent_queue

    out: set[str] = set()
    for a in agents:
        q = agent_queue(a)
        for key in (q, *(f"{q}{PRIORITY_SEP}{p}" for p in (3, 6, 9))):
            for raw in r.lrange(key, 0, -1):
                out.update(message_task_ids(raw))
    return out


def unacked_task_ids(r: Any) -> dict[str, str]:
    """Task id → queue of the messages kombu holds as delivered but not acked."""
    out: dict[str, str] = {}
    for raw in r.hvals(UNACKED_KEY):
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        for t in message_task_ids(message):
            out[t] = str(routing_key)
    return out


def stalled_by_kill(rig: Rig, cid: str, task_ids: Sequence[str], killed: set[int], agent: str) -> set[str]:
    """Right after a kill: the tasks the killed worker held or had popped. A task is held by
    it unless it has an outcome, waits on a queue, is claimed by another process, or is
    unacked on another agent's queue."""
    from buddy.models import agent_queue
    from buddy.state.claims import parse
    from buddy.state.keys import Keys

    r = rig.r
    have = set(rig.store.outcomes(cid))
    queued = queued_task_ids(r)
    unacked = unacked_task_ids(r)
    claims = dict(zip(task_ids, r.mget([Keys.claim(cid, t) for t in task_ids]), strict=True))
    out = set()
    for t in task_ids:
        if t in have or t in queued:
            continue
        if t in unacked and unacked[t] != agent_queue(agent):
            continue
        claim = parse(claims[t])
        if claim is not None:
            pid = claim.worker.rsplit(":", 1)[-1]
            if not (pid.isdigit() and int(pid) in killed):
                continue
        out.add(t)
    return out


# -- judging -------------------------------------------------------------------------------


def judge_ledger(
    rig: Rig,
    cid: str | None,
    expect: dict[str, str],
    ledger: Path,
    rec: RunRecord,
    *,
    kill_at: float | None = None,
    stalled: set[str] | None = None,
) -> None:
    """Count duplicated lines, unreported losses and detection times into ``rec``."""
    from buddy.models import TaskStatus

    counts = Counter(lines_of(ledger))
    rec.duplicated += sum(n - 1 for n in counts.values() if n > 1)
    for line, n in counts.items():
        if n > 1:
            rec.notes.append(f"line {line!r} appended {n} times")
    outcomes = rig.store.outcomes(cid) if cid else {}
    for tid, line in expect.items():
        o = outcomes.get(tid)
        if o is None:
            rec.lost += 1
            rec.notes.append(f"{tid}: no outcome (line {'present' if counts[line] else 'missing'})")
            continue
        rec.statuses[o.status.value] += 1
        if o.status is TaskStatus.SUCCEEDED and not counts[line]:
            rec.lost += 1
            rec.notes.append(f"{tid}: succeeded but its line is missing")
        elif o.status in (TaskStatus.FAILED, TaskStatus.SKIPPED, TaskStatus.DENIED) and counts[line]:
            rec.notes.append(f"{tid}: {o.status.value} ({o.error_type}) but its line was appended")
    if kill_at is None or not stalled or not cid:
        return
    resent: dict[str, float] = {}
    for at, typ, data in events(rig.r, cid):
        if typ == "tasks_resent" and at >= kill_at and isinstance(data, dict):
            for t in data.get("tasks") or []:
                resent.setdefault(str(t), at)
    for t in sorted(stalled):
        seen = [resent[t]] if t in resent else []
        o = outcomes.get(t)
        if o is not None and o.end_time is not None:
            seen.append(o.end_time.timestamp())
        if seen:
            rec.detect_s.append(round(max(0.0, min(seen) - kill_at), 2))
        rec.tags["stalled tasks"] += 1


def finish(
    camp: Campaign, rec: RunRecord, timeout_s: float, what: str = "campaign", ok: Sequence[int] = (0, 1)
) -> int | None:
    """Wait for ``camp``; a timeout is a hang, an exit code outside ``ok`` unexpected; count
    tracebacks in its output."""
    rc = camp.wait(timeout_s)
    if rc is None:
        rec.hang = True
        rec.notes.append(f"{what} still running after {timeout_s:.0f} s: killed")
    elif rc not in ok:
        rec.unexpected = True
        rec.notes.append(f"{what} exited {rc}: {camp.tail()}")
    note_tracebacks(camp, rec, what)
    return rc


def note_tracebacks(camp: Campaign, rec: RunRecord, what: str) -> None:
    """Count the tracebacks ``camp`` printed; the first one's end goes to the notes."""
    text = camp.output()
    tb = count_tracebacks(text)
    if tb:
        rec.tracebacks += tb
        rec.notes.append(
            f"{what} printed a traceback: {' '.join(text[text.find(TRACEBACK) :][-600:].split())}"
        )


def worker_log_notes(rig: Rig, marks: dict[Path, int], rec: RunRecord, *, count: bool) -> None:
    """Tracebacks, fatal errors and lost pool processes the workers logged during the run;
    with ``count`` (hostile input) tracebacks count as tracebacks and a lost pool process as
    a worker death."""
    text = rig.log_since(marks)
    tb = count_tracebacks(text)
    fatal = text.count("Unrecoverable error")
    pool_lost = text.count("WorkerLostError")
    if pool_lost:
        rec.tags["pool process lost"] += pool_lost
        if count:
            rec.worker_deaths += pool_lost
            rec.notes.append(f"a pool process died {pool_lost} time(s) (WorkerLostError in the worker log)")
    if tb:
        if count:
            rec.tracebacks += tb
            at = text.find(TRACEBACK)
            rec.notes.append(f"worker traceback: {' '.join(text[at : at + 700].split())}")
        rec.tags["worker-log tracebacks"] += tb
    if fatal:
        rec.notes.append(f"workers logged 'Unrecoverable error' {fatal} times")


# -- the trials ------------------------------------------------------------------------------


def _rng(p: Params, trial: str, index: int) -> random.Random:
    return random.Random(f"{p.seed}:{trial}:{index}")


def run_worker_kill(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``worker_kill`` run (module docstring)."""
    rng, rec = _rng(p, "worker_kill", index), RunRecord()
    main_only = index % 2 == 1
    run = rig.run_dir("worker_kill", index)
    ledger = run / "ledger.txt"
    rows, expect = ledger_tasks(ledger, p.ledger_tasks, rng)
    plan, out = write_plan(run / "plan.jsonl", rows), run / "out"
    marks = rig.log_marks()
    camp = Campaign.run(rig, plan, out)
    cid: str | None = None
    kill_at, stalled = None, set()
    try:
        cid = camp.campaign_id(out)
        if cid and wait_until(lambda: len(lines_of(ledger)) >= 2, 60, proc=camp.proc, poll_s=0.01):
            time.sleep(rng.uniform(0, 0.3))
            kill_at, killed = rig.kill_worker("a1", main_only=main_only)
            stalled = stalled_by_kill(rig, cid, list(expect), killed, "a1")
            rec.tags["kill: main only" if main_only else "kill: process group"] += 1
            rig.replace_worker("a1")
        else:
            rec.notes.append(f"no fault injected: the campaign did not get going ({camp.tail()})")
        finish(camp, rec, p.run_timeout_s)
    finally:
        camp.kill()
    judge_ledger(rig, cid, expect, ledger, rec, kill_at=kill_at, stalled=stalled)
    worker_log_notes(rig, marks, rec, count=False)
    return rec


def run_worker_kill_pop(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``worker_kill_pop`` run (module docstring)."""
    from buddy.state.keys import Keys

    rng, rec = _rng(p, "worker_kill_pop", index), RunRecord()
    run = rig.run_dir("worker_kill_pop", index)
    ledger = run / "ledger.txt"
    rows, expect = ledger_tasks(ledger, p.ledger_tasks, rng, pin=lambda i: AGENTS[i % 2])
    plan, out = write_plan(run / "plan.jsonl", rows), run / "out"
    marks = rig.log_marks()
    camp = Campaign.run(rig, plan, out)
    cid: str | None = None
    kill_at, stalled, stopped = None, set(), None
    try:
        cid = camp.campaign_id(out)
        key = Keys.dispatched(cid) if cid else ""
        if cid and wait_until(lambda: rig.r.exists(key), 60, proc=camp.proc, poll_s=0.0005):
            stopped = rig.main_pid("a1")
            _signal(stopped, signal.SIGSTOP)  # its pending BRPOP still takes a message
            time.sleep(0.3)
            kill_at, killed = rig.kill_worker("a1")
            stalled = stalled_by_kill(rig, cid, list(expect), killed, "a1")
            a1 = {t for i, t in enumerate(expect) if AGENTS[i % 2] == "a1"}
            popped = a1 - set(rig.store.outcomes(cid)) - queued_task_ids(rig.r) - set(unacked_task_ids(rig.r))
            popped = {t for t in popped if rig.r.get(Keys.claim(cid, t)) is None}
            rec.tags["pop window hit" if popped else "pop window missed"] += 1
            rig.replace_worker("a1")
        else:
            rec.notes.append(f"no fault injected: no dispatch seen ({camp.tail()})")
        finish(camp, rec, p.run_timeout_s)
    finally:
        if stopped is not None:
            _signal(stopped, signal.SIGCONT)
        camp.kill()
    judge_ledger(rig, cid, expect, ledger, rec, kill_at=kill_at, stalled=stalled)
    worker_log_notes(rig, marks, rec, count=False)
    return rec


def run_coordinator_kill(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``coordinator_kill`` run (module docstring)."""
    rng, rec = _rng(p, "coordinator_kill", index), RunRecord()
    run = rig.run_dir("coordinator_kill", index)
    ledger = run / "ledger.txt"
    rows, expect = ledger_tasks(ledger, p.ledger_tasks, rng, waves=3)
    plan, out = write_plan(run / "plan.jsonl", rows), run / "out"
    marks = rig.log_marks()
    camp = Campaign.run(rig, plan, out)
    cid: str | None = None
    killed = False
    try:
        cid = camp.campaign_id(out)

        def wave2() -> bool:
            return bool(cid) and any(
                t == "wave_dispatched" and isinstance(d, dict) and d.get("wave") == 2
                for _, t, d in events(rig.r, str(cid))
            )

        if cid and wait_until(wave2, 60, proc=camp.proc, poll_s=0.02):
            time.sleep(rng.uniform(0, 0.6))
            camp.kill()
            killed = True
            if camp.proc.returncode not in (-signal.SIGKILL, None):
                rec.tags["coordinator ended before the kill"] += 1
            else:
                rec.tags["coordinator killed in wave 2"] += 1
            res = Campaign.resume(rig, cid, plan, run)
            try:
                finish(res, rec, p.run_timeout_s, "resume")
            finally:
                res.kill()
        else:
            rec.notes.append(f"no fault injected: wave 2 was not dispatched ({camp.tail()})")
            finish(camp, rec, p.run_timeout_s)
    finally:
        camp.kill()
    if killed:  # what it printed before the kill (finish() counted the other case)
        note_tracebacks(camp, rec, "killed coordinator")
    judge_ledger(rig, cid, expect, ledger, rec)
    worker_log_notes(rig, marks, rec, count=False)
    return rec


def _redis_fault_run(rig: Rig, p: Params, index: int, trial: str, fault: Callable[[], None]) -> RunRecord:
    """A ledger campaign with ``fault`` injected mid-wave: even runs after its second line
    (every pool slot busy), odd runs two lines before its end (slots falling idle, so the
    workers wait in ``BRPOP`` while still holding unacked messages)."""
    rng, rec = _rng(p, trial, index), RunRecord()
    late = index % 2 == 1
    after = max(2, p.ledger_tasks - 2) if late else 2
    run = rig.run_dir(trial, index)
    ledger = run / "ledger.txt"
    rows, expect = ledger_tasks(ledger, p.ledger_tasks, rng)
    plan, out = write_plan(run / "plan.jsonl", rows), run / "out"
    marks = rig.log_marks()
    camp = Campaign.run(rig, plan, out)
    cid: str | None = None
    try:
        cid = camp.campaign_id(out)
        if cid and wait_until(lambda: len(lines_of(ledger)) >= after, 60, proc=camp.proc, poll_s=0.01):
            time.sleep(rng.uniform(0, 0.3))
            fault()
            rec.tags["fault late in the wave" if late else "fault early in the wave"] += 1
        else:
            rec.notes.append(f"no fault injected: the campaign did not get going ({camp.tail()})")
        finish(camp, rec, p.run_timeout_s)
    finally:
        camp.kill()
    judge_ledger(rig, cid, expect, ledger, rec)
    worker_log_notes(rig, marks, rec, count=False)
    return rec


def run_redis_pause(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``redis_pause`` run: SIGSTOP Redis for ``p.redis_pause_s`` mid-wave."""

    def pause() -> None:
        pid = rig.redis_pid()
        _signal(pid, signal.SIGSTOP)
        try:
            time.sleep(p.redis_pause_s)
        finally:
            _signal(pid, signal.SIGCONT)

    return _redis_fault_run(rig, p, index, "redis_pause", pause)


def run_redis_restart(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``redis_restart`` run: Redis stopped and started again mid-wave."""
    return _redis_fault_run(rig, p, index, "redis_restart", lambda: rig.restart_redis(p.redis_down_s))


LEASE_STEPS = ("tmp", "leased", "committed")


def run_paused_lease(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``paused_lease`` run (module docstring)."""
    from buddy.models import TaskStatus
    from buddy.state.leases import lease_key
    from buddy.tools import file_claim

    rec = RunRecord()
    step = LEASE_STEPS[index % len(LEASE_STEPS)]
    run = rig.run_dir("paused_lease", index)
    target = run / "shared.txt"
    target.write_text("original\n")
    ino0 = target.stat().st_ino
    first = f"first {index}\n" + "x" * p.lease_bytes + "\n"
    second = f"second {index}\n"

    def plan(name: str, content: str, agent: str) -> Path:
        args = {"path": str(target), "content": content}
        row = {
            "task_id": f"write-{name}",
            "tool": "file.write",
            "args": args,
            "agent": agent,
            "confidence": 0.9,
        }
        return write_plan(run / f"{name}.jsonl", [row])

    plan1, plan2 = plan("first", first, "a1"), plan("second", second, "a2")
    key = lease_key(file_claim(target).name)
    tmp_prefix = f".{target.name}."

    def tmp_exists() -> bool:
        return any(n.startswith(tmp_prefix) and n.endswith(".buddy-tmp") for n in os.listdir(run))

    def replaced() -> bool:
        try:
            return target.stat().st_ino != ino0
        except OSError:
            return False

    def reached(proc: subprocess.Popen[bytes]) -> bool:
        """Wait for ``step``: the lease key (polled as fast as Redis answers), the temporary
        file (every 0.3 ms), or the new inode (the temporary file first, then a busy poll:
        the commit is a few ms before the outcome)."""
        if step == "leased":
            return wait_until(lambda: rig.r.exists(key), 60, proc=proc, poll_s=0)
        if not wait_until(tmp_exists, 60, proc=proc, poll_s=0.0003):
            return False
        return step == "tmp" or wait_until(replaced, 10, proc=proc, poll_s=0)

    marks = rig.log_marks()
    out1, out2 = run / "out1", run / "out2"
    c1 = Campaign.run(rig, plan1, out1, ["a1"])
    cid1 = cid2 = None
    stopped: list[int] = []
    observed = "none"
    try:
        cid1 = c1.campaign_id(out1)
        holders = rig.pool_pids("a1")  # before the wait: a /proc scan takes milliseconds
        if cid1 and reached(c1.proc):
            for pid in holders:
                _signal(pid, signal.SIGSTOP)
            stopped = holders
            t_stop = time.monotonic()
            have = rig.store.outcomes(cid1)
            observed = (
                "after the outcome"
                if have
                else "committed"
                if replaced()
                else "tmp"
                if tmp_exists()
                else "leased"
                if rig.r.exists(key)
                else "before the lease"
            )
            rec.tags[f"paused at {observed}"] += 1
            c2 = Campaign.run(rig, plan2, out2, ["a2"])
            try:
                cid2 = c2.campaign_id(out2)
                # the holder stays stopped until the second write has its outcome
                wait_until(
                    lambda: bool(cid2) and bool(rig.store.outcomes(cid2)), p.run_timeout_s, proc=c2.proc
                )
                for pid in stopped:
                    _signal(pid, signal.SIGCONT)
                paused_s = time.monotonic() - t_stop
                if paused_s > rig.stale_s:
                    rec.notes.append(f"holder paused {paused_s:.1f} s (more than the heartbeat stale limit)")
                rc2 = finish(c2, rec, p.run_timeout_s, "second campaign")
                if rc2 != 0:
                    rec.unexpected = True
                    rec.notes.append(f"second campaign (writer while the holder is paused) exited {rc2}")
            finally:
                c2.kill()
        else:
            rec.notes.append(f"no pause: step {step!r} not seen ({c1.tail()})")
    finally:
        for pid in stopped:
            _signal(pid, signal.SIGCONT)
    try:
        finish(c1, rec, p.run_timeout_s, "first campaign")
    finally:
        c1.kill()
    s1 = rig.store.outcomes(cid1).get("write-first") if cid1 else None
    s2 = rig.store.outcomes(cid2).get("write-second") if cid2 else None
    st1 = s1.status.value if s1 else "no outcome"
    st2 = s2.status.value if s2 else "no outcome"
    rec.statuses[f"first {st1}"] += 1
    if cid2:
        rec.statuses[f"second {st2}"] += 1
    final = target.read_text(errors="replace") if target.exists() else "(missing)"
    shown = "first's" if final == first else "second's" if final == second else repr(final[:20])
    if s2 is not None and s2.status is TaskStatus.SUCCEEDED and final != second:
        rec.stale_accepted += 1
        rec.notes.append(f"paused at {observed}: second succeeded but the file holds {shown} content")
    if s1 is not None and s1.status is TaskStatus.SUCCEEDED and observed in ("leased", "tmp"):
        rec.stale_accepted += 1
        rec.notes.append(f"paused at {observed} (before its commit): the stale holder reported succeeded")
    if s1 is not None and s1.status is not TaskStatus.SUCCEEDED and observed != "none":
        rec.tags[f"stale holder: {st1} ({s1.error_type})"] += 1
    worker_log_notes(rig, marks, rec, count=False)
    return rec


def _junk(r: Any, sender: Any, rng: random.Random, forged_dir: Path) -> list[tuple[str, str | bytes]]:
    """The malformed queue items: (what, item)."""
    from buddy.infra.transport import EXECUTE_TASK

    def envelope(**send: Any) -> dict[str, Any]:
        """A real kombu envelope, sent to a queue nobody reads and popped back."""
        sender.send_task(EXECUTE_TASK, queue=CAPTURE_QUEUE, kwargs=send.pop("kwargs", {}), **send)
        raw = r.rpop(CAPTURE_QUEUE)
        env: dict[str, Any] = json.loads(raw)
        return env

    batch = {
        "campaign_id": "never-started",
        "wave": 1,
        "agent_id": "a1",
        "items": [{"task_id": "x", "tool": "file.append", "mode": "live",
                   "args": {"path": str(forged_dir / "b64.txt"), "line": "b64"}}],
    }  # fmt: skip
    bad_b64 = envelope(kwargs=batch)
    bad_b64["body"] = "abc"
    triple = envelope()
    triple["body"] = base64.b64encode(b'["a"]').decode()
    items: list[tuple[str, str | bytes]] = [
        ("not json", "not json"),
        ("empty", ""),
        ("42", "42"),
        ("a list", json.dumps(["a", "list"])),
        ("not utf-8", b"\xff\xfe not utf-8"),
        ("no properties", json.dumps({"body": "e30=", "headers": {}})),
        ("body not base64", json.dumps(bad_b64)),
        ('body ["a"]', json.dumps(triple)),
    ]
    for k in range(6):
        kind = rng.randrange(3)
        if kind == 0:
            items.append(
                (f"random bytes {k}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
            )
        elif kind == 1:
            junk = {"body": base64.b64encode(os.urandom(rng.randrange(1, 40))).decode(), "properties": {}}
            items.append((f"random envelope {k}", json.dumps(junk)))
        else:
            items.append((f"random json {k}", json.dumps([rng.random(), {"k": rng.randrange(10)}, None])))
    return items


def run_forged_malformed(rig: Rig, p: Params, index: int) -> RunRecord:
    """One ``forged_malformed`` run (module docstring)."""
    from buddy.infra.transport import EXECUTE_TASK
    from buddy.models import agent_queue

    rng, rec = _rng(p, "forged_malformed", index), RunRecord()
    run = rig.run_dir("forged_malformed", index)
    forged_dir = run / "forged"
    forged_dir.mkdir(exist_ok=True)
    ledger = run / "ledger.txt"
    rows, expect = ledger_tasks(ledger, p.ledger_tasks, rng)
    plan, out = write_plan(run / "plan.jsonl", rows), run / "out"
    pids = rig.worker_pids()
    dl_before = int(rig.r.llen(DEADLETTER_KEY))
    marks = rig.log_marks()
    camp = Campaign.run(rig, plan, out)
    cid: str | None = None
    try:
        cid = camp.campaign_id(out)
        if cid and wait_until(lambda: len(lines_of(ledger)) >= 1, 60, proc=camp.proc, poll_s=0.01):
            junk = _junk(rig.r, rig.sender, rng, forged_dir)
            for agent in AGENTS:
                for _, raw in junk:
                    rig.r.lpush(agent_queue(agent), raw)

            def item(tid: str, path: Path, line: str) -> dict[str, Any]:
                return {"task_id": tid, "tool": "file.append", "mode": "live", "workdir": str(run),
                        "args": {"path": str(path), "line": line}}  # fmt: skip

            forged = [
                {"campaign_id": f"nobody-{index}", "wave": 1, "agent_id": "a1",
                 "items": [item("forged", forged_dir / "unstarted.txt", "forged")]},
                {"campaign_id": cid, "wave": 1, "agent_id": "a1",
                 "items": [item("forged-0", forged_dir / "running.txt", "forged")]},
                {"campaign_id": cid, "wave": 1, "agent_id": "a1",
                 "items": [{**_spec_of(rows[-1], run),
                            "args": {"target": TARGET, "kwargs": {"path": str(ledger), "line": "FORGED"}}}]},
            ]  # fmt: skip
            for kwargs in forged:
                for agent in AGENTS:
                    rig.sender.send_task(EXECUTE_TASK, kwargs=kwargs, queue=agent_queue(agent))
            rec.tags["hostile items sent"] += (len(junk) + len(forged)) * len(AGENTS)
        else:
            rec.notes.append(f"no hostile input sent: the campaign did not get going ({camp.tail()})")
        finish(camp, rec, p.run_timeout_s)
    finally:
        camp.kill()
    drained = wait_until(lambda: all(rig.r.llen(agent_queue(a)) == 0 for a in AGENTS), 20, poll_s=0.1)
    if not drained:
        rec.unexpected = True
        rec.notes.append("agent queues not drained 20 s after the campaign")
    judge_ledger(rig, cid, expect, ledger, rec)
    if "FORGED" in lines_of(ledger):
        rec.stale_accepted += 1
        rec.notes.append("the tampered replay appended its line")
    for f in sorted(forged_dir.iterdir()):
        rec.stale_accepted += 1
        rec.notes.append(f"forged effect written: {f.name}")
    # a dead worker process is counted by run_trial (Rig.deaths); a live one without a fresh
    # heartbeat is stuck: counted here
    for agent, pid in pids.items():
        alive = rig.main_pid(agent) == pid and rig.fleets[agent].procs[0].poll() is None
        if not alive:
            rec.notes.append(f"the worker of {agent} (pid {pid}) died")
        elif not rig.store.live_workers(agent):
            rec.worker_deaths += 1
            rec.notes.append(f"the worker of {agent} (pid {pid}) runs but sends no heartbeat")
    added = int(rig.r.llen(DEADLETTER_KEY)) - dl_before
    rec.tags["dead-lettered"] += max(0, added)
    if added <= 0:
        rec.notes.append("buddy:deadletter got no entries")
    elif cid:  # the forged batches: refused by the executor; dead-lettered too?
        forged_cids = {cid, f"nobody-{index}"}
        newest = [json.loads(x) for x in rig.r.lrange(DEADLETTER_KEY, 0, added - 1)]
        got = sum(1 for d in newest if isinstance(d, dict) and d.get("campaign_id") in forged_cids)
        rec.tags["forged batches dead-lettered"] += got
        if not got:
            rec.notes.append("the forged execute_batch messages were refused but not dead-lettered")
    worker_log_notes(rig, marks, rec, count=True)
    # a normal small campaign afterwards, on the same workers
    target = run / "after.txt"
    after: list[dict[str, Any]] = [
        {
            "task_id": "w",
            "tool": "file.write",
            "args": {"path": str(target), "content": "after\n"},
            "confidence": 0.9,
        },
        {"task_id": "n", "tool": "noop", "depends_on": ["w"]},
    ]
    follow = Campaign.run(rig, write_plan(run / "after.jsonl", after), run / "out-after")
    try:
        rc = finish(follow, rec, p.run_timeout_s, "follow-up campaign")
    finally:
        follow.kill()
    if rc != 0 or lines_of(target) != ["after"]:
        rec.unexpected = True
        rec.notes.append(f"the follow-up campaign did not succeed (exit {rc})")
    return rec


def _spec_of(row: dict[str, Any], run: Path) -> dict[str, Any]:
    """A worker item as the coordinator sends it, for the plan line ``row`` (wave 1, live)."""
    from buddy.models import Mode, TaskSpec

    spec = TaskSpec(
        task_id=row["task_id"], tool=row["tool"], args=row["args"], mode=Mode.LIVE, workdir=str(run)
    )
    return spec.model_dump(mode="json")


# -- fuzzed plans ----------------------------------------------------------------------------


def plan_strategy() -> Any:
    """A hypothesis strategy of ``(plan bytes, schedule bytes or None)``.

    Plans come half from :func:`_own_plan_strategy` (byte-level junk, mutated JSON, valid and
    wild tasks) and half from ``tests/unit/test_plan_fuzz.py``'s ``plans()`` (hand-written
    JSON text: NaN, repeated keys, numbers at every bound), with its ``schedule_lines()``
    now and then; only the former when that module cannot be imported.
    """
    from hypothesis import strategies as st

    own = _own_plan_strategy()
    try:
        from tests.unit import test_plan_fuzz as shared

        def text(lines: list[str]) -> bytes:
            return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")

        theirs = shared.plans().map(text)
        schedules = st.none() | st.lists(shared.schedule_lines(), max_size=3).map(text)
        return st.tuples(st.one_of(own, theirs), schedules)
    except Exception as e:  # ImportError, or a strategy renamed in that test
        log(f"fuzz: tests/unit/test_plan_fuzz.py not usable ({type(e).__name__}: {e}); own strategy only")
        return st.tuples(own, st.none())


def _own_plan_strategy() -> Any:
    from hypothesis import strategies as st

    pool = ["t0", "t1", "t2", "t3", "t4", "t5"]
    ids = st.sampled_from(pool)
    odd_ids = st.sampled_from(["", " ", "bad id", "é", "t" * 128, "t" * 129, "a/b", "x.y:z-1"]) | st.text(
        max_size=10
    )
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    )
    json_values = st.recursive(
        scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=8,
    )
    paths = st.sampled_from(
        [
            "x.txt",
            "d/y.txt",
            "/tmp/../etc/passwd",
            "~/a",
            "",
            "a\x00b",
            "/dev/zero",
            "/",
            ".",
            "d/" * 40,
            "é/ü",
        ]
    ) | st.text(max_size=20)
    good_args = {
        "noop": st.just({}),
        "sleep": st.fixed_dictionaries({"seconds": st.sampled_from([0, 0.01, -1, 4000]) | scalars}),
        "flaky": st.fixed_dictionaries({}, optional={"fail_first": scalars, "seconds": scalars}),
        "file.sha256": st.fixed_dictionaries({"path": paths}),
        "file.write": st.fixed_dictionaries({"path": paths, "content": st.text(max_size=20)}),
        "file.append": st.fixed_dictionaries({"path": paths, "line": st.text(max_size=20)}),
        "file.delete": st.fixed_dictionaries({"path": paths}),
        "shell": st.fixed_dictionaries({"argv": st.lists(st.text(max_size=8), max_size=3) | scalars}),
        "http.request": st.fixed_dictionaries(
            {
                "url": st.sampled_from(["http://127.0.0.1:1/", "ftp://x", "", "http://[::1"])
                | st.text(max_size=12)
            },
            optional={"method": st.sampled_from(["GET", "POST", "BREW"]), "timeout_s": scalars},
        ),
        "python.call": st.fixed_dictionaries(
            {
                "target": st.sampled_from(["json:dumps", "os:system", "a.b:c", "bad", ""])
                | st.text(max_size=12)
            },
            optional={"kwargs": json_values},
        ),
    }
    resource = st.one_of(
        st.sampled_from(["r1", "r2", "file:/x"]),
        st.fixed_dictionaries(
            {"name": st.sampled_from(["r1", "r2"]) | st.text(max_size=6)},
            optional={"mode": st.sampled_from(["read", "write", "both"])},
        ),
        json_values,
    )

    @st.composite
    def good_task(draw: Any) -> dict[str, Any]:
        tool = draw(st.sampled_from(sorted(good_args)))
        row: dict[str, Any] = {"task_id": draw(ids), "tool": tool, "args": draw(good_args[tool])}
        optional = {
            "depends_on": st.lists(ids, max_size=3),
            "wave": st.integers(min_value=1, max_value=6) | st.sampled_from([0, -1, 100_001]),
            "agent": st.sampled_from(["a1", "a2", "zz"]),
            "resources": st.lists(resource, max_size=3),
            "priority": st.integers(min_value=-1, max_value=101),
            "predicted_success": st.floats(min_value=-0.5, max_value=1.5),
            "confidence": st.floats(min_value=0, max_value=1),
            "trigger_rule": st.sampled_from(["all_success", "all_done", "any"]),
        }
        for k, s in optional.items():
            if draw(st.integers(0, 3)) == 0:
                row[k] = draw(s)
        return row

    wild_task = st.fixed_dictionaries(
        {},
        optional={
            "task_id": ids | odd_ids | scalars,
            "tool": st.sampled_from([*good_args, "nope", "", "NOOP"]) | scalars,
            "args": json_values,
            "agent": scalars,
            "wave": scalars,
            "depends_on": st.lists(ids | scalars, max_size=3) | scalars,
            "resources": st.lists(resource, max_size=2) | scalars,
            "priority": scalars,
            "predicted_success": scalars,
            "confidence": scalars,
            "trigger_rule": scalars,
            "surprise": scalars,
        },
    )

    def dumps(obj: Any) -> bytes:
        return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")

    def mutate(args: tuple[dict[str, Any], int, bytes, int]) -> bytes:
        row, at, insert, how = args
        raw = dumps(row)
        at %= len(raw) + 1
        if how == 0:
            return raw[:at] + insert + raw[at:]
        if how == 1:
            return raw[:at] + raw[at + len(insert) + 1 :]
        return raw[:at]

    junk = st.sampled_from(
        [
            b"",
            b"   ",
            b"# a comment",
            b"\xef\xbb\xbf{}",
            b"[",
            b"{",
            b"null",
            b"[]",
            b'{"task_id": "d", "task_id": "e", "tool": "noop"}',
            b'{"task_id": "n", "tool": "noop", "priority": NaN}',
            b'{"task_id": "h", "tool": "noop", "priority": 1e999}',
            b"[" * 300 + b"]" * 300,
            b'{"a":' * 60 + b"1" + b"}" * 60,
            b'{"task_id": "deep", "tool": "noop", "args": ' + b"[" * 40 + b"]" * 40 + b"}",
            b"\x00\x01\x02",
            b"\xff\xfe\xfd",
            b'"\\ud800"',
            b'{"task_id": "z", "tool": "noop", "args": {"x": "\\u0000"}}',
            b'{"task_id": "long", "tool": "noop", "args": {"s": "' + b"a" * 100_000 + b'"}}',
            b'{"task_id": 1e400, "tool": "noop"}',
        ]
    ) | st.binary(max_size=30)
    line = st.one_of(
        good_task().map(dumps),
        good_task().map(dumps),
        good_task().map(dumps),
        wild_task.map(dumps),
        st.tuples(good_task(), st.integers(0, 400), st.binary(min_size=1, max_size=3), st.integers(0, 2)).map(
            mutate
        ),
        junk,
    )
    sep = st.sampled_from([b"\n", b"\r\n"])
    return st.tuples(st.lists(line, max_size=10), sep).map(lambda t: t[1].join(t[0]) + t[1])


def fuzz_child(n: int, seed: int, out: Path) -> dict[str, Any]:
    """In a child interpreter: ``n`` generated plans (and schedules) through ``build_plan``,
    every task of a plan that passes turned into the coordinator's strict-JSON message,
    ``summary_table`` and conflict resolution. Only ``PlanError`` is expected; the plans that
    raised anything else or took longer than :data:`FUZZ_SLOW_S` are kept under ``out``, and
    so are a few samples for ``buddy validate``."""
    import warnings

    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    from buddy.errors import PlanError
    from buddy.models import AgentSpec, Mode, Strategy, TaskSpec
    from buddy.plan.build import build_plan
    from buddy.plan.conflicts import resolve
    from buddy.plan.model import summary_table
    from buddy.plan.policy import ConflictPolicy
    from buddy.tools.registry import default_registry

    warnings.simplefilter("ignore")
    registry = default_registry()
    agents = [AgentSpec(id="a1"), AgentSpec(id="a2", concurrency=2)]
    strategies = list(Strategy)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    stats: dict[str, Any] = {"runs": 0, "valid": 0, "invalid": 0, "tracebacks": 0, "hangs": 0}
    stats["slowest_s"] = 0.0
    failures: list[str] = []
    samples: list[str] = []
    every = max(1, n // max(1, min(5, n // 100 or 1)))

    def build(plan: Path, schedule: Path | None, strategy: Strategy) -> None:
        cp = build_plan(plan, registry, agents, strategy, schedule_path=schedule, workdir=work)
        for pt in cp.tasks.values():
            spec = TaskSpec(
                task_id=pt.task_id,
                tool=pt.task.tool,
                args=pt.task.args,
                mode=Mode.LIVE,
                workdir=str(work),
                claims=pt.claims,
                planned_agent=pt.agent,
                planned_wave=pt.wave,
            )
            json.dumps(spec.model_dump(mode="json"), allow_nan=False)
        summary_table(cp)
        resolve(cp, registry, ConflictPolicy())

    def keep(k: int, kind: str, files: list[Path]) -> str:
        kept = []
        for f in files:
            dest = out / f"{kind}-{k}-{f.name}"
            shutil.copyfile(f, dest)
            kept.append(str(dest))
        return ", ".join(kept)

    def check(data: bytes, schedule: bytes | None) -> None:
        k = stats["runs"]
        stats["runs"] += 1
        plan, sched = work / "plan.jsonl", (work / "schedule.jsonl" if schedule is not None else None)
        plan.write_bytes(data)
        if sched is not None and schedule is not None:
            sched.write_bytes(schedule)
        files = [plan, *([sched] if sched else [])]
        t0 = time.perf_counter()
        try:
            build(plan, sched, strategies[k % len(strategies)])
            stats["valid"] += 1
        except PlanError:
            stats["invalid"] += 1
        except Exception as e:
            stats["tracebacks"] += 1
            where = traceback.format_exception(e)[-2].strip().splitlines()[0]
            failures.append(f"{type(e).__name__}: {e} (at {where}; {keep(k, 'failure', files)})")
        took = time.perf_counter() - t0
        stats["slowest_s"] = max(stats["slowest_s"], round(took, 3))
        if took > FUZZ_SLOW_S:
            stats["hangs"] += 1
            failures.append(f"plan took {took:.1f} s ({keep(k, 'slow', files)})")
        if k % every == 0 and len(samples) < 5:
            samples.append(keep(k, "cli", [plan]))

    strategy = plan_strategy()
    attempt = 0
    while stats["runs"] < n and attempt < 5:

        @hseed(seed + attempt)
        @settings(
            max_examples=n - stats["runs"],
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def one(files: tuple[bytes, bytes | None]) -> None:
            check(*files)

        try:
            one()
        except Exception as e:  # the harness, or hypothesis itself: a traceback too
            stats["tracebacks"] += 1
            failures.append(f"fuzzing stopped: {type(e).__name__}: {e}")
        attempt += 1
    return stats | {"failures": failures, "samples": samples}


def run_fuzz(p: Params, work: Path) -> TrialResult:
    """The ``fuzz_plans`` trial: the child interpreter, then ``buddy validate`` on its samples."""
    res = TrialResult("fuzz_plans")
    t0 = time.monotonic()
    out = work / "fuzz_plans"
    argv = [sys.executable, "-m", "benchmarks.chaos", "--fuzz-child", str(p.fuzz), "--seed", str(p.seed),
            "--fuzz-out", str(out)]  # fmt: skip
    limit = 120 + 0.5 * p.fuzz
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=child_env())
    except subprocess.TimeoutExpired:
        res.hangs += 1
        res.notes.append(f"the fuzzing interpreter did not finish within {limit:.0f} s")
        res.wall_s = round(time.monotonic() - t0, 1)
        return res
    try:
        stats = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res.tracebacks += 1
        res.notes.append(f"the fuzzing interpreter failed ({proc.returncode}): {proc.stderr[-800:]}")
        res.wall_s = round(time.monotonic() - t0, 1)
        return res
    res.runs = int(stats["runs"])
    res.tracebacks += int(stats["tracebacks"])
    res.hangs += int(stats["hangs"])
    res.statuses = {"valid plans": int(stats["valid"]), "refused plans": int(stats["invalid"])}
    res.notes.extend(stats["failures"][:10])
    res.notes.append(f"slowest plan {stats['slowest_s']} s")
    for sample in stats["samples"]:
        try:
            cli = subprocess.run(
                [sys.executable, "-m", "buddy", "validate", sample, "--agents", "a1,a2",
                 "--workdir", str(out)],
                capture_output=True, text=True, timeout=60, cwd=ROOT, env=child_env(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            res.hangs += 1
            res.notes.append(f"buddy validate {sample}: no answer in 60 s")
            continue
        res.tags["buddy validate runs"] = res.tags.get("buddy validate runs", 0) + 1
        text = cli.stdout + cli.stderr
        if cli.returncode not in (0, 2) or TRACEBACK in text:
            res.tracebacks += 1
            res.notes.append(
                f"buddy validate {sample}: exit {cli.returncode}: {' '.join(text[-600:].split())}"
            )
    res.wall_s = round(time.monotonic() - t0, 1)
    return res


# -- running -------------------------------------------------------------------------------

RUNNERS: dict[str, Callable[[Rig, Params, int], RunRecord]] = {
    "worker_kill": run_worker_kill,
    "worker_kill_pop": run_worker_kill_pop,
    "coordinator_kill": run_coordinator_kill,
    "redis_pause": run_redis_pause,
    "redis_restart": run_redis_restart,
    "paused_lease": run_paused_lease,
    "forged_malformed": run_forged_malformed,
}


def run_trial(name: str, rig: Rig | None, p: Params, work: Path) -> TrialResult:
    """``p.runs`` runs of trial ``name`` on ``rig`` (``fuzz_plans`` needs none)."""
    if name == "fuzz_plans":
        log(f"fuzz_plans: {p.fuzz} plans")
        return run_fuzz(p, work)
    assert rig is not None
    res = TrialResult(name)
    t0 = time.monotonic()
    for i in range(p.runs):
        deaths = rig.heal()
        if deaths:
            res.worker_deaths += deaths
            res.notes.append(f"before run {i}: {deaths} worker(s) had died")
        t_run = time.monotonic()
        try:
            rec = RUNNERS[name](rig, p, i)
        except Exception as e:  # the harness itself: shown, counted, the suite goes on
            rec = RunRecord(unexpected=True, notes=[f"harness error {type(e).__name__}: {e}"])
            log(traceback.format_exc())
        rec.worker_deaths += rig.deaths()
        res.absorb(rec, i)
        log(
            f"{name} {i + 1}/{p.runs}: {time.monotonic() - t_run:.1f} s, lost {rec.lost}, "
            f"dup {rec.duplicated}, stale {rec.stale_accepted}, hang {int(rec.hang)}, "
            f"detect {max(rec.detect_s, default=0):.1f} s"
        )
    deaths = rig.heal()
    if deaths:
        res.worker_deaths += deaths
        res.notes.append(f"after the last run: {deaths} worker(s) had died")
    res.wall_s = round(time.monotonic() - t0, 1)
    return res


def criteria(results: Sequence[TrialResult], p: Params) -> list[dict[str, Any]]:
    """The acceptance criteria with their measured values."""
    keys = ("duplicated", "stale_accepted", "hangs", "worker_deaths", "tracebacks", "lost", "unexpected")
    total = {k: sum(getattr(r, k) for r in results) for k in keys}
    detect = max((r.max_detect_s for r in results if r.max_detect_s is not None), default=None)
    fault_runs = [r.runs for r in results if r.trial != "fuzz_plans"]
    fuzz_runs = [r.runs for r in results if r.trial == "fuzz_plans"]
    out = [
        {"name": "duplicated irreversible effects", "value": total["duplicated"], "goal": "0"},
        {
            "name": "stale or forged writes accepted, or undone",
            "value": total["stale_accepted"],
            "goal": "0",
        },
        {"name": "hangs", "value": total["hangs"], "goal": "0"},
        {"name": "worker deaths", "value": total["worker_deaths"], "goal": "0"},
        {"name": "tracebacks", "value": total["tracebacks"], "goal": "0"},
        {"name": "unreported losses", "value": total["lost"], "goal": "0"},
        {"name": "campaigns ended otherwise than required", "value": total["unexpected"], "goal": "0"},
    ]
    for row in out:
        row["pass"] = row["value"] == 0
    out.append(
        {
            "name": "lost message detected within (s)",
            "value": "-" if detect is None else detect,
            "goal": f"≤ {DETECT_LIMIT_S:.0f}",
            "pass": detect is None or detect <= DETECT_LIMIT_S,
        }
    )
    cover = ", ".join(
        ([f"{min(fault_runs)} runs/fault trial"] if fault_runs else [])
        + ([f"{sum(fuzz_runs)} plans"] if fuzz_runs else [])
    )
    out.append(
        {
            "name": "coverage",
            "value": cover,
            "goal": f"≥ {MIN_RUNS} runs/fault trial, ≥ {MIN_FUZZ} plans",
            "pass": (not fault_runs or min(fault_runs) >= MIN_RUNS)
            and (not fuzz_runs or sum(fuzz_runs) >= MIN_FUZZ),
        }
    )
    return out


def print_table(results: Sequence[TrialResult], goals: list[dict[str, Any]], wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    t = Table(title=f"Buddy chaos suite ({wall_s:.0f} s)", show_lines=True)
    cols = ("trial", "runs", "lost", "duplicated", "stale acc.", "hangs", "tracebacks", "worker deaths",
            "max detect s", "unexpected", "wall s", "notes")  # fmt: skip
    for c in cols:
        t.add_column(c, overflow="fold", justify="left" if c in ("trial", "notes") else "right")
    for r in results:
        t.add_row(
            r.trial,
            str(r.runs),
            str(r.lost),
            str(r.duplicated),
            str(r.stale_accepted),
            str(r.hangs),
            str(r.tracebacks),
            str(r.worker_deaths),
            "-" if r.max_detect_s is None else f"{r.max_detect_s:.1f}",
            str(r.unexpected),
            f"{r.wall_s:.0f}",
            "\n".join(r.summary_notes()),
        )
    console.print(t)
    g = Table(title="acceptance")
    for c in ("criterion", "value", "goal", ""):
        g.add_column(c, overflow="fold")
    for row in goals:
        g.add_row(
            row["name"], str(row["value"]), row["goal"], "[green]PASS[/]" if row["pass"] else "[red]FAIL[/]"
        )
    console.print(g)


def run_suite(p: Params, work: Path | None = None) -> tuple[list[TrialResult], list[dict[str, Any]], float]:
    """Every trial of ``p.trials`` on one rig; returns the results, the criteria and the wall time."""
    unknown = sorted(set(p.trials) - set(TRIALS))
    if unknown:
        raise SystemExit(f"unknown trial(s): {', '.join(unknown)}; known: {', '.join(TRIALS)}")
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="buddy-chaos-")) if work is None else work
    t0 = time.monotonic()
    results: list[TrialResult] = []
    rig: Rig | None = None
    try:
        if any(t != "fuzz_plans" for t in p.trials):
            log(f"starting Redis and {len(AGENTS)} workers in {work}")
            rig = Rig(work, settings=p.settings).start()
        for name in [t for t in TRIALS if t in p.trials]:
            results.append(run_trial(name, rig, p, work))
    finally:
        if rig is not None:
            rig.close()
        if p.keep is not None:
            shutil.copytree(work, p.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return results, criteria(results, p), time.monotonic() - t0


def parse_args(argv: Sequence[str] | None) -> tuple[Params, argparse.Namespace]:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos", description=(__doc__ or "").split("\n")[0]
    )
    ap.add_argument("--runs", type=int, default=None, help="runs of each fault trial (default 10; --smoke 1)")
    ap.add_argument("--fuzz", type=int, default=None, help="fuzzed plans (default 500; --smoke 20)")
    ap.add_argument("--trials", default=",".join(TRIALS), help=f"comma list of: {', '.join(TRIALS)}")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--seed", type=int, default=1, help="seed of the fault timings and the fuzzer")
    ap.add_argument("--run-timeout", type=float, default=120.0, help="seconds before a campaign is a hang")
    ap.add_argument("--keep", type=Path, default=None, help="copy plans, ledgers, outputs and logs here")
    ap.add_argument("--smoke", action="store_true", help="small campaigns (the test suite's sizes)")
    ap.add_argument("--fuzz-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--fuzz-out", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    trials = [t.strip() for t in a.trials.split(",") if t.strip()]
    common: dict[str, Any] = {
        "trials": trials,
        "json_path": a.json,
        "seed": a.seed,
        "run_timeout_s": a.run_timeout,
        "keep": a.keep,
    }
    if a.runs is not None:
        common["runs"] = max(1, a.runs)
    if a.fuzz is not None:
        common["fuzz"] = max(1, a.fuzz)
    p = Params.smoke_params(**common) if a.smoke else Params(**common)
    return p, a


def main(argv: Sequence[str] | None = None) -> int:
    p, a = parse_args(argv)
    if a.fuzz_child is not None:
        print(json.dumps(fuzz_child(a.fuzz_child, a.seed, a.fuzz_out or Path(tempfile.mkdtemp()))))
        return 0
    results, goals, wall = run_suite(p)
    print_table(results, goals, wall)
    if p.json_path is not None:
        report = {
            "params": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(p).items()},
            "wall_s": round(wall, 1),
            "trials": [dataclasses.asdict(r) for r in results],
            "criteria": goals,
        }
        p.json_path.write_text(json.dumps(report, indent=2) + "\n")
        log(f"wrote {p.json_path}")
    return 0 if all(g["pass"] for g in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
