"""Security defaults with real workers: pickle is refused, and a Redis password never leaks.

- A pickle-serialized ``buddy.execute_batch`` message pushed into ``buddy.agent.a1`` is
  refused by the worker (``ContentDisallowed`` in its log); nothing of it runs: no claim, no
  outcome, no file, and a payload that would run code on unpickling runs none. The same
  message as JSON does run (the control that proves the test would see it).
- A campaign against a password-protected Redis succeeds, and the password appears in none of
  the outputs, worker logs (JSON format), the campaign's messages and log records, its
  result, the CLI's ``status``/``agents``/``doctor`` output or the campaign state.
- With ``BUDDY_SIGNING_KEY`` (Celery's ``auth`` serializer) a signed campaign runs, and an
  unsigned message or one signed with an untrusted key is refused and runs nothing. That
  campaign runs as ``buddy run`` in a process of its own: signing sets Celery's serializers
  process-wide, which would leak into the other tests of this process.
- A campaign over TLS (``rediss://``) checks the server's certificate.

Campaigns run in-process (``buddy.Campaign``) unless said otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import buddy
from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.infra.transport import EXECUTE_TASK, make_celery, redis_client
from buddy.models import AgentSpec, TaskSpec
from buddy.state.keys import Keys
from buddy.state.store import Store
from tests.helpers import buddy as cli
from tests.helpers import free_port, private_redis, redis_server_path, start_redis, wait_for_workers
from tests.integration.test_campaign import assert_matches_files, text_console

pytestmark = pytest.mark.integration

REFUSED = "Refusing to deserialize untrusted content of type pickle"


def _worker_log(fleet: LocalFleet, agent: str = "a1") -> str:
    assert fleet.log_dir is not None
    return "".join(p.read_text(errors="replace") for p in sorted(fleet.log_dir.glob(f"worker-{agent}-*.log")))


def _wait(predicate: Callable[[], object], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _batch(cid: str, path: Path) -> dict[str, object]:
    return {
        "campaign_id": cid,
        "wave": 1,
        "agent_id": "a1",
        "items": [
            {
                "task_id": "write",
                "tool": "file.write",
                "args": {"path": str(path), "content": "ran\n"},
                "mode": "live",
            }
        ],
    }


class _RunsOnUnpickle:
    """Unpickling this calls ``Path.touch(marker)``: what a pickle-accepting worker would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[pathlib.Path]]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _campaign_keys(store: Store, cid: str) -> list[bytes]:
    return list(store.r.scan_iter(match=f"{Keys.campaign(cid)}*", count=1000))


def test_pickle_message_is_refused_and_nothing_runs(
    fleet_redis: EmbeddedRedis, fleet: LocalFleet, tmp_path: Path
) -> None:
    store = Store(redis_client(fleet_redis.url))
    sender = make_celery(fleet_redis.url)  # sending pickle needs nothing on the sender's side
    target, marker = tmp_path / "pickled.txt", tmp_path / "unpickled-marker"
    cid, cid_evil = f"pickle-{uuid.uuid4().hex[:8]}", f"pickle-evil-{uuid.uuid4().hex[:8]}"
    refused_before = _worker_log(fleet).count(REFUSED)

    # a well-formed batch that would write a file, and one whose unpickling would touch a file
    sender.send_task(EXECUTE_TASK, kwargs=_batch(cid, target), queue="buddy.agent.a1", serializer="pickle")
    evil = _batch(cid_evil, target) | {"carry": [[_RunsOnUnpickle(marker)]]}
    sender.send_task(EXECUTE_TASK, kwargs=evil, queue="buddy.agent.a1", serializer="pickle")

    _wait(
        lambda: _worker_log(fleet).count(REFUSED) >= refused_before + 2,
        what="the worker to refuse both messages",
    )
    assert "ContentDisallowed" in _worker_log(fleet)
    _wait(lambda: store.r.llen("buddy.agent.a1") == 0, what="the messages to leave the queue")
    time.sleep(1.0)  # give a (wrongly) accepted message time to run
    assert not target.exists(), "the pickled task ran its tool"
    assert not marker.exists(), "the worker unpickled the payload"
    for c in (cid, cid_evil):
        assert _campaign_keys(store, c) == [], "a claim, outcome or counter was written"
    assert store.r.hlen("unacked") == 0  # not parked for redelivery either

    # control: the same batch as JSON runs (so the checks above would have seen a run)
    json_target = tmp_path / "json.txt"
    cid2 = f"json-{uuid.uuid4().hex[:8]}"
    batch = _batch(cid2, json_target)
    store.create_campaign(cid2, {"status": "running"})  # what a coordinator records before it sends
    store.record_dispatch(
        cid2, 1, [TaskSpec.model_validate(i).model_dump(mode="json") for i in batch["items"]]
    )
    sender.send_task(EXECUTE_TASK, kwargs=batch, queue="buddy.agent.a1")
    _wait(lambda: store.outcomes(cid2).get("write") is not None, what="the JSON message's outcome")
    assert json_target.read_text() == "ran\n"
    assert store.outcomes(cid2)["write"].status.value == "succeeded"


