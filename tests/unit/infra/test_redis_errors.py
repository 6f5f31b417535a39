"""A wrong Redis fails fast: :func:`buddy.infra.probes.check_redis` and every command that needs Redis.

Real servers only (no mocks of the network): a private password-protected ``redis-server`` on a
free TCP port and its unix socket, a free port nobody listens on (refused), a socket that
accepts and never answers (timeout), one that answers HTTP (not Redis) and a TLS server with
a self-signed certificate. Never 127.0.0.1:6379. ``tests/integration/test_redis_errors.py`` runs
the same commands as ``python -m buddy`` processes.
"""

from __future__ import annotations

import datetime
import pickle
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from buddy.cli.app import app
from buddy.errors import ConfigError, InfrastructureError, RedisUnavailable
from buddy.infra.probes import check_redis
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import redact_url
from tests.helpers import free_port, private_redis

PASSWORD = "s3cret-0a9f"
runner = CliRunner()


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis with ``requirepass`` on a free TCP port and a unix socket."""
    with private_redis(password=PASSWORD, port=free_port()) as server:
        yield server


@pytest.fixture(scope="module")
def port(locked_redis: EmbeddedRedis) -> int:
    return locked_redis.port


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


def _serve(sock: socket.socket, handle: Callable[[socket.socket], None]) -> threading.Thread:
    """Accept connections on ``sock`` on a daemon thread, each handled by ``handle``."""

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                try:
                    handle(conn)
                except (OSError, ssl.SSLError):
                    pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


@pytest.fixture
def http_url() -> Iterator[str]:
    """A port where something that is not Redis answers."""

    def handle(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        _serve(s, handle)
        yield f"redis://127.0.0.1:{s.getsockname()[1]}/0"


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = tmp / "key.pem", tmp / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@pytest.fixture
def tls_port(tmp_path: Path) -> Iterator[int]:
    """A TLS server with a self-signed certificate (the handshake is all it does)."""
    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)

    def handle(conn: socket.socket) -> None:
        conn.settimeout(2)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1024)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        _serve(s, handle)
        yield int(s.getsockname()[1])


def _probe_error(url: str, timeout_s: float = 3.0) -> RedisUnavailable:
    start = time.monotonic()
    with pytest.raises(RedisUnavailable) as info:
        check_redis(url, timeout_s)
    assert time.monotonic() - start < timeout_s + 1.0
    e = info.value
    assert PASSWORD not in str(e) and "wrong-pw" not in str(e)
    assert str(e).startswith(f"cannot reach Redis at {redact_url(url)}: ") and e.fix in str(e)
    return e


# -- redact_url -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6380/0", "redis://127.0.0.1:6380/0"),
        ("redis://:pw@127.0.0.1:6380/0", "redis://:***@127.0.0.1:6380/0"),
        ("rediss://bob:p@ss@redis.example:6380/1", "rediss://bob:***@redis.example:6380/1"),
        ("unix://:pw@/tmp/x/redis.sock", "unix://:***@/tmp/x/redis.sock"),
    ],
)
def test_redact_url_hides_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_cli_keeps_its_redact_url() -> None:
    import buddy.cli.app

    assert buddy.cli.app.redact_url is redact_url


# -- check_redis ----------------------------------------------------------------------------


def test_probe_passes_with_the_password(locked_redis: EmbeddedRedis) -> None:
    check_redis(locked_redis.tcp_url, 3.0)
    check_redis(locked_redis.url, 3.0)


def test_wrong_password(port: int, locked_redis: EmbeddedRedis) -> None:
    for url in (f"redis://:wrong-pw@127.0.0.1:{port}/0", f"unix://:wrong-pw@{locked_redis.socket}"):
        e = _probe_error(url)
        assert e.kind == "auth" and "refused" in e.reason
        assert "PASSWORD@" in e.fix and "BUDDY_REDIS_URL" in e.fix
    e = _probe_error(f"redis://bob:wrong-pw@127.0.0.1:{port}/0")
    assert e.kind == "auth" and f"redis://bob:PASSWORD@127.0.0.1:{port}/0" in e.fix


def test_missing_password(port: int) -> None:
    e = _probe_error(f"redis://127.0.0.1:{port}/0")
    assert e.kind == "auth" and "requires a password and the URL has none" in e.reason
    assert f"put the password in the URL: redis://:PASSWORD@127.0.0.1:{port}/0" in e.fix
    assert "BUDDY_REDIS_URL" in e.fix


def test_password_for_a_redis_without_one(redis_server: EmbeddedRedis) -> None:
    # RESP2's AUTH is refused by a Redis without a password (RESP3's HELLO AUTH is accepted)
    e = _probe_error(f"unix://:wrong-pw@{redis_server.socket}?protocol=2")
    assert e.kind == "auth" and "requires none" in e.reason and "remove the password" in e.fix


def test_refused_port_and_missing_socket(tmp_path: Path) -> None:
    p = free_port()
    e = _probe_error(f"redis://127.0.0.1:{p}/0")
    assert e.kind == "refused" and f"nothing listens on 127.0.0.1:{p}" in e.reason
    assert "start Redis" in e.fix and "BUDDY_REDIS_URL" in e.fix
    e = _probe_error(f"unix://{tmp_path / 'none.sock'}")
    assert e.kind == "refused" and "no Redis socket" in e.reason


def test_unknown_host() -> None:
    e = _probe_error("redis://no-such-host.invalid:6379/0", timeout_s=2.0)
    # a resolver that answers says "unknown"; one that never answers is cut at the deadline
    assert e.kind in ("unknown_host", "timeout"), e
    if e.kind == "unknown_host":
        assert "no-such-host.invalid" in e.reason and "host name" in e.fix


def test_no_answer_is_cut_at_the_timeout(silent_url: str) -> None:
    start = time.monotonic()
    e = _probe_error(silent_url, timeout_s=0.5)
    assert time.monotonic() - start < 1.5
    assert e.kind == "timeout" and e.reason == "no answer within 0.5 s" and "rediss://" in e.fix


def test_something_else_answers(http_url: str) -> None:
    e = _probe_error(http_url)
    assert e.kind == "protocol" and "not Redis" in e.reason


def test_tls_certificate_not_trusted(tls_port: int) -> None:
    e = _probe_error(f"rediss://:wrong-pw@127.0.0.1:{tls_port}/0")
    assert e.kind == "tls" and "certificate" in e.reason and "ssl_ca_certs" in e.fix


def test_plain_redis_url_to_a_tls_port(tls_port: int) -> None:
    e = _probe_error(f"redis://127.0.0.1:{tls_port}/0", timeout_s=1.0)
    assert e.kind in ("protocol", "timeout"), e
    assert "rediss://" in e.fix


def test_not_a_redis_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bad Redis URL http://:\\*\\*\\*@host/0"):
        check_redis("http://:wrong-pw@host/0", 1.0)


def test_a_loading_redis_is_reachable(monkeypatch: pytest.MonkeyPatch, locked_redis: EmbeddedRedis) -> None:
    def loading(self: redis.Redis) -> bool:
        raise redis.BusyLoadingError("Redis is loading the dataset in memory")

    monkeypatch.setattr(redis.Redis, "ping", loading)
    check_redis(locked_redis.tcp_url, 1.0)  # retrying clients ride out the load


def test_redis_unavailable_is_an_infrastructure_error_and_pickles() -> None:
    e = RedisUnavailable("redis://:***@h:1/0", "auth", "why", "do this")
    assert isinstance(e, InfrastructureError)
    back = pickle.loads(pickle.dumps(e))
    assert (back.url, back.kind, back.reason, back.fix, str(back)) == (e.url, e.kind, e.reason, e.fix, str(e))


# -- every command --------------------------------------------------------------------------


def commands(tmp: Path) -> dict[str, list[str]]:
    """Every command that needs Redis, with the arguments it needs to get that far (the plan
    of ``run`` and ``resume`` is ``tmp/plan.jsonl``: see :func:`write_plan`)."""
    plan = tmp / "plan.jsonl"
    return {
        "run": ["run", str(plan), "--no-progress", "--out", str(tmp / "out")],
        "status": ["status"],
        "status-campaign": ["status", "c-1"],
        "agents": ["agents"],
        "approvals-list": ["approvals", "list"],
        "approvals-approve": ["approvals", "approve", "c-1", "t1"],
        "approvals-deny": ["approvals", "deny", "c-1", "t1", "--reason", "no"],
        "lock": ["lock", "--reason", "maintenance"],
        "unlock": ["unlock"],
        "abort": ["abort", "c-1"],
        "review": ["review", "c-1", "t1", "--mark", "failed"],
        "rollback": ["rollback", "c-1"],
        "resume": ["resume", "c-1", "--plan", str(plan)],
        "worker": ["worker", "--agent", "a1"],
        "flower": ["flower", "--port", "0"],
        "exporter": ["exporter", "--port", "0"],
    }


COMMANDS = list(commands(Path("/nonexistent")))


def write_plan(tmp: Path) -> Path:
    plan = tmp / "plan.jsonl"
    plan.write_text('{"task_id": "a", "tool": "noop"}\n')
    return plan


@pytest.fixture(autouse=True)
def _restore_redis_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``worker`` and ``flower`` export --redis-url as BUDDY_REDIS_URL: undo it after each test."""
    monkeypatch.setenv("BUDDY_REDIS_URL", "")


