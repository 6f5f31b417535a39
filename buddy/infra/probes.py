"""First-connection probes of the Redis and the broker, and what to tell the operator.

:func:`check_redis` and :func:`check_broker` are the one fast probe each command runs before
any work: no retries, a few seconds (``BUDDY_CONNECT_TIMEOUT_S``), so a wrong URL, password,
host or TLS setting is reported at once, with the URL redacted (:func:`~buddy.infra.transport.redact_url`),
what happened and the fix (:class:`~buddy.errors.RedisUnavailable`,
:class:`~buddy.errors.BrokerUnavailable`). The retrying clients for the work itself are in
:mod:`buddy.infra.transport`.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from buddy.errors import BrokerUnavailable, ConfigError, RedisFault, RedisUnavailable
from buddy.infra.logs import redact_secrets
from buddy.infra.transport import amqp_connection_url, amqp_tls, broker_kind, redact_url


def _within(call: Any, close: Any, timeout_s: float, name: str) -> list[BaseException | None]:
    """Run ``call`` then ``close`` in a daemon thread, waiting at most ``timeout_s`` seconds (a DNS
    lookup or TLS handshake is cut off too). Returns ``[]`` on timeout, else ``[None]`` or
    ``[the exception call raised]``."""
    done: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            done.append(None)
        except BaseException as e:  # handed to the caller's thread
            done.append(e)
        finally:
            close()

    probe = threading.Thread(target=run, name=name, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return done


def check_redis(url: str, timeout_s: float) -> None:
    """Check that the Redis at ``url`` answers: one ``PING`` on a client without retries.

    The probe a command runs once, before any work, so that a wrong URL fails in
    ``timeout_s`` seconds (``BUDDY_CONNECT_TIMEOUT_S``, 3 by default) rather than after
    :func:`redis_client`'s retries, which are for a Redis that goes away *after* the first
    connection. ``timeout_s`` bounds the socket connect and the reply (redis-py's
    ``socket_connect_timeout`` and ``socket_timeout``) and the whole probe, host name lookup
    and TLS handshake included (the PING runs on a daemon thread that is waited for at most
    ``timeout_s``). A Redis still loading its data (``LOADING``) passes: it is reachable.

    Raises :class:`RedisUnavailable` (an :class:`InfrastructureError`) with the redacted URL,
    what happened and the fix: connection refused or no such socket, no password or a wrong
    one (``NOAUTH``, ``WRONGPASS``, ``invalid password``), an ACL that denies ``PING``, an
    unknown host, a TLS failure, no answer within ``timeout_s``, something that is not Redis.
    Raises :class:`ConfigError` when ``url`` is not a Redis URL at all.
    """
    shown = redact_url(url)
    try:
        client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
        )
    except ValueError as e:
        raise ConfigError(
            f"bad Redis URL {shown}: {redact_secrets(str(e))}; use redis://[:PASSWORD@]host:port/0, "
            "rediss:// for TLS, or unix://[:PASSWORD@]/path/to/redis.sock"
        ) from None
    done = _within(client.ping, client.close, timeout_s, "buddy-redis-probe")
    if not done:
        raise RedisUnavailable(shown, *_timeout_advice(url, timeout_s))
    error = done[0]
    if error is None or isinstance(error, redis.BusyLoadingError):
        return
    if not isinstance(error, (redis.RedisError, OSError)):
        raise error
    raise RedisUnavailable(shown, *_advice(url, error, timeout_s)) from None


def _timeout_advice(url: str, timeout_s: float) -> tuple[RedisFault, str, str]:
    if urlsplit(url).scheme == "rediss":
        fix = (
            "a rediss:// URL to a Redis without TLS waits like this: use redis:// unless the server "
            "has TLS on; else check the host, the port and any firewall in between"
        )
    else:
        fix = (
            "check the host and the port, any firewall in between, and whether the server only "
            "accepts TLS (then use rediss://); BUDDY_CONNECT_TIMEOUT_S sets the wait"
        )
    return "timeout", f"no answer within {timeout_s:g} s", fix


def _with_password(url: str) -> str:
    """``url`` with ``PASSWORD`` in place of its password (or added to it), for a fix to quote."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:PASSWORD@{host}", query=""))