# -- a password-protected Redis -------------------------------------------------------------


@pytest.fixture(scope="module")
def secret() -> str:
    return f"s3cr3t-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def auth_redis(secret: str) -> Iterator[EmbeddedRedis]:
    with private_redis(port=free_port(), password=secret) as server:
        yield server


@pytest.fixture(scope="module")
def auth_fleet(auth_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    fleet = LocalFleet(
        auth_redis.tcp_url,
        [AgentSpec(id="a1"), AgentSpec(id="a2")],
        env={"BUDDY_LOG_FORMAT": "json", "BUDDY_TOOLS": ""},
        log_dir=tmp_path_factory.mktemp("auth-worker-logs"),
    )
    fleet.start()
    try:
        wait_for_workers(auth_redis.tcp_url, ["a1", "a2"])
        yield fleet
    finally:
        fleet.stop()


def test_redis_refuses_clients_without_the_password(auth_redis: EmbeddedRedis) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=auth_redis.port, retry=Retry(NoBackoff(), 0)).ping()


def test_campaign_on_a_password_protected_redis_never_shows_the_password(
    auth_redis: EmbeddedRedis,
    auth_fleet: LocalFleet,
    secret: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = auth_redis.tcp_url
    assert secret in url
    rows = [
        {"task_id": "noop-1", "tool": "noop"},
        {"task_id": "hash", "tool": "file.sha256", "args": {"path": json.__file__}},
        {
            "task_id": "write",
            "tool": "file.write",
            "args": {"path": str(tmp_path / "w.txt"), "content": "x"},
            "confidence": 0.99,
        },
        {"task_id": "noop-2", "tool": "noop", "depends_on": ["hash", "write"]},
    ]
    out = tmp_path / "out"
    console, printed = text_console()
    caplog.set_level(logging.DEBUG)
    result = buddy.Campaign(
        rows, agents=["a1", "a2"], redis_url=url, out_dir=out, mode="live", worker_wait=30, console=console,
        progress=True,
    ).run()  # fmt: skip
    assert result.status == "succeeded" and result.exit_code == 0, printed.getvalue()
    assert_matches_files(result)
    assert (tmp_path / "w.txt").read_text() == "x"

    texts: dict[str, str] = {
        "campaign messages": printed.getvalue(),
        "campaign log records": "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records),
        "campaign result": result.model_dump_json(),
    }
    assert texts["campaign messages"].strip()
    for cmd in ("status", "agents"):
        r = cli(cmd, "--redis-url", url)
        assert r.returncode == 0, r.stderr
        texts[f"buddy {cmd}"] = r.stdout + r.stderr
    wrong = url.replace(secret, "not-the-password")
    r = cli("doctor", "--redis-url", wrong, "--json")  # fails fast (`status` retries for ~20 s)
    assert r.returncode == 1 and "redis://:***@" in r.stdout and "invalid username-password" in r.stdout
    texts["doctor with a wrong password"] = r.stdout + r.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        texts[str(p)] = p.read_text(errors="replace")
    assert auth_fleet.log_dir is not None
    logs = sorted(auth_fleet.log_dir.glob("*.log"))
    assert logs
    for p in logs:
        texts[str(p)] = p.read_text(errors="replace")
    cid = result.campaign_id
    assert json.loads((out / "campaign.json").read_text())["campaign_id"] == cid
    store = Store(redis_client(url))
    texts["campaign hash in Redis"] = json.dumps(store.campaign(cid))

    leaks = [name for name, text in texts.items() if secret in text]
    assert leaks == [], f"the Redis password appears in: {leaks}"
    assert ":***@" in json.loads((out / "campaign.json").read_text())["redis"]

    # the workers' logs are JSON lines with the campaign id on the lines of its tasks
    for p in logs:
        lines = [x for x in p.read_text().splitlines() if x.strip()]
        rows_ = [json.loads(x) for x in lines if x.startswith("{")]
        plain = [x for x in lines if not x.startswith("{")]
        assert all(x.startswith("worker: ") for x in plain), plain  # Celery's shutdown line only
        assert rows_ and all(
            {"ts", "level", "logger", "msg", "campaign_id", "task_id", "worker"} <= set(r) for r in rows_
        )
    task_lines = [
        json.loads(x)
        for p in logs
        for x in p.read_text().splitlines()
        # a batch's log line names it by its shadow name: "buddy wave 1 · a1 · 2 tasks[…] succeeded"
        if x.startswith("{") and "buddy wave " in x and "succeeded" in x
    ]
    assert task_lines and all(r["campaign_id"] == cid for r in task_lines), task_lines[:3]


def test_doctor_on_the_password_protected_redis_shows_no_password(
    auth_redis: EmbeddedRedis, auth_fleet: LocalFleet, secret: str
) -> None:
    r = cli("doctor", "--redis-url", auth_redis.tcp_url, "--agents", "a1,a2", "--json")
    assert secret not in r.stdout + r.stderr
    checks = {c["name"]: c for c in map(json.loads, r.stdout.splitlines())}
    assert checks["redis"]["ok"] and ":***@" in checks["redis"]["detail"]
    assert checks["workers"]["ok"], checks["workers"]
    assert checks["clock-skew"]["ok"], checks["clock-skew"]
    assert not checks["persistence"]["ok"]  # the embedded Redis runs without AOF
    assert r.returncode == 1


# -- message signing (BUDDY_SIGNING_KEY) ----------------------------------------------------


def _key_and_cert(path: Path, name: str) -> Path:
    """An RSA key and a self-signed certificate for it, in one PEM file (what BUDDY_SIGNING_KEY names)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + cert.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(pem)
    path.chmod(0o600)
    return path


SEND = """
import json, sys
from buddy.infra.transport import EXECUTE_TASK, make_celery
app = make_celery()
assert app.conf.task_serializer == "auth", app.conf.task_serializer
app.send_task(EXECUTE_TASK, kwargs=json.loads(sys.argv[1]), queue="buddy.agent.a1")
"""


def test_signed_fleet_runs_signed_campaigns_and_refuses_unsigned_or_foreign_messages(tmp_path: Path) -> None:
    key = _key_and_cert(tmp_path / "fleet.pem", "buddy-fleet")
    foreign = _key_and_cert(tmp_path / "foreign.pem", "someone-else")
    server = start_redis()
    url = server.url
    fleet = LocalFleet(
        url, [AgentSpec(id="a1")], env={"BUDDY_SIGNING_KEY": str(key)}, log_dir=tmp_path / "logs"
    )
    try:
        fleet.start()
        wait_for_workers(url, ["a1"])
        plan = tmp_path / "plan.jsonl"
        task = {"task_id": "w", "tool": "file.write", "confidence": 0.99}
        task["args"] = {"path": str(tmp_path / "signed.txt"), "content": "s"}
        plan.write_text(json.dumps(task) + "\n")
        res = cli(
            "run", str(plan), "--agents", "a1", "--redis-url", url, "--out", str(tmp_path / "out"),
            "--mode", "live", "--no-progress", env={"BUDDY_SIGNING_KEY": str(key)},
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert (tmp_path / "signed.txt").read_text() == "s"

        # an unsigned JSON message (what a fleet without signing sends)
        unsigned = make_celery(url)
        assert unsigned.conf.task_serializer == "json"
        cid1 = f"unsigned-{uuid.uuid4().hex[:8]}"
        unsigned.send_task(
            EXECUTE_TASK, kwargs=_batch(cid1, tmp_path / "unsigned.txt"), queue="buddy.agent.a1"
        )
        # a message signed with a key whose certificate the fleet does not trust
        cid2 = f"foreign-{uuid.uuid4().hex[:8]}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
        env.update(BUDDY_SIGNING_KEY=str(foreign), BUDDY_REDIS_URL=url)
        argv = [sys.executable, "-c", SEND, json.dumps(_batch(cid2, tmp_path / "foreign.txt"))]
        sent = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr

        def log() -> str:
            return "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").glob("*.log"))

        store = Store(redis_client(url))
        _wait(
            lambda: "Refusing to deserialize untrusted content of type json" in log(), what="unsigned refused"
        )
        _wait(lambda: "Unknown certificate" in log(), what="the foreign signature to be refused")
        _wait(lambda: store.r.llen("buddy.agent.a1") == 0, what="the messages to leave the queue")
        time.sleep(1.0)  # give a (wrongly) accepted message time to run
        assert not (tmp_path / "unsigned.txt").exists()
        assert not (tmp_path / "foreign.txt").exists()
        for c in (cid1, cid2):
            assert _campaign_keys(store, c) == []
    finally:
        fleet.stop()
        server.stop()


# -- TLS (rediss://) with certificate checks ------------------------------------------------


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "buddy-test-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = (d / "ca.pem", d / "server.pem", d / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


@dataclass
class TlsRedis:
    port: int
    password: str
    ca: Path

    def url(self, ca: bool = True) -> str:
        query = f"?ssl_ca_certs={self.ca}" if ca else ""
        return f"rediss://:{self.password}@127.0.0.1:{self.port}/0{query}"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    import redis

    d = tmp_path_factory.mktemp("tls-redis")
    ca, cert, key = _tls_files(d)
    exe = redis_server_path()
    tls = TlsRedis(port=free_port(), password=f"tls-{secrets.token_hex(8)}", ca=ca)
    argv = [
        exe, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(tls.port),
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--requirepass", tls.password, "--dir", str(d), "--save", "",
        "--appendonly", "no", "--logfile", str(d / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                log = (d / "redis.log").read_text(errors="replace") if (d / "redis.log").exists() else ""
                pytest.skip(f"{exe} cannot serve TLS (built without it?): {log[-300:]}")
            try:
                if redis.Redis.from_url(tls.url()).ping():
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the TLS Redis did not answer"
            time.sleep(0.1)
        yield tls
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_campaign_over_tls_checks_the_certificate(tls_redis: TlsRedis, tmp_path: Path) -> None:
    import ssl

    url = tls_redis.url()
    app = make_celery(url)
    assert app.conf.broker_use_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert app.conf.redis_backend_use_ssl["ssl_ca_certs"] == str(tls_redis.ca)
    fleet = LocalFleet(url, [AgentSpec(id="a1")], env={"BUDDY_TOOLS": ""}, log_dir=tmp_path / "logs")
    try:
        fleet.start()
        wait_for_workers(url, ["a1"])
        console, printed = text_console()
        result = buddy.Campaign(
            [{"task_id": "n", "tool": "noop"}], agents=["a1"], redis_url=url, out_dir=tmp_path / "out",
            console=console,
        ).run()  # fmt: skip
        assert result.status == "succeeded" and result.exit_code == 0, printed.getvalue()
        assert result.outcomes["n"].status is buddy.TaskStatus.SUCCEEDED
        # the same server without the private CA: the campaign refuses it before anything runs
        with pytest.raises(buddy.InfrastructureError, match="CERTIFICATE_VERIFY_FAILED"):
            buddy.Campaign(
                [{"task_id": "n", "tool": "noop"}], agents=["a1"], redis_url=tls_redis.url(ca=False),
                out_dir=tmp_path / "refused", console=console,
            ).run()  # fmt: skip
    finally:
        fleet.stop()
    # ... and so does buddy doctor
    r = cli("doctor", "--redis-url", tls_redis.url(ca=False), "--json")
    [check] = [json.loads(x) for x in r.stdout.splitlines() if '"redis"' in x]
    assert not check["ok"] and "CERTIFICATE_VERIFY_FAILED" in check["detail"]
    assert tls_redis.password not in r.stdout + printed.getvalue()


# -- buddy.security without servers --------------------------------------------------------


def test_tls_settings_check_certificates_unless_told_otherwise() -> None:
    import ssl

    from buddy.errors import ConfigError
    from buddy.infra.security import tls_settings

    assert tls_settings("redis://:pw@h:6379/0") == {}
    assert tls_settings("unix:///tmp/r.sock") == {}
    default = tls_settings("rediss://:pw@h:6380/0")
    assert default == {
        "broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED},
        "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED},
    }
    full = tls_settings("rediss://h/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem")
    assert full["broker_use_ssl"] == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem", "ssl_keyfile": "/k.pem",
    }  # fmt: skip
    assert tls_settings("rediss://h/0?ssl_cert_reqs=none")["broker_use_ssl"]["ssl_cert_reqs"] == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        tls_settings("rediss://h/0?ssl_cert_reqs=maybe")


def test_signing_material(tmp_path: Path) -> None:
    from buddy.errors import ConfigError
    from buddy.infra.security import signing_files

    combined = _key_and_cert(tmp_path / "k.pem", "k")
    files = signing_files(str(combined))
    assert files.key == files.cert == files.cert_store == str(combined)
    # PEM text instead of a path: written to a private file
    from_text = signing_files(combined.read_text())
    assert Path(from_text.key).read_text().strip() == combined.read_text().strip()
    assert Path(from_text.key).stat().st_mode & 0o777 == 0o600
    key_only = tmp_path / "key-only.pem"
    key_only.write_text(combined.read_text().split("-----BEGIN CERTIFICATE-----")[0])
    with pytest.raises(ConfigError, match="BUDDY_SIGNING_CERT"):
        signing_files(str(key_only))
    with pytest.raises(ConfigError, match="neither a file nor PEM"):
        signing_files(str(tmp_path / "missing.pem"))