@pytest.mark.parametrize("fault", ["wrong-password", "no-password", "refused"])
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_reports_a_wrong_redis_and_exits_3(
    command: str, fault: str, port: int, tmp_path: Path
) -> None:
    url, fix = {
        "wrong-password": (f"redis://:wrong-pw@127.0.0.1:{port}/0", "put the right password in the URL"),
        "no-password": (f"redis://127.0.0.1:{port}/0", "put the password in the URL"),
        "refused": (f"redis://127.0.0.1:{free_port()}/0", "start Redis there"),
    }[fault]
    write_plan(tmp_path)
    start = time.monotonic()
    res = runner.invoke(app, [*commands(tmp_path)[command], "--redis-url", url])
    assert time.monotonic() - start < 6
    assert res.exit_code == 3, res.output
    assert isinstance(res.exception, SystemExit)  # no traceback
    assert f"cannot reach Redis at {redact_url(url)}:" in res.stderr
    assert fix in res.stderr and "BUDDY_REDIS_URL" in res.stderr
    assert "wrong-pw" not in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("command", ["status", "worker", "run"])
def test_the_url_from_the_environment_is_probed_too(
    command: str, port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDDY_REDIS_URL", f"redis://:wrong-pw@127.0.0.1:{port}/0")
    write_plan(tmp_path)
    res = runner.invoke(app, commands(tmp_path)[command])
    assert res.exit_code == 3, res.output
    assert f"redis://:***@127.0.0.1:{port}/0" in res.stderr and "wrong-pw" not in res.output


def test_no_answer_within_buddy_connect_timeout_s(silent_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDDY_CONNECT_TIMEOUT_S", "0.5")
    start = time.monotonic()
    res = runner.invoke(app, ["status", "--redis-url", silent_url])
    assert time.monotonic() - start < 2
    assert res.exit_code == 3 and "no answer within 0.5 s" in res.stderr


def test_a_bad_url_is_invalid_input() -> None:
    res = runner.invoke(app, ["agents", "--redis-url", "http://127.0.0.1:1/0"])
    assert res.exit_code == 2 and "bad Redis URL" in res.stderr and "Traceback" not in res.output


def test_the_right_password_passes_the_probe(locked_redis: EmbeddedRedis) -> None:
    res = runner.invoke(app, ["agents", "--redis-url", locked_redis.tcp_url])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["status", "c-missing", "--redis-url", locked_redis.url])
    assert res.exit_code == 2
    assert "no campaign 'c-missing' in Redis at unix://:***@" in " ".join(res.stderr.split())


def test_doctor_names_the_fix_in_its_redis_check(port: int) -> None:
    import json

    url = f"redis://127.0.0.1:{port}/0"
    res = runner.invoke(app, ["doctor", "--redis-url", url, "--json"])
    assert res.exit_code == 1, res.output
    checks = {c["name"]: c for c in map(json.loads, res.stdout.splitlines())}
    assert checks["redis"]["detail"].startswith(
        f"cannot reach Redis at {url}: this Redis requires a password"
    )
    assert "redis://:PASSWORD@" in checks["redis"]["fix"]
    assert checks["serializers"]["ok"]  # the checks that need no Redis still run
