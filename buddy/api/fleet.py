"""A fleet started from Python: a Redis (the embedded one unless given a URL) and local worker
processes per agent, as a context manager reusable across campaigns.

Teardown goes through one :class:`contextlib.ExitStack` and ignores SIGINT while it runs, so
a second Ctrl-C during it cannot leave a private ``redis-server`` or a worker behind.

While it runs, an embedded Redis is advertised in a state file
(:class:`~buddy.infra.redis_server.EmbeddedRecord`) so that ``buddy approvals …``, ``buddy
status`` and the other commands reach it without ``--redis-url``; the file is removed first
thing at teardown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from celery import Celery

from buddy.config import get_settings
from buddy.errors import InfrastructureError
from buddy.infra.fleet import LocalFleet
from buddy.infra.probes import check_redis
from buddy.infra.redis_server import (
    EmbeddedRecord,
    EmbeddedRedis,
    process_start,
    remove_record,
    write_record,
)
from buddy.infra.transport import make_dispatcher, redis_client
from buddy.models import AgentSpec, utcnow
from buddy.state.store import Store

log = logging.getLogger("buddy.fleet")


@contextlib.contextmanager
def sigint_shielded() -> Iterator[None]:
    """Ignore SIGINT (Ctrl-C) inside the block when on the main thread; restore it after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Fleet:
    """The embedded Redis (or ``redis_url``) and ``workers_per_agent`` worker processes per
    agent (:class:`~buddy.infra.fleet.LocalFleet`: ``celery -A workers worker -Q
    buddy.agent.<id>,buddy.coordinator``; ``pool`` and ``extra_args`` are its options).
    ``env`` adds variables to the workers (tool modules as ``BUDDY_TOOLS``, allow-lists, file
    root); ``log_dir`` gets one log per worker. :meth:`start` returns once every agent has a
    live worker (a heartbeat in Redis).

    Raises :class:`~buddy.errors.InfrastructureError` (e.g. ``RedisUnavailable``) from
    :meth:`start` when the Redis cannot be started or reached within the connect timeout, or
    no worker of an agent comes up within ``start_timeout_s`` seconds."""

    def __init__(
        self,
        agents: Sequence[AgentSpec],
        *,
        redis_url: str | None = None,
        workers_per_agent: int = 1,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        broker_url: str | None = None,
        pool: str = "prefork",
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 60.0,
    ) -> None:
        self.agents = list(agents)
        self.redis_url = redis_url
        self.workers_per_agent = workers_per_agent
        self.env = dict(env or {})
        self.log_dir = log_dir
        self.broker_url = broker_url
        self.pool = pool
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        self._dispatcher: Celery | None = None
        self.embedded: EmbeddedRedis | None = None
        #: the state file that advertises the embedded Redis (None without one)
        self.record: EmbeddedRecord | None = None
        self.workers: LocalFleet | None = None
        self._stack = contextlib.ExitStack()

    @property
    def url(self) -> str:
        """The Redis URL of the fleet (the embedded one's unix socket once started)."""
        if self.embedded is not None:
            return self.embedded.url
        if self.redis_url is None:
            raise RuntimeError("the fleet is not started")
        return self.redis_url

    def start(self) -> Fleet:
        """Start the embedded Redis (when no URL) and the workers; stop what started on failure."""
        try:
            if self.redis_url is None:
                self.embedded = EmbeddedRedis().start()
                self._stack.callback(self.embedded.stop)
                self._advertise()
            else:
                check_redis(self.redis_url, get_settings().connect_timeout_s)
            if self.workers_per_agent:
                self.workers = LocalFleet(
                    self.url,
                    self.agents,
                    workers_per_agent=self.workers_per_agent,
                    env=self.env,
                    log_dir=self.log_dir,
                    broker_url=self.broker_url,
                    pool=self.pool,
                    extra_args=self.extra_args,
                )
                self._stack.callback(self.workers.stop)
                self.workers.start()
                self._wait_ready(self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _advertise(self) -> None:
        """Write the embedded Redis's state file; removed at teardown (before the Redis stops).
        A state directory that cannot be written is logged: commands then need --redis-url,
        which the hints print."""
        assert self.embedded is not None
        pid = os.getpid()
        record = EmbeddedRecord(
            url=self.embedded.url, pid=pid, pid_start=process_start(pid), started_at=utcnow(), cwd=os.getcwd()
        )
        try:
            self.record = write_record(record)
        except OSError as e:
            log.warning("cannot write the embedded Redis's state file: %s", e)
            return
        self._stack.callback(self._unadvertise)

    def _unadvertise(self) -> None:
        if self.record is not None:
            remove_record(self.record)
            self.record = None

    def add_campaign(self, campaign_id: str) -> None:
        """Name ``campaign_id`` in the embedded Redis's state file, so ``buddy`` commands that
        name the campaign pick this Redis among several; nothing without an embedded Redis."""
        if self.record is not None and campaign_id not in self.record.campaigns:
            campaigns = [*self.record.campaigns, campaign_id]
            try:
                self.record = write_record(self.record.model_copy(update={"campaigns": campaigns}))
            except OSError as e:
                log.warning("cannot update the embedded Redis's state file: %s", e)

    def _wait_ready(self, timeout_s: float) -> None:
        """Wait until every agent has a live worker (its heartbeat in Redis), so a campaign's
        ``worker_wait`` does not count this fleet's start-up. Raises InfrastructureError when a
        worker process exits or ``timeout_s`` seconds pass first, naming the worker logs."""
        assert self.workers is not None
        store = self.store()
        deadline = time.monotonic() + timeout_s
        logs = f"; see the worker logs in {self.log_dir}" if self.log_dir else ""
        while True:
            missing = [a.id for a in self.agents if not store.live_workers(a.id)]
            if not missing:
                return
            dead = [p.returncode for p in self.workers.procs if p.poll() is not None]
            if dead:
                raise InfrastructureError(f"a local worker exited with code {dead[0]} while starting{logs}")
            if time.monotonic() >= deadline:
                raise InfrastructureError(
                    f"no local worker of agent(s) {', '.join(missing)} came up within {timeout_s:g} s{logs}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the workers, then the embedded Redis; Ctrl-C cannot interrupt it."""
        with sigint_shielded():
            self._stack.close()
        self._dispatcher = None

    def store(self) -> Store:
        """A :class:`Store` on the fleet's Redis."""
        s = get_settings()
        return Store(redis_client(self.url), events_maxlen=s.events_maxlen, stale_s=s.heartbeat_stale_s)

    def dispatcher(self) -> Celery:
        """The Celery app that sends tasks to this fleet (one per fleet, closed by :meth:`stop`)."""
        if self._dispatcher is None:
            app = make_dispatcher(self.url, get_settings())
            self._stack.callback(app.close)
            self._dispatcher = app
        return self._dispatcher

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where: Any = "embedded" if self.embedded is not None else self.redis_url
        return f"Fleet(agents={[a.id for a in self.agents]}, redis={where}, workers={self.workers_per_agent})"