def _advice(url: str, error: BaseException, timeout_s: float) -> tuple[RedisFault, str, str]:
    """``(kind, reason, fix)`` for the ``error`` a first PING of ``url`` raised."""
    parts = urlsplit(url)
    text = redact_secrets(str(error)).rstrip(".")
    low = text.lower()
    cause = error.__cause__ or error.__context__
    where = parts.path if parts.scheme == "unix" else f"{parts.hostname or '?'}:{parts.port or 6379}"
    fix_url = "in --redis-url or BUDDY_REDIS_URL"
    if isinstance(error, redis.AuthenticationError) or any(
        s in text for s in ("NOAUTH", "WRONGPASS", "invalid password")
    ):
        if "without any password configured" in low or "no password is set" in low:
            return (
                "auth",
                f"the URL has a password but this Redis requires none ({text})",
                f"remove the password from the URL {fix_url}, or check that it names the right Redis",
            )
        if parts.password is None:
            return (
                "auth",
                "this Redis requires a password and the URL has none",
                f"put the password in the URL: {_with_password(url)}, in --redis-url or BUDDY_REDIS_URL",
            )
        return (
            "auth",
            f"the password (or user) in the URL was refused ({text})",
            f"put the right password in the URL: {_with_password(url)} (USER:PASSWORD@ for an ACL "
            f"user), {fix_url}",
        )
    if isinstance(error, redis.exceptions.NoPermissionError) or "NOPERM" in text:
        return (
            "permission",
            f"the URL's user may not run PING ({text})",
            "grant the URL's user the commands Buddy runs (ACL SETUSER), or put another user in the URL",
        )
    if isinstance(error, (redis.TimeoutError, TimeoutError, socket.timeout)):
        return _timeout_advice(url, timeout_s)
    if isinstance(cause, socket.gaierror) or any(
        s in low for s in ("name or service not known", "nodename nor servname", "temporary failure in name")
    ):
        return (
            "unknown_host",
            f"unknown host {parts.hostname or '?'!r} ({text})",
            f"check the host name {fix_url} (and that this machine can resolve it)",
        )
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in low:
        return (
            "refused",
            f"connection refused: nothing listens on {where}",
            f"start Redis there, or point --redis-url / BUDDY_REDIS_URL at the fleet's Redis "
            f"({_example(parts.scheme)})",
        )
    if isinstance(cause, ssl.SSLError) or isinstance(error, ssl.SSLError) or "[ssl" in low:
        if isinstance(cause, ssl.SSLCertVerificationError) or "certificate verify failed" in low:
            return (
                "tls",
                f"the server's TLS certificate was not accepted ({text})",
                "name the CA that signed it: rediss://host:port/0?ssl_ca_certs=/path/to/ca.pem "
                "(ssl_cert_reqs=none skips the check: for tests only)",
            )
        return (
            "tls",
            f"the TLS handshake failed ({text})",
            "use rediss:// only for a Redis with TLS on (tls-port), redis:// otherwise; check the "
            "ssl_ca_certs, ssl_certfile and ssl_keyfile in the URL",
        )
    if isinstance(cause, FileNotFoundError):
        if parts.scheme == "unix":
            return (
                "refused",
                f"no Redis socket at {where}",
                f"start Redis with `unixsocket {where}`, or point --redis-url / BUDDY_REDIS_URL at the "
                f"fleet's Redis ({_example(parts.scheme)})",
            )
        return (
            "tls",
            f"a file named in the URL does not exist ({text})",
            "check the ssl_ca_certs, ssl_certfile and ssl_keyfile paths in the URL",
        )
    if isinstance(cause, PermissionError):
        return (
            "permission",
            f"permission denied on {where} ({text})",
            "run as a user that may open the socket (see unixsocketperm in redis.conf)",
        )
    if isinstance(cause, ConnectionResetError) or "closed by server" in low or "reset by peer" in low:
        return (
            "protocol",
            f"the server at {where} closed the connection ({text})",
            "check that host:port is a Redis; if it accepts TLS only, use rediss://",
        )
    if isinstance(error, redis.exceptions.InvalidResponse) or "protocol error" in low:
        return (
            "protocol",
            f"what answers at {where} is not Redis ({text})",
            f"check the port {fix_url} (Redis listens on 6379 by default)",
        )
    if isinstance(error, redis.ResponseError):
        return (
            "other",
            f"Redis refused the connection's setup ({text})",
            "check the URL's database number (/0 … /15 by default) and the user's ACL",
        )
    return "other", text, f"check the URL {fix_url} and that Redis runs there"


