"""Local worker processes for the embedded default and for tests (``buddy run`` without a Redis URL).

Each worker is a ``buddy worker`` subprocess in its own session (process group), so
:meth:`LocalFleet.stop` can end it and every pool child with one signal: SIGTERM (Celery's
warm shutdown), then SIGKILL after ``grace_s``. ``stop`` runs on normal exit, on errors and
on Ctrl-C, so no process outlives the campaign.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from buddy.models import AgentSpec


class LocalFleet:
    """Start ``workers_per_agent`` worker processes per agent against ``redis_url``.

    ``env`` adds variables (allow-lists, tool modules) to each worker's environment;
    ``broker_url`` becomes their ``BUDDY_BROKER_URL`` (default: the one this process has, if
    any; else the broker is ``redis_url``); ``log_dir`` receives one log file per worker
    (default: discard).
    """

    def __init__(
        self,
        redis_url: str,
        agents: Sequence[AgentSpec],
        *,
        workers_per_agent: int = 1,
        pool: str = "prefork",
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        extra_args: Sequence[str] = (),
        broker_url: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.broker_url = broker_url
        self.agents = list(agents)
        self.workers_per_agent = workers_per_agent
        self.pool = pool
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.extra_args = list(extra_args)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> LocalFleet:
        env = {**os.environ, **self.env, "BUDDY_REDIS_URL": self.redis_url}
        if self.broker_url:
            env["BUDDY_BROKER_URL"] = self.broker_url
        for spec in self.agents:
            for i in range(self.workers_per_agent):
                argv = [
                    sys.executable, "-m", "buddy", "worker",
                    "--agent", spec.id,
                    "--concurrency", str(spec.concurrency),
                    "--pool", self.pool,
                    "--name", f"{spec.id}-{i + 1}-{os.getpid()}",
                    "--local",
                    *self.extra_args,
                ]  # fmt: skip
                log: IO[bytes] | None = None
                if self.log_dir is not None:
                    self.log_dir.mkdir(parents=True, exist_ok=True)
                    log = open(self.log_dir / f"worker-{spec.id}-{i + 1}.log", "ab")  # noqa: SIM115
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log if log is not None else subprocess.DEVNULL,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
                if log is not None:
                    log.close()  # the child holds its own descriptor
        return self

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every worker's process group, then SIGKILL what is left after ``grace_s``."""
        for p in self.procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            _signal_group(p, signal.SIGKILL)  # pool children too, even if the parent is gone
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def __enter__(self) -> LocalFleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _signal_group(p: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
