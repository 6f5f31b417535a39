"""What every ``buddy`` command shares: the consoles, the exit codes, :func:`fail`, and
:class:`CliContext`, the connection options resolved in one place (as rq's ``CliConfig``).

Which Redis (:func:`resolve_redis`): ``--redis-url``, else ``BUDDY_REDIS_URL``, else the
embedded Redis of a running ``buddy run`` (or Python program), found through its state file
(:func:`buddy.infra.redis_server.running_embedded`): the one that holds the campaign the
command names, else the only one running; only when none runs ``redis://127.0.0.1:6379/0``
(:data:`buddy.infra.transport.DEFAULT_REDIS_URL`). The last two are said on stderr, never
silently; several embedded Redis and no campaign to tell them apart is exit 2 with each one's
``--redis-url``. That Redis is PINGed once, within ``BUDDY_CONNECT_TIMEOUT_S`` seconds, before
a command does any work: when it does not answer, the command prints the redacted URL, what
happened and the fix (which names --redis-url and BUDDY_REDIS_URL) and exits 3, never a
traceback. Which broker: ``--broker-url``, else ``BUDDY_BROKER_URL``, else the Redis.

This module and :mod:`buddy.cli.options` import no other command module, so that each of them
can import these two.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal, NoReturn, Self, TypeVar

import redis
import typer
from rich.console import Console

from buddy.config import get_settings
from buddy.errors import BrokerUnavailable, ConfigError, RedisUnavailable
from buddy.infra.probes import check_broker, check_redis
from buddy.infra.redis_server import EmbeddedRecord, running_embedded
from buddy.infra.transport import DEFAULT_REDIS_URL, redact_url, redis_client
from buddy.state.keys import Keys
from buddy.state.store import Store

out = Console()
err = Console(stderr=True)

#: Exit codes (0 all succeeded, 1 finished with other statuses): invalid input, nothing was
#: dispatched; aborted (a rule fired, or the fleet could not be reached); interrupted (Ctrl-C).
EXIT_INVALID, EXIT_ABORTED, EXIT_INTERRUPTED = 2, 3, 130

T = TypeVar("T")


def fail(message: str, code: int = EXIT_INVALID) -> NoReturn:
    """Print ``message`` as it is (no markup) on stderr and exit with ``code``."""
    err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)


# -- connections ----------------------------------------------------------------------------


def probe_redis(url: str) -> None:
    """PING the Redis at ``url`` once, without retries, within ``BUDDY_CONNECT_TIMEOUT_S`` seconds
    (:func:`buddy.infra.probes.check_redis`). On failure print the redacted URL, what happened
    and the fix, and exit 3 (2 for a URL that is not a Redis URL); never a traceback."""
    try:
        check_redis(url, get_settings().connect_timeout_s)
    except (RedisUnavailable, ConfigError) as e:
        # unwrapped, so the URL and the fix can be copied whole
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ABORTED if isinstance(e, RedisUnavailable) else EXIT_INVALID) from None


def probe_broker(url: str | None) -> None:
    """Connect once to the broker ``url`` (None: the broker is the Redis, probed by
    :func:`probe_redis`) within ``BUDDY_CONNECT_TIMEOUT_S`` seconds, without retries
    (:func:`buddy.infra.probes.check_broker`). On failure print the redacted URL, what
    happened and the fix, and exit 3 (2 for a URL that is not a broker URL)."""
    if not url:
        return
    try:
        check_broker(url, get_settings().connect_timeout_s)
    except (BrokerUnavailable, RedisUnavailable, ConfigError) as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID if isinstance(e, ConfigError) else EXIT_ABORTED) from None


def set_broker(broker_url: str | None) -> None:
    """``--broker-url``: becomes ``BUDDY_BROKER_URL`` of this process, so the coordinator's app,
    :class:`buddy.infra.fleet.LocalFleet`'s workers (they inherit the environment) and Celery
    agree."""
    if broker_url:
        os.environ["BUDDY_BROKER_URL"] = broker_url
        get_settings.cache_clear()


#: Where a command's Redis URL came from: ``--redis-url``, ``BUDDY_REDIS_URL``, a running
#: embedded Redis's state file, or the built-in default.
RedisSource = Literal["flag", "env", "embedded", "default"]


def _holds(record: EmbeddedRecord, campaign: str) -> bool:
    """Whether the embedded Redis of ``record`` holds ``campaign``: named in its state file, or
    its campaign hash exists there (asked within ``BUDDY_CONNECT_TIMEOUT_S`` seconds)."""
    if campaign in record.campaigns:
        return True
    timeout = get_settings().connect_timeout_s
    try:
        client = redis.Redis(
            unix_socket_path=str(record.socket), socket_connect_timeout=timeout, socket_timeout=timeout
        )
        with client:
            return bool(client.exists(Keys.campaign(campaign)))
    except redis.RedisError:
        return False


def resolve_redis(redis_url: str | None, campaign: str | None = None) -> tuple[str, RedisSource, str]:
    """The Redis of a command: ``(url, source, note)``; ``note`` is what to say on stderr
    ("" for a flag or ``BUDDY_REDIS_URL``). Order: ``redis_url`` (the flag), ``BUDDY_REDIS_URL``,
    the running embedded Redis that holds ``campaign``, else the only one running, else the
    default — never the default while an embedded Redis runs. Exits 2 when several embedded
    Redis run and ``campaign`` picks none of them."""
    settings = get_settings()
    if redis_url:
        return redis_url, "flag", ""
    if settings.redis_url:
        return settings.redis_url, "env", ""
    running = running_embedded()
    unset = "no --redis-url and no BUDDY_REDIS_URL"
    if campaign is not None and running:
        holders = [r for r in running if _holds(r, campaign)]
        if holders:
            r = holders[-1]  # the newest, should two ever hold the same id
            return (
                r.url,
                "embedded",
                f"note: {unset}: using the embedded Redis of campaign {campaign}: {r.describe()}",
            )
        unset += f", and no running embedded Redis holds campaign {campaign}"
    if len(running) == 1:
        r = running[0]
        return r.url, "embedded", f"note: {unset}: using the running embedded Redis {r.describe()}"
    if len(running) > 1:
        fail(
            f"{unset}, and {len(running)} embedded Redis are running; name one with --redis-url"
            + (" (or name the campaign)" if campaign is None else "")
            + ":\n"
            + "\n".join(
                f"  --redis-url {r.url}   # pid {r.pid}, {', '.join(r.campaigns) or 'no campaign yet'}"
                for r in running
            )
        )
    return DEFAULT_REDIS_URL, "default", f"note: {unset}: using {DEFAULT_REDIS_URL}"


class CliContext:
    """The Redis and the broker of one command, resolved once from its options and the settings.

    Build it where the command used to read ``--redis-url``: ``CliContext.connect(redis_url)``
    when the command needs the Redis before anything else, ``CliContext(redis_url)`` to resolve
    the URLs and probe later (:meth:`probe`), or not at all (``buddy doctor`` reports an
    unreachable Redis as a failed check). ``campaign``: the campaign the command is about,
    which picks the embedded Redis holding it (:func:`resolve_redis`).

    Attributes:
        url: ``--redis-url``, else ``BUDDY_REDIS_URL``, else the running embedded Redis, else
            ``redis://127.0.0.1:6379/0``.
        source: which of those it is (:data:`RedisSource`).
        broker_url: ``--broker-url``, else ``BUDDY_BROKER_URL``, else None (the Redis).
    """

    def __init__(
        self, redis_url: str | None = None, broker_url: str | None = None, *, campaign: str | None = None
    ) -> None:
        settings = get_settings()
        self._broker_flag = broker_url
        self.url, self.source, self._note = resolve_redis(redis_url, campaign)
        #: True when neither the flag nor BUDDY_REDIS_URL named a Redis (embedded or default)
        self.defaulted = self.source in ("embedded", "default")
        self.broker_url: str | None = broker_url or settings.broker_url
        self._probed = False
        self._store: Store | None = None

    @classmethod
    def connect(
        cls, redis_url: str | None = None, broker_url: str | None = None, *, campaign: str | None = None
    ) -> CliContext:
        """A context whose Redis answered its PING (:meth:`probe`); else the command exits."""
        return cls(redis_url, broker_url, campaign=campaign).probe()

    @property
    def shown(self) -> str:
        """:attr:`url` with its password replaced by ``***``, for messages."""
        return redact_url(self.url)

    def export(self) -> Self:
        """Put ``--redis-url`` (or the embedded Redis found) and ``--broker-url``, when given,
        into this process's environment (``BUDDY_REDIS_URL``, ``BUDDY_BROKER_URL``) and re-read
        the settings: for the Celery app and the processes this one starts, which read them
        from there."""
        if self.source in ("flag", "embedded"):
            os.environ["BUDDY_REDIS_URL"] = self.url
        set_broker(self._broker_flag)
        get_settings.cache_clear()
        return self

    def probe(self) -> Self:
        """PING the Redis once (:func:`probe_redis`); later calls do nothing."""
        if not self._probed:
            if self._note:
                err.print(self._note, markup=False, highlight=False, soft_wrap=True)
            probe_redis(self.url)
            self._probed = True
        return self

    def probe_broker(self) -> Self:
        """Connect once to the broker when it is not the Redis (:func:`probe_broker`)."""
        probe_broker(self.broker_url)
        return self

    @property
    def store(self) -> Store:
        """A :class:`buddy.state.store.Store` on the Redis, probed first; built once."""
        if self._store is None:
            self.probe()
            self._store = Store(redis_client(self.url), stale_s=get_settings().heartbeat_stale_s)
        return self._store

    @contextmanager
    def redis_errors(self) -> Iterator[None]:
        """Turn a redis-py error raised in the block into ``cannot reach Redis at URL: …`` and
        exit 3: the Redis answered the probe, then went away (or refused a command)."""
        try:
            yield
        except redis.RedisError as e:
            self._unreachable(e)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, a redis-py error turned into an exit as in :meth:`redis_errors`."""
        try:
            return fn()
        except redis.RedisError as e:
            self._unreachable(e)

    def _unreachable(self, e: Exception) -> NoReturn:
        fail(f"cannot reach Redis at {self.shown}: {e}", EXIT_ABORTED)
