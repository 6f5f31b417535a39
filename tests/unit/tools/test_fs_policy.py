"""The filesystem policy of the file tools (buddy.tools.builtin.fspolicy).

Regular files only: FIFOs, sockets and devices are refused at once (``NotARegularFile``),
never read until a timeout, never replaced or removed. With ``BUDDY_FILE_ROOT`` set, paths
outside the root are refused (``OutsideRoot``, denied): ``..``, ``~``, absolute paths elsewhere
and symlinks leading out; the plan loader reports the lexical cases on the plan line.

No test writes to a real device: FIFOs and sockets live in ``tmp_path``; ``/dev/null`` is only
looked at (or read).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from buddy.config import get_settings
from buddy.errors import NotARegularFileError, OutsideRootError, PlanError, ToolDeniedError, ToolError
from buddy.models import AgentSpec
from buddy.plan.build import build_plan
from buddy.tools import ToolContext, ToolContract, default_registry
from buddy.tools.builtin import fspolicy

#: Seconds a tool call may take on a FIFO before the test calls it stuck (old code blocked forever).
STUCK_S = 5.0


def tool(name: str) -> ToolContract:
    return default_registry().get(name)


def make_ctx(workdir: Path) -> ToolContext:
    return ToolContext(campaign_id="c1", task_id="t1", workdir=workdir)


def execute(name: str, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    c = tool(name)
    return c.execute(c.parse_args(args), ctx)


def preview(name: str, args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    c = tool(name)
    return c.preview(c.parse_args(args), ctx)


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a daemon thread; its exception or result, or fail the test if it is stuck."""
    box: list[Any] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(STUCK_S)
    if t.is_alive():
        pytest.fail(f"the call was still blocked after {STUCK_S:g} s")
    return box[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "s"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    try:
        yield path
    finally:
        s.close()


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``BUDDY_FILE_ROOT`` = ``tmp_path/root`` (also the workdir of ``rctx``); ``tmp_path/outside``
    holds ``secret.txt``."""
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("secret\n")
    monkeypatch.setenv("BUDDY_FILE_ROOT", str(r))
    get_settings.cache_clear()
    return r


@pytest.fixture
def rctx(root: Path) -> ToolContext:
    return make_ctx(root)


# -- regular files only -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("file.sha256", {}),
        ("file.write", {"content": "x"}),
        ("file.append", {"line": "x"}),
        ("file.delete", {}),
    ],
)
def test_fifo_is_refused_at_once_and_left_alone(
    tmp_path: Path, fifo: Path, name: str, args: dict[str, Any]
) -> None:
    ctx = make_ctx(tmp_path)
    err = in_thread(lambda: execute(name, {"path": "fifo", **args}, ctx))
    assert isinstance(err, ToolError) and not isinstance(err, ToolDeniedError), err
    assert err.error_type == "NotARegularFile"
    assert "FIFO" in str(err) and "regular files only" in str(err)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # neither replaced nor removed
    assert ctx.undo is None
    refused = in_thread(lambda: preview(name, {"path": "fifo", **args}, ctx))
    assert refused["error_type"] == "NotARegularFile"
    assert refused["path"] == str(fifo) and "FIFO" in refused["refused"]


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("file.sha256", {}),
        ("file.write", {"content": "x"}),
        ("file.append", {"line": "x"}),
        ("file.delete", {}),
    ],
)
def test_socket_is_refused_and_left_alone(
    tmp_path: Path, sock: Path, name: str, args: dict[str, Any]
) -> None:
    with pytest.raises(ToolError) as ei:
        execute(name, {"path": str(sock), **args}, make_ctx(tmp_path))
    assert ei.value.error_type == "NotARegularFile"
    assert "a socket" in str(ei.value)
    assert stat.S_ISSOCK(os.lstat(sock).st_mode)  # file.write used to replace it with a regular file


def test_symlink_to_a_fifo_is_refused(tmp_path: Path, fifo: Path) -> None:
    (tmp_path / "link").symlink_to(fifo)
    err = in_thread(lambda: execute("file.sha256", {"path": "link"}, make_ctx(tmp_path)))
    assert isinstance(err, ToolError) and err.error_type == "NotARegularFile"


def test_device_nodes_are_refused_without_writing(tmp_path: Path) -> None:
    # Only looked at: /dev/null is never opened for writing here.
    with pytest.raises(NotARegularFileError, match="a character device"):
        fspolicy.check_real("/dev/null", None, "write")
    with pytest.raises(NotARegularFileError):
        fspolicy.check_path("/dev/null", tmp_path, None, "write")
    ctx = make_ctx(tmp_path)
    with pytest.raises(ToolError) as ei:  # a read of /dev/null used to "succeed" with 0 bytes
        execute("file.sha256", {"path": "/dev/null"}, ctx)
    assert ei.value.error_type == "NotARegularFile"
    out = preview("file.write", {"path": "/dev/null", "content": "x"}, ctx)
    assert out["error_type"] == "NotARegularFile" and "character device" in out["refused"]
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_open_regular_checks_the_descriptor(tmp_path: Path, fifo: Path) -> None:
    err = in_thread(lambda: fspolicy.open_regular(fifo, os.O_RDONLY, "read"))  # O_NONBLOCK: no wait
    assert isinstance(err, NotARegularFileError), err
    (tmp_path / "link").symlink_to(tmp_path / "f")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError):  # O_NOFOLLOW: a symlink swapped in is not followed
        fspolicy.open_regular(tmp_path / "link", os.O_RDONLY, "read")
    fd = fspolicy.open_regular(tmp_path / "f", os.O_RDONLY, "read")
    os.close(fd)


def test_write_never_replaces_what_appeared_after_the_check(tmp_path: Path, fifo: Path) -> None:
    fspolicy.ensure_replaceable(tmp_path / "missing", "write")
    with pytest.raises(NotARegularFileError):
        fspolicy.ensure_replaceable(fifo, "write")


def test_rollback_leaves_a_non_regular_file(tmp_path: Path, fifo: Path) -> None:
    c = tool("file.write")
    assert c.rollback is not None
    c.rollback(
        c.parse_args({"path": "fifo", "content": "x"}),
        {"path": str(fifo), "existed": False},
        make_ctx(tmp_path),
    )
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_regular_files_and_symlinks_still_work_without_a_root(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "wd")
    (tmp_path / "wd").mkdir()
    elsewhere = tmp_path / "elsewhere.txt"
    assert execute("file.write", {"path": str(elsewhere), "content": "a"}, ctx)["created"] is True
    (tmp_path / "wd" / "link").symlink_to(elsewhere)
    execute("file.append", {"path": "link", "line": "b"}, ctx)
    assert elsewhere.read_text() == "ab\n"
    assert (
        execute("file.sha256", {"path": "../elsewhere.txt"}, ctx)["sha256"]
        == hashlib.sha256(b"ab\n").hexdigest()
    )
    assert execute("file.delete", {"path": "link"}, ctx) == {"deleted": True}
    assert elsewhere.exists()  # the link went, not its target


# -- BUDDY_FILE_ROOT: lexical check -----------------------------------------------------------


def test_check_lexical_makes_no_filesystem_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("filesystem call")

    for name in ("stat", "lstat", "open", "readlink", "scandir", "listdir", "access"):
        monkeypatch.setattr(os, name, boom)
    monkeypatch.setattr(os.path, "realpath", boom)
    monkeypatch.setattr(os.path, "exists", boom)
    assert fspolicy.check_lexical("a/../b.txt", "/srv/root/wd", "/srv/root") == Path("/srv/root/wd/b.txt")
    with pytest.raises(OutsideRootError):
        fspolicy.check_lexical("../../x", "/srv/root/wd", "/srv/root")


@pytest.mark.parametrize(
    "path",
    [
        "../outside/secret.txt",
        "sub/../../outside/secret.txt",
        "..",
        "~/secret.txt",
        "~",
        "/etc/passwd",
        "/tmp",
    ],
)
def test_check_lexical_refuses_paths_outside_the_root(tmp_path: Path, path: str) -> None:
    root = str(tmp_path / "root")
    with pytest.raises(OutsideRootError) as ei:
        fspolicy.check_lexical(path, root, root)
    assert ei.value.error_type == "OutsideRoot"
    assert isinstance(ei.value, ToolDeniedError)
    assert "BUDDY_FILE_ROOT" in str(ei.value) and repr(path) in str(ei.value)


def test_check_lexical_prefix_is_not_containment(tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    with pytest.raises(OutsideRootError):
        fspolicy.check_lexical(str(tmp_path / "root-evil" / "x"), root, root)
    assert fspolicy.check_lexical("sub/../x", root, root) == Path(root) / "x"
    assert fspolicy.check_lexical(f"{root}/a/./b", "/elsewhere", root) == Path(root) / "a" / "b"
    assert fspolicy.check_lexical("~/x", "/wd", None) == Path(os.path.expanduser("~/x"))


def test_file_root_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert fspolicy.file_root() is None
    monkeypatch.setenv("BUDDY_FILE_ROOT", str(tmp_path / "a" / ".." / "b"))
    get_settings.cache_clear()
    assert fspolicy.file_root() == str(tmp_path / "b")


# -- BUDDY_FILE_ROOT: the tools ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.txt", "~/secret.txt", "OUTSIDE", "sub/../../outside/secret.txt"],
)
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("file.sha256", {}),
        ("file.write", {"content": "pwned"}),
        ("file.append", {"line": "pwned"}),
        ("file.delete", {}),
    ],
)
def test_paths_outside_the_root_are_denied(
    tmp_path: Path, rctx: ToolContext, name: str, args: dict[str, Any], path: str
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    path = str(secret) if path == "OUTSIDE" else path
    with pytest.raises(ToolDeniedError) as ei:
        execute(name, {"path": path, **args}, rctx)
    assert ei.value.error_type == "OutsideRoot"
    assert "outside the file root" in str(ei.value) or "'~'" in str(ei.value)
    assert secret.read_text() == "secret\n"
    assert rctx.undo is None
    out = preview(name, {"path": path, **args}, rctx)
    assert out["error_type"] == "OutsideRoot" and out["refused"]


@pytest.mark.parametrize(
    ("name", "args"),
    [("file.sha256", {}), ("file.write", {"content": "pwned"}), ("file.append", {"line": "pwned"})],
)
def test_symlinks_leading_out_of_the_root_are_denied(
    tmp_path: Path, root: Path, rctx: ToolContext, name: str, args: dict[str, Any]
) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    (root / "link").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path / "outside")
    for path in ("link", "dirlink/secret.txt", "dirlink/new.txt"):
        with pytest.raises(ToolDeniedError) as ei:
            execute(name, {"path": path, **args}, rctx)
        assert ei.value.error_type == "OutsideRoot"
        assert "resolves to" in str(ei.value) and str(tmp_path / "outside") in str(ei.value)
    assert secret.read_text() == "secret\n"
    assert sorted(os.listdir(tmp_path / "outside")) == ["secret.txt"]
    assert (root / "link").is_symlink()


def test_delete_through_a_directory_symlink_out_of_the_root_is_denied(
    tmp_path: Path, root: Path, rctx: ToolContext
) -> None:
    (root / "dirlink").symlink_to(tmp_path / "outside")
    with pytest.raises(ToolDeniedError):
        execute("file.delete", {"path": "dirlink/secret.txt"}, rctx)
    assert (tmp_path / "outside" / "secret.txt").exists()
    (root / "link").symlink_to(tmp_path / "outside" / "secret.txt")  # the link itself is inside
    assert execute("file.delete", {"path": "link"}, rctx) == {"deleted": True}
    assert (tmp_path / "outside" / "secret.txt").read_text() == "secret\n"


def test_paths_inside_the_root_work(root: Path, rctx: ToolContext) -> None:
    assert execute("file.write", {"path": "sub/../a.txt", "content": "x"}, rctx)["created"] is True
    assert execute("file.write", {"path": str(root / "sub" / "b.txt"), "content": "y"}, rctx)["created"]
    (root / "inner").symlink_to(root / "a.txt")
    execute("file.append", {"path": "inner", "line": "more"}, rctx)
    assert (root / "a.txt").read_text() == "xmore\n"
    assert execute("file.sha256", {"path": "a.txt"}, rctx)["bytes"] == 6
    assert execute("file.delete", {"path": "sub/b.txt"}, rctx) == {"deleted": True}
    assert "refused" not in preview("file.write", {"path": "a.txt", "content": "z"}, rctx)


def test_a_root_that_is_a_symlink_is_compared_by_its_real_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    monkeypatch.setenv("BUDDY_FILE_ROOT", str(tmp_path / "alias"))
    get_settings.cache_clear()
    ctx = make_ctx(tmp_path / "alias")
    assert execute("file.write", {"path": "f.txt", "content": "x"}, ctx)["created"] is True
    assert (tmp_path / "real" / "f.txt").read_text() == "x"


# -- plan validation --------------------------------------------------------------------------


def write_plan(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_plan_with_a_path_outside_the_root_fails_validation_on_its_line(tmp_path: Path, root: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.jsonl",
        [
            {"task_id": "ok", "tool": "file.write", "args": {"path": "in.txt", "content": "x"}},
            {"task_id": "up", "tool": "file.write", "args": {"path": "../out.txt", "content": "x"}},
            {"task_id": "abs", "tool": "file.sha256", "args": {"path": "/etc/passwd"}},
            {"task_id": "home", "tool": "file.append", "args": {"path": "~/x", "line": "x"}},
            {"task_id": "del", "tool": "file.delete", "args": {"path": "sub/./f.txt"}},
        ],
    )
    with pytest.raises(PlanError) as ei:
        build_plan(plan, default_registry(), [AgentSpec(id="a1")], workdir=root)
    assert ei.value.lines() == [
        f"{plan}:2: args.path: '../out.txt' resolves to {tmp_path / 'out.txt'}, outside the file root "
        f"{root} (BUDDY_FILE_ROOT)",
        f"{plan}:3: args.path: '/etc/passwd' is outside the file root {root} (BUDDY_FILE_ROOT)",
        f"{plan}:4: args.path: '~/x' starts with '~', which is not allowed under the file root {root} "
        "(BUDDY_FILE_ROOT); give a path relative to the workdir or an absolute path in the root",
    ]


def test_plan_without_a_root_is_not_confined(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path / "plan.jsonl",
        [{"task_id": "up", "tool": "file.write", "args": {"path": "../out.txt", "content": "x"}}],
    )
    built = build_plan(plan, default_registry(), [AgentSpec(id="a1")], workdir=tmp_path)
    assert list(built.tasks) == ["up"]


def test_validate_with_root_reports_paths_outside_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from buddy.cli.app import app

    plan = tmp_path / "plan.jsonl"
    plan.write_text(
        '{"task_id": "in", "tool": "file.write", "args": {"path": "ok.txt", "content": "x"}}\n'
        '{"task_id": "out", "tool": "file.write", "args": {"path": "../escape.txt", "content": "x"}}\n'
    )
    root = tmp_path / "root"
    root.mkdir()
    res = CliRunner().invoke(app, ["validate", str(plan), "--workdir", str(root), "--root", str(root)])
    assert res.exit_code == 2, res.output
    assert f"{plan}:2:" in res.output and ":1:" not in res.output.replace(f"{plan}:2:", "")
    monkeypatch.delenv("BUDDY_FILE_ROOT")  # each command is a process of its own
    get_settings.cache_clear()
    ok = CliRunner().invoke(app, ["validate", str(plan), "--workdir", str(root)])
    assert ok.exit_code == 0, ok.output
