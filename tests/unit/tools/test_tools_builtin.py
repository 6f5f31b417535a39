"""The built-in tools: live behaviour, mock and dry_run without side effects, argument checks."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from buddy.config import get_settings
from buddy.errors import RetryableToolError, ToolDeniedError, ToolError, ToolTimeoutError
from buddy.models import ResourceClaim, Risk
from buddy.tools import ToolContext, ToolContract, default_registry
from buddy.tools.builtin import BUILTIN_TOOLS


def tool(name: str) -> ToolContract:
    return default_registry().get(name)


def make_ctx(workdir: Path, **kw: Any) -> ToolContext:
    return ToolContext(campaign_id="c1", task_id="t1", workdir=workdir, **kw)


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for directories)."""
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = None if p.is_dir() else p.read_bytes()
    return out


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return make_ctx(tmp_path)


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set BUDDY_SHELL_ALLOW / BUDDY_PYTHON_ALLOW for one test: ``allow(shell=[...], python=[...])``."""

    def set_allow(shell: list[str] | None = None, python: list[str] | None = None) -> None:
        monkeypatch.setenv("BUDDY_SHELL_ALLOW", ",".join(shell or []))
        monkeypatch.setenv("BUDDY_PYTHON_ALLOW", ",".join(python or []))
        get_settings.cache_clear()

    set_allow()
    yield set_allow
    get_settings.cache_clear()


# -- registry and contracts ----------------------------------------------------------------


def test_every_builtin_is_registered_with_mock_and_dry_run() -> None:
    reg = default_registry()
    for name in BUILTIN_TOOLS:
        c = reg.get(name)
        assert c.mock is not None, name
        assert c.dry_run is not None, name
        assert c.args_model.model_config.get("extra") == "forbid", name


@pytest.mark.parametrize(
    ("name", "risk", "reversible", "idempotent"),
    [
        ("noop", Risk.LOW, False, True),
        ("sleep", Risk.LOW, False, True),
        ("flaky", Risk.LOW, False, True),
        ("file.sha256", Risk.LOW, False, True),
        ("file.write", Risk.MEDIUM, True, True),
        ("file.append", Risk.MEDIUM, False, False),
        ("file.delete", Risk.HIGH, False, True),
        ("shell", Risk.HIGH, False, False),
        ("http.request", Risk.MEDIUM, False, False),
        ("python.call", Risk.MEDIUM, False, False),
    ],
)
def test_contract_classification(name: str, risk: Risk, reversible: bool, idempotent: bool) -> None:
    c = tool(name)
    assert (c.risk, c.reversible, c.idempotent) == (risk, reversible, idempotent)


def test_timeouts_and_retry_defaults() -> None:
    assert tool("shell").timeout_s == 60
    assert tool("http.request").timeout_s == 30
    assert tool("sleep").timeout_s > 3600
    policy = tool("http.request").retry
    assert (policy.max_attempts, policy.backoff, policy.initial_s, policy.max_s) == (
        3,
        "exponential",
        0.5,
        30,
    )
    assert [policy.delay_s(n) for n in (1, 2, 3, 8)] == [0.5, 1.0, 2.0, 30.0]


# -- noop, sleep, flaky --------------------------------------------------------------------


def test_noop(ctx: ToolContext) -> None:
    c = tool("noop")
    args = c.parse_args({})
    assert c.execute(args, ctx) == {}
    assert c.mock_result(args) == {}
    with pytest.raises(ValidationError):
        c.parse_args({"x": 1})


def test_sleep_waits_and_reports(ctx: ToolContext) -> None:
    c = tool("sleep")
    args = c.parse_args({"seconds": 0.05})
    t0 = time.monotonic()
    out = c.execute(args, ctx)
    assert time.monotonic() - t0 >= 0.05
    assert out["slept_s"] >= 0.05
    assert c.expected_duration_s(args) == 0.05


def test_sleep_stops_at_deadline(tmp_path: Path) -> None:
    c = tool("sleep")
    ctx = make_ctx(tmp_path, deadline=time.monotonic() + 0.1)
    t0 = time.monotonic()
    with pytest.raises(ToolTimeoutError):
        c.execute(c.parse_args({"seconds": 30}), ctx)
    assert time.monotonic() - t0 < 5


def test_sleep_mock_does_not_wait() -> None:
    c = tool("sleep")
    t0 = time.monotonic()
    assert c.mock_result(c.parse_args({"seconds": 3600})) == {"slept_s": 3600.0}
    assert time.monotonic() - t0 < 1


@pytest.mark.parametrize("bad", [{"seconds": -1}, {"seconds": 3601}, {}, {"seconds": 1, "extra": 2}])
def test_sleep_rejects_bad_args(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        tool("sleep").parse_args(bad)


def test_flaky_fails_then_succeeds(tmp_path: Path) -> None:
    c = tool("flaky")
    args = c.parse_args({"fail_first": 2})
    for attempt in (1, 2):
        with pytest.raises(RetryableToolError) as ei:
            c.execute(args, make_ctx(tmp_path, attempt=attempt))
        assert ei.value.error_type == "FlakyError"
        assert ei.value.retryable
        assert c.retry.should_retry(attempt, ei.value.error_type, ei.value.retryable)
    assert c.execute(args, make_ctx(tmp_path, attempt=3)) == {"attempts": 3}
    assert c.mock_result(args) == {"attempts": 3}


def test_flaky_rejects_negative() -> None:
    with pytest.raises(ValidationError):
        tool("flaky").parse_args({"fail_first": -1})


# -- file.sha256 ---------------------------------------------------------------------------


def test_sha256_matches_hashlib_on_stdlib_file(ctx: ToolContext) -> None:
    path = Path(json.__file__)
    data = path.read_bytes()
    c = tool("file.sha256")
    out = c.execute(c.parse_args({"path": str(path)}), ctx)
    assert out == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_sha256_relative_path_and_claim(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    c = tool("file.sha256")
    args = c.parse_args({"path": "a.txt"})
    assert c.execute(args, ctx)["sha256"] == hashlib.sha256(b"abc").hexdigest()
    assert c.claims(args, tmp_path) == [
        ResourceClaim(name=f"file:{(tmp_path / 'a.txt').resolve()}", mode="read")
    ]


def test_sha256_missing_file_is_tool_error(ctx: ToolContext) -> None:
    c = tool("file.sha256")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"path": "nope.txt"}), ctx)
    assert ei.value.error_type == "FileNotFoundError"
    assert not ei.value.retryable


def test_sha256_mock_and_dry_run(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "a.txt").write_bytes(b"abc")
    c = tool("file.sha256")
    args = c.parse_args({"path": "a.txt"})
    mocked = c.mock_result(args)
    assert mocked["bytes"] == 0
    assert mocked["sha256"] != hashlib.sha256(b"abc").hexdigest()
    assert c.preview(args, ctx) == {"path": str(tmp_path / "a.txt"), "exists": True}
    assert c.preview(c.parse_args({"path": "b.txt"}), ctx)["exists"] is False


# -- file.write ----------------------------------------------------------------------------


def test_write_creates_then_rollback_removes(tmp_path: Path, ctx: ToolContext) -> None:
    c = tool("file.write")
    args = c.parse_args({"path": "new.txt", "content": "héllo\n"})
    out = c.execute(args, ctx)
    target = tmp_path / "new.txt"
    assert out == {"bytes": len("héllo\n".encode()), "created": True}
    assert target.read_bytes() == "héllo\n".encode()
    assert ctx.undo is not None and ctx.undo["existed"] is False
    json.dumps(ctx.undo)  # JSON-able
    assert c.rollback is not None
    c.rollback(args, ctx.undo, ctx)
    assert not target.exists()
    assert snapshot(tmp_path) == {}  # no temp file left behind


def test_write_overwrites_then_rollback_restores_exact_bytes(tmp_path: Path, ctx: ToolContext) -> None:
    target = tmp_path / "cfg.bin"
    old = b"\x00\xffold bytes\r\nnot utf-8 \xc3\x28"
    target.write_bytes(old)
    os.chmod(target, 0o640)
    c = tool("file.write")
    args = c.parse_args({"path": str(target), "content": "new"})
    assert c.execute(args, ctx) == {"bytes": 3, "created": False}
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert ctx.undo is not None
    assert base64.b64decode(ctx.undo["content_b64"]) == old
    undo = json.loads(json.dumps(ctx.undo))  # survives a trip through Redis
    assert c.rollback is not None
    c.rollback(args, undo, ctx)
    assert target.read_bytes() == old
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["cfg.bin"]


def test_write_rollback_after_crash_cleans_temp_file(tmp_path: Path, ctx: ToolContext) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old")
    c = tool("file.write")
    args = c.parse_args({"path": "f.txt", "content": "new"})
    c.execute(args, ctx)
    (tmp_path / ".f.txt.abc123.buddy-tmp").write_bytes(b"half")  # what a dead worker leaves
    (tmp_path / ".other.txt.abc123.buddy-tmp").write_bytes(b"not ours")
    assert ctx.undo is not None and c.rollback is not None
    c.rollback(args, ctx.undo, ctx)
    assert sorted(os.listdir(tmp_path)) == [".other.txt.abc123.buddy-tmp", "f.txt"]
    assert target.read_bytes() == b"old"


def test_write_rollback_with_empty_undo_is_noop(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "f.txt").write_bytes(b"keep")
    c = tool("file.write")
    assert c.rollback is not None
    c.rollback(c.parse_args({"path": "f.txt", "content": "x"}), {}, ctx)
    assert (tmp_path / "f.txt").read_bytes() == b"keep"


def test_write_is_idempotent(tmp_path: Path, ctx: ToolContext) -> None:
    c = tool("file.write")
    args = c.parse_args({"path": "x.txt", "content": "same"})
    c.execute(args, ctx)
    assert c.execute(args, ctx) == {"bytes": 4, "created": False}
    assert (tmp_path / "x.txt").read_text() == "same"


def test_write_missing_parent_is_tool_error(tmp_path: Path, ctx: ToolContext) -> None:
    c = tool("file.write")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"path": "no/such/dir/x.txt", "content": "x"}), ctx)
    assert ei.value.error_type == "ParentNotFound"
    assert not (tmp_path / "no").exists()
    assert ctx.undo is None


def test_write_claim_is_write(tmp_path: Path) -> None:
    c = tool("file.write")
    args = c.parse_args({"path": "x.txt", "content": ""})
    assert c.claims(args, tmp_path) == [
        ResourceClaim(name=f"file:{(tmp_path / 'x.txt').resolve()}", mode="write")
    ]


def test_write_dry_run_shows_diff_and_changes_nothing(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "f.txt").write_text("one\ntwo\n")
    before = snapshot(tmp_path)
    c = tool("file.write")
    preview = c.preview(c.parse_args({"path": "f.txt", "content": "one\nTWO\n"}), ctx)
    assert preview["would_create"] is False
    assert preview["changed"] is True
    assert "-two\n" in preview["diff"]
    assert "+TWO\n" in preview["diff"]
    created = c.preview(c.parse_args({"path": "g.txt", "content": "hi\n"}), ctx)
    assert created["would_create"] is True
    assert "+hi\n" in created["diff"]
    assert snapshot(tmp_path) == before
    assert ctx.undo is None


def test_write_rejects_unknown_arg() -> None:
    with pytest.raises(ValidationError):
        tool("file.write").parse_args({"path": "x", "content": "y", "mode": "0644"})


# -- file.append ---------------------------------------------------------------------------


def test_append_adds_exactly_one_line(tmp_path: Path, ctx: ToolContext) -> None:
    target = tmp_path / "log.txt"
    target.write_bytes(b"first\n")
    c = tool("file.append")
    out = c.execute(c.parse_args({"path": "log.txt", "line": "second"}), ctx)
    assert target.read_bytes() == b"first\nsecond\n"
    assert out == {"bytes": len(b"first\nsecond\n")}


def test_append_creates_missing_file(tmp_path: Path, ctx: ToolContext) -> None:
    c = tool("file.append")
    out = c.execute(c.parse_args({"path": "fresh.txt", "line": "x"}), ctx)
    assert (tmp_path / "fresh.txt").read_bytes() == b"x\n"
    assert out == {"bytes": 2}


@pytest.mark.parametrize("line", ["a\nb", "a\r", "\n"])
def test_append_rejects_line_breaks(line: str) -> None:
    with pytest.raises(ValidationError):
        tool("file.append").parse_args({"path": "x", "line": line})


def test_append_dry_run(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "log.txt").write_bytes(b"abc\n")
    before = snapshot(tmp_path)
    c = tool("file.append")
    preview = c.preview(c.parse_args({"path": "log.txt", "line": "more"}), ctx)
    assert preview["line"] == "more"
    assert preview["would_append"] == "more\n"
    assert preview["bytes_after"] == 9
    assert snapshot(tmp_path) == before


# -- file.delete ---------------------------------------------------------------------------


def test_delete_removes_and_is_idempotent(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "gone.txt").write_bytes(b"x")
    c = tool("file.delete")
    args = c.parse_args({"path": "gone.txt"})
    assert c.execute(args, ctx) == {"deleted": True}
    assert not (tmp_path / "gone.txt").exists()
    assert c.execute(args, ctx) == {"deleted": False}


def test_delete_refuses_directory(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "d").mkdir()
    c = tool("file.delete")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"path": "d"}), ctx)
    assert ei.value.error_type == "IsADirectoryError"
    assert (tmp_path / "d").is_dir()


def test_delete_dry_run(tmp_path: Path, ctx: ToolContext) -> None:
    (tmp_path / "f.txt").write_bytes(b"12345")
    before = snapshot(tmp_path)
    c = tool("file.delete")
    preview = c.preview(c.parse_args({"path": "f.txt"}), ctx)
    assert preview == {
        "path": str(tmp_path / "f.txt"),
        "exists": True,
        "size": 5,
        "would_delete": True,
        "is_directory": False,
    }
    assert c.preview(c.parse_args({"path": "none"}), ctx)["exists"] is False
    assert snapshot(tmp_path) == before


# -- mock mode touches no file -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("file.sha256", {"path": "keep.txt"}),
        ("file.write", {"path": "keep.txt", "content": "clobbered"}),
        ("file.write", {"path": "new.txt", "content": "x"}),
        ("file.append", {"path": "keep.txt", "line": "more"}),
        ("file.delete", {"path": "keep.txt"}),
    ],
)
def test_file_mocks_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, args: dict[str, Any]
) -> None:
    (tmp_path / "keep.txt").write_bytes(b"original\n")
    monkeypatch.chdir(tmp_path)  # relative paths would land here if a mock touched disk
    before = snapshot(tmp_path)
    c = tool(name)
    result = c.mock_result(c.parse_args(args))
    assert c.result_model.model_validate(result)
    assert snapshot(tmp_path) == before


# -- shell ---------------------------------------------------------------------------------


def test_shell_runs_allowed_program(ctx: ToolContext, allow: Any) -> None:
    allow(shell=[sys.executable])
    c = tool("shell")
    args = c.parse_args(
        {"argv": [sys.executable, "-c", "import sys; print('hi'); print('e', file=sys.stderr)"]}
    )
    assert c.execute(args, ctx) == {"returncode": 0, "stdout": "hi\n", "stderr": "e\n"}


def test_shell_uses_cwd(tmp_path: Path, ctx: ToolContext, allow: Any) -> None:
    allow(shell=[sys.executable])
    (tmp_path / "sub").mkdir()
    c = tool("shell")
    args = c.parse_args({"argv": [sys.executable, "-c", "import os; print(os.getcwd())"], "cwd": "sub"})
    out = c.execute(args, ctx)
    assert Path(out["stdout"].strip()).resolve() == (tmp_path / "sub").resolve()


def test_shell_allow_list_matching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from buddy.tools.builtin.shell import is_allowed

    for d in ("bin", "x"):
        (tmp_path / d).mkdir()
        for name in ("python3", "python"):
            (tmp_path / d / name).write_text("#!/bin/sh\n")
            (tmp_path / d / name).chmod(0o755)
    allowed, other = str(tmp_path / "bin" / "python3"), str(tmp_path / "x" / "python3")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert is_allowed("python3", ["python3"])
    assert is_allowed("python3", [allowed])  # a bare name that PATH resolves to the allowed file
    assert is_allowed(allowed, [allowed])
    assert not is_allowed(other, ["python3"])  # same basename, another file
    assert not is_allowed(other, [allowed])
    assert not is_allowed("python", ["python3"])
    monkeypatch.setenv("PATH", str(tmp_path / "x"))
    assert not is_allowed("python3", [allowed])  # the basename matches, the file does not


def test_shell_denies_unlisted_program(tmp_path: Path, ctx: ToolContext, allow: Any) -> None:
    allow(shell=["echo"])
    c = tool("shell")
    marker = tmp_path / "ran"
    args = c.parse_args({"argv": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]})
    with pytest.raises(ToolDeniedError):
        c.execute(args, ctx)
    assert not marker.exists()


def test_shell_denies_everything_by_default(ctx: ToolContext, allow: Any) -> None:
    c = tool("shell")
    with pytest.raises(ToolDeniedError):
        c.execute(c.parse_args({"argv": ["true"]}), ctx)


def test_shell_nonzero_exit(ctx: ToolContext, allow: Any) -> None:
    allow(shell=[sys.executable])
    c = tool("shell")
    args = c.parse_args({"argv": [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]})
    with pytest.raises(ToolError) as ei:
        c.execute(args, ctx)
    assert ei.value.error_type == "NonZeroExit"
    assert not ei.value.retryable
    assert "3" in str(ei.value) and "boom" in str(ei.value)


def test_shell_timeout_kills_process_group(tmp_path: Path, ctx: ToolContext, allow: Any) -> None:
    allow(shell=[sys.executable])
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    c = tool("shell")
    args = c.parse_args({"argv": [sys.executable, "-c", script], "timeout_s": 1.0})
    t0 = time.monotonic()
    with pytest.raises(ToolTimeoutError):
        c.execute(args, ctx)
    assert time.monotonic() - t0 < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            break  # gone
        if state in ("Z", "X"):
            break  # killed, waiting to be reaped
        time.sleep(0.05)
    else:
        pytest.fail("the grandchild survived the timeout")


def test_shell_deadline_is_timeout(tmp_path: Path, allow: Any) -> None:
    allow(shell=[sys.executable])
    c = tool("shell")
    ctx = make_ctx(tmp_path, deadline=time.monotonic() + 0.5)
    with pytest.raises(ToolTimeoutError):
        c.execute(c.parse_args({"argv": [sys.executable, "-c", "import time; time.sleep(30)"]}), ctx)


def test_shell_truncates_output(ctx: ToolContext, allow: Any) -> None:
    allow(shell=[sys.executable])
    c = tool("shell")
    out = c.execute(c.parse_args({"argv": [sys.executable, "-c", "print('x' * 200000)"]}), ctx)
    assert len(out["stdout"].encode()) == 64 * 1024


def test_shell_mock_and_dry_run_run_nothing(tmp_path: Path, ctx: ToolContext, allow: Any) -> None:
    allow(shell=[sys.executable])
    marker = tmp_path / "ran"
    c = tool("shell")
    args = c.parse_args({"argv": [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]})
    assert c.mock_result(args) == {"returncode": 0, "stdout": "", "stderr": ""}
    preview = c.preview(args, ctx)
    assert not marker.exists()
    assert preview["allowed"] is True
    assert preview["cwd"] == str(tmp_path)
    assert preview["command"].startswith(sys.executable + " -c ")
    allow(shell=[])
    assert c.preview(args, ctx)["allowed"] is False


@pytest.mark.parametrize(
    "bad",
    [{"argv": []}, {"argv": [""]}, {"argv": ["ls"], "timeout_s": 0}, {"argv": ["ls"], "shell": True}, {}],
)
def test_shell_rejects_bad_args(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        tool("shell").parse_args(bad)


# -- http.request --------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _LoggingServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.log.append(
            {"method": self.command, "path": self.path, "body": body, "headers": dict(self.headers)}
        )
        if self.path == "/slow":
            time.sleep(2)
        status = {"/missing": 404, "/boom": 500}.get(self.path, 200)
        payload = b"hello" if self.path == "/ok" else body or b"status %d" % status
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Test", "yes")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _LoggingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.log: list[dict[str, Any]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out on /slow closes early: not a test failure


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    srv = _LoggingServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", srv.log
    finally:
        srv.shutdown()
        srv.server_close()


def test_http_get_200(server: tuple[str, list[dict[str, Any]]], ctx: ToolContext) -> None:
    base, log = server
    c = tool("http.request")
    out = c.execute(c.parse_args({"url": f"{base}/ok", "headers": {"X-Req": "1"}}), ctx)
    assert out["status"] == 200
    assert out["body"] == "hello"
    assert out["headers"]["x-test"] == "yes"
    assert out["elapsed_ms"] >= 0
    assert [(e["method"], e["path"]) for e in log] == [("GET", "/ok")]
    assert log[0]["headers"]["X-Req"] == "1"


def test_http_404_is_not_retryable(server: tuple[str, list[dict[str, Any]]], ctx: ToolContext) -> None:
    base, _ = server
    c = tool("http.request")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"url": f"{base}/missing"}), ctx)
    assert ei.value.error_type == "HTTP4xx"
    assert not ei.value.retryable
    assert not isinstance(ei.value, RetryableToolError)


def test_http_500_is_retryable(server: tuple[str, list[dict[str, Any]]], ctx: ToolContext) -> None:
    base, _ = server
    c = tool("http.request")
    with pytest.raises(RetryableToolError) as ei:
        c.execute(c.parse_args({"url": f"{base}/boom"}), ctx)
    assert ei.value.error_type == "HTTP5xx"
    assert c.retry.should_retry(1, ei.value.error_type, ei.value.retryable)


def test_http_post_json_reaches_server(server: tuple[str, list[dict[str, Any]]], ctx: ToolContext) -> None:
    base, log = server
    c = tool("http.request")
    out = c.execute(c.parse_args({"method": "POST", "url": f"{base}/echo", "json": {"a": [1, 2]}}), ctx)
    assert out["status"] == 200
    assert len(log) == 1
    assert log[0]["method"] == "POST"
    assert json.loads(log[0]["body"]) == {"a": [1, 2]}
    assert log[0]["headers"]["Content-Type"] == "application/json"
    assert json.loads(out["body"]) == {"a": [1, 2]}


def test_http_text_body_and_head(server: tuple[str, list[dict[str, Any]]], ctx: ToolContext) -> None:
    base, log = server
    c = tool("http.request")
    c.execute(c.parse_args({"method": "PUT", "url": f"{base}/x", "body": "plain text"}), ctx)
    assert log[-1]["body"] == b"plain text"
    out = c.execute(c.parse_args({"method": "HEAD", "url": f"{base}/ok"}), ctx)
    assert out["status"] == 200 and out["body"] == ""


def test_http_connection_refused_is_retryable(ctx: ToolContext) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = tool("http.request")
    with pytest.raises(RetryableToolError) as ei:
        c.execute(c.parse_args({"url": f"http://127.0.0.1:{port}/"}), ctx)
    assert ei.value.error_type == "ConnectError"


def test_http_timeout_is_retryable(server: tuple[str, list[dict[str, Any]]], ctx: ToolContext) -> None:
    base, _ = server
    c = tool("http.request")
    with pytest.raises(RetryableToolError) as ei:
        c.execute(c.parse_args({"url": f"{base}/slow", "timeout_s": 0.3}), ctx)
    assert ei.value.error_type == "Timeout"


def test_http_classification_and_claims(tmp_path: Path) -> None:
    c = tool("http.request")
    get = c.parse_args({"url": "https://Example.com/a?b=1"})
    post = c.parse_args({"method": "POST", "url": "http://example.com:8080/a"})
    assert (c.risk_for(get), c.is_idempotent(get)) == (Risk.LOW, True)
    assert (c.risk_for(post), c.is_idempotent(post)) == (Risk.MEDIUM, False)
    assert c.claims(get, tmp_path) == [ResourceClaim(name="http:https://example.com:443", mode="read")]
    assert c.claims(post, tmp_path) == [ResourceClaim(name="http:http://example.com:8080", mode="write")]


def test_http_mock_and_dry_run_send_nothing(
    server: tuple[str, list[dict[str, Any]]], ctx: ToolContext
) -> None:
    base, log = server
    c = tool("http.request")
    args = c.parse_args(
        {"method": "POST", "url": f"{base}/echo", "json": {"k": "v"}, "headers": {"X-A": "b"}}
    )
    assert c.mock_result(args)["status"] == 200
    preview = c.preview(args, ctx)
    assert preview["method"] == "POST"
    assert preview["url"] == f"{base}/echo"
    assert preview["json"] == {"k": "v"}
    assert json.loads(preview["body"]) == {"k": "v"}
    assert preview["headers"]["x-a"] == "b"
    json.dumps(preview)
    time.sleep(0.1)
    assert log == []


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "ftp://example.com/"},
        {"url": "not a url"},
        {"url": "http://x/", "method": "TRACE"},
        {"url": "http://x/", "timeout_s": -1},
        {"url": "http://x/", "json": {}, "body": "x"},
        {"url": "http://x/", "data": "x"},
        {"url": "http://x/", "headers": {"X-A": "é"}},
        {"url": "http://x/", "headers": {"X-A": "a\r\nInjected: 1"}},
        {"url": "http://x/", "headers": {"Bad Name": "a"}},
    ],
)
def test_http_rejects_bad_args(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        tool("http.request").parse_args(bad)


# -- python.call ---------------------------------------------------------------------------


def test_python_call_allowed(ctx: ToolContext, allow: Any) -> None:
    allow(python=["json"])
    c = tool("python.call")
    args = c.parse_args({"target": "json:dumps", "kwargs": {"obj": {"b": 1, "a": [1]}, "sort_keys": True}})
    assert c.execute(args, ctx) == {"result": '{"a": [1], "b": 1}'}


def test_python_call_submodule_of_allowed_prefix(ctx: ToolContext, allow: Any) -> None:
    allow(python=["os"])
    c = tool("python.call")
    out = c.execute(c.parse_args({"target": "os.path:join", "kwargs": {"a": "x"}}), ctx)
    assert out == {"result": "x"}


@pytest.mark.parametrize("target", ["os:getcwd", "json_evil:run", "jsonschema:validate"])
def test_python_call_denied(ctx: ToolContext, allow: Any, target: str) -> None:
    allow(python=["json"])
    c = tool("python.call")
    modules_before = set(sys.modules)
    with pytest.raises(ToolDeniedError):
        c.execute(c.parse_args({"target": target}), ctx)
    assert target.split(":")[0] not in set(sys.modules) - modules_before


def test_python_call_exception_type_is_error_type(ctx: ToolContext, allow: Any) -> None:
    allow(python=["json"])
    c = tool("python.call")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"target": "json:loads", "kwargs": {"s": "{bad"}}), ctx)
    assert ei.value.error_type == "JSONDecodeError"
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"target": "json:dumps", "kwargs": {"nope": 1}}), ctx)
    assert ei.value.error_type == "TypeError"


def test_python_call_result_must_be_json(ctx: ToolContext, allow: Any) -> None:
    allow(python=["uuid"])
    c = tool("python.call")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"target": "uuid:uuid4"}), ctx)
    assert ei.value.error_type == "ResultNotJSON"


def test_python_call_missing_function(ctx: ToolContext, allow: Any) -> None:
    allow(python=["json"])
    c = tool("python.call")
    with pytest.raises(ToolError) as ei:
        c.execute(c.parse_args({"target": "json:no_such_function"}), ctx)
    assert ei.value.error_type == "AttributeError"


def test_python_call_mock_and_dry_run_call_nothing(ctx: ToolContext, allow: Any) -> None:
    allow(python=["json"])
    c = tool("python.call")
    args = c.parse_args({"target": "this_module_does_not_exist:f", "kwargs": {"x": 1}})
    assert c.mock_result(args) == {"result": None}
    assert c.preview(args, ctx) == {
        "target": "this_module_does_not_exist:f",
        "module": "this_module_does_not_exist",
        "function": "f",
        "kwargs": {"x": 1},
        "allowed": False,
    }
    assert c.preview(c.parse_args({"target": "json.decoder:JSONDecoder"}), ctx)["allowed"] is True


@pytest.mark.parametrize(
    "bad",
    [{"target": "json"}, {"target": "json:"}, {"target": "a b:c"}, {"target": "json:dumps", "args": []}],
)
def test_python_call_rejects_bad_args(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        tool("python.call").parse_args(bad)


def test_decorator_registers_into_an_empty_private_registry() -> None:
    from pydantic import BaseModel

    from buddy.tools import REGISTRY, ToolRegistry
    from buddy.tools import tool as register

    class NoArgs(BaseModel):
        pass

    reg = ToolRegistry()
    register("test.private_only", args=NoArgs, result=NoArgs, registry=reg)(lambda a, c: {})
    assert "test.private_only" in reg
    assert "test.private_only" not in REGISTRY


def test_bad_contracts_are_refused_at_registration_with_a_clear_message() -> None:
    from pydantic import BaseModel

    from buddy.errors import ContractError
    from buddy.tools import ToolRegistry
    from buddy.tools import tool as register

    class A(BaseModel):
        pass

    class Needs(BaseModel):
        value: int

    reg = ToolRegistry()
    with pytest.raises(ContractError, match=r"unknown contract option.*retires.*the options are"):
        register("t.a", args=A, result=A, retires=3, registry=reg)
    with pytest.raises(ContractError, match="reversible=True needs a rollback"):
        register("t.b", args=A, result=A, reversible=True, registry=reg)(lambda a, c: {})
    with pytest.raises(ContractError, match="needs mock="):
        register("t.c", args=A, result=Needs, registry=reg)(lambda a, c: {"value": 1})
    with pytest.raises(ContractError, match="risk must be one of"):
        register("t.d", args=A, result=A, risk="SCARY", registry=reg)(lambda a, c: {})
    with pytest.raises(ContractError, match="name must be"):
        register("Bad Name", args=A, result=A, registry=reg)(lambda a, c: {})
    with pytest.raises(ContractError, match="bad retry policy"):
        register("t.e", args=A, result=A, retry={"max_attempts": 0}, registry=reg)(lambda a, c: {})
    assert len(reg) == 0