def _example(scheme: str) -> str:
    if scheme == "unix":
        return "unix://[:PASSWORD@]/path/to/redis.sock"
    return f"{scheme or 'redis'}://[:PASSWORD@]host:6379/0"


def check_broker(url: str, timeout_s: float) -> None:
    """Check that the broker at ``url`` (``BUDDY_BROKER_URL``) accepts a connection: one AMQP
    handshake (login and virtual host included) without retries, within ``timeout_s`` seconds
    (``BUDDY_CONNECT_TIMEOUT_S``); a Redis URL is :func:`check_redis`'s.

    Raises :class:`BrokerUnavailable` (or :class:`RedisUnavailable`) with the redacted URL, what
    happened and the fix: refused, unknown host, login refused, no such virtual host or no
    access to it, TLS failure, no answer. Raises :class:`ConfigError` for a URL that is not a
    broker URL.
    """
    if broker_kind(url) == "redis":
        check_redis(url, timeout_s)
        return
    from kombu import Connection

    shown = redact_url(url)
    try:
        conn = Connection(amqp_connection_url(url), connect_timeout=timeout_s, ssl=amqp_tls(url))
    except ValueError as e:  # e.g. a port that is not a number
        raise ConfigError(f"bad broker URL {shown}: {redact_secrets(str(e))}") from None
    done = _within(
        lambda: conn.ensure_connection(max_retries=0), conn.release, timeout_s, "buddy-broker-probe"
    )
    if not done:
        raise BrokerUnavailable(
            shown,
            "timeout",
            f"no answer within {timeout_s:g} s",
            "check the host and the port (5672, 5671 for amqps://) and any firewall in between; "
            "BUDDY_CONNECT_TIMEOUT_S sets the wait",
        )
    error = done[0]
    if error is None:
        return
    if not isinstance(error, Exception):
        raise error
    raise BrokerUnavailable(shown, *_broker_advice(url, error)) from None


def _broker_advice(url: str, error: Exception) -> tuple[str, str, str]:
    """``(kind, reason, fix)`` for the ``error`` a first AMQP connection to ``url`` raised."""
    parts = urlsplit(url)
    cause = error.__cause__ or error.__context__ or error
    text = redact_secrets(str(getattr(error, "reply_text", None) or error)).rstrip(".")
    low = text.lower()
    where = f"{parts.hostname or '?'}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"
    vhost = parts.path[1:] or "/"
    fix_url = "in BUDDY_BROKER_URL (or --broker-url)"
    code = getattr(error, "reply_code", None)  # py-amqp's AMQPError: the broker's reply code
    if code == 403:  # ACCESS_REFUSED: the login
        return (
            "auth",
            f"the broker refused the login ({text})",
            f"put the right user and password in the URL: amqp://USER:PASSWORD@{where}/{vhost}, {fix_url}; "
            "RabbitMQ's guest user may log in from localhost only",
        )
    if code == 530:  # NOT_ALLOWED: no such virtual host, or the user may not use it
        return (
            "vhost",
            f"no access to the virtual host {vhost!r} ({text})",
            f"create it and let the user in: rabbitmqctl add_vhost {vhost}; rabbitmqctl set_permissions "
            f"-p {vhost} USER '.*' '.*' '.*' (or name another virtual host {fix_url})",
        )
    if isinstance(cause, socket.gaierror) or "name or service not known" in low:
        return (
            "unknown_host",
            f"unknown host {parts.hostname or '?'!r} ({text})",
            f"check the host name {fix_url}",
        )
    if isinstance(cause, ConnectionRefusedError) or "connection refused" in low:
        return (
            "refused",
            f"connection refused: nothing listens on {where}",
            "start RabbitMQ there, or point BUDDY_BROKER_URL (--broker-url) at the fleet's broker",
        )
    if isinstance(cause, ssl.SSLError):
        return (
            "tls",
            f"the TLS handshake failed ({text})",
            "use amqps:// only for a TLS listener (5671), amqp:// otherwise; name the CA that signed the "
            "server's certificate with ?ssl_ca_certs=/path/to/ca.pem",
        )
    if isinstance(cause, (TimeoutError, socket.timeout)):
        return (
            "timeout",
            f"no AMQP answer from {where} ({text})",
            f"check the port {fix_url} (RabbitMQ listens on 5672, 5671 with TLS)",
        )
    return "other", text, f"check the URL {fix_url} and that RabbitMQ runs there"
