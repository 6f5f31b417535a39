"""The allow-lists of ``python.call`` (``BUDDY_PYTHON_ALLOW``) and ``shell`` (``BUDDY_SHELL_ALLOW``).

``python.call`` follows the whole attribute path: a target may not walk out of the allowed
modules (``mymod:os.system``), name a function an allowed module imported from elsewhere, or a
builtin. ``shell`` compares real files: a program is allowed when it *is* an allowed program,
not when its name looks like one, and the file that was checked is the file that runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.fixtures.allowmod as allowmod
from buddy.config import get_settings
from buddy.errors import ToolDeniedError, ToolError
from buddy.tools import ToolContext, ToolContract, default_registry
from buddy.tools.builtin.pycall import resolve_target
from buddy.tools.builtin.shell import allowed_program

MOD = "tests.fixtures.allowmod"


def tool(name: str) -> ToolContract:
    return default_registry().get(name)


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return ToolContext(campaign_id="c1", task_id="t1", workdir=tmp_path)


@pytest.fixture
def allow(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``allow(python=[...], shell=[...])`` sets the allow-lists for one test."""

    def set_allow(python: list[str] | None = None, shell: list[str] | None = None) -> None:
        monkeypatch.setenv("BUDDY_PYTHON_ALLOW", ",".join(python or []))
        monkeypatch.setenv("BUDDY_SHELL_ALLOW", ",".join(shell or []))
        get_settings.cache_clear()

    set_allow()
    yield set_allow
    get_settings.cache_clear()


def call(target: str, ctx: ToolContext, **kwargs: Any) -> dict[str, Any]:
    c = tool("python.call")
    return c.execute(c.parse_args({"target": target, "kwargs": kwargs}), ctx)


def preview(target: str, ctx: ToolContext) -> dict[str, Any]:
    c = tool("python.call")
    return c.preview(c.parse_args({"target": target}), ctx)


# -- python.call: what stays allowed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kwargs", "result"),
    [
        (f"{MOD}:twice", {"x": 21}, 42),
        (f"{MOD}:Greeter.make", {"name": "ada"}, "hello ada"),  # a classmethod of an allowed class
        (f"{MOD}:Greeter.shout", {"text": "hi"}, "HI"),  # a staticmethod
        (f"{MOD}:default_greeter.greet", {}, "hello default"),  # a method of an allowed instance
    ],
)
def test_python_call_own_functions_and_methods_run(
    ctx: ToolContext, allow: Callable[..., None], target: str, kwargs: dict[str, Any], result: Any
) -> None:
    allow(python=[MOD])
    assert call(target, ctx, **kwargs) == {"result": result}
    assert preview(target, ctx)["allowed"] is True


def test_python_call_nested_allowed_submodule_runs(ctx: ToolContext, allow: Callable[..., None]) -> None:
    allow(python=["json"])
    assert call("json:decoder.py_scanstring", ctx, s='"abc"', end=1) == {"result": ["abc", 5]}
    assert resolve_target("json:decoder.JSONDecoder", ["json"]) is __import__("json").decoder.JSONDecoder
    allow(python=["tests.fixtures"])  # allowmod is a submodule of the allowed package
    assert call("tests.fixtures:allowmod.twice", ctx, x=2) == {"result": 4}


# -- python.call: the bypasses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "target", "kwargs", "names"),
    [
        ([MOD], f"{MOD}:os.mkdir", {"path": "MARKER"}, "'os'"),  # the path walks into os
        ([MOD], f"{MOD}:os.path.join", {"a": "x"}, "'os'"),
        (
            ["tests.fixtures"],
            "tests.fixtures:allowmod.os.mkdir",
            {"path": "MARKER"},
            "'os'",
        ),  # via a submodule
        ([MOD], f"{MOD}:make_dir", {"path": "MARKER"}, "'posix'"),  # os.mkdir under a local name
        ([MOD], f"{MOD}:join", {"a": "x"}, "'posixpath'"),  # from os.path import join
        ([MOD], f"{MOD}:open", {"file": "MARKER", "mode": "w"}, "'io'"),  # from builtins import open
        ([MOD], f"{MOD}:print", {}, "'builtins'"),
        ([MOD], f"{MOD}:CONFIG.clear", {}, "no module"),  # a dict's method
        ([MOD], f"{MOD}:Greeter.__subclasses__", {}, "no module"),  # a builtin bound to the class
    ],
)
def test_python_call_refuses_paths_out_of_the_allowed_modules(
    tmp_path: Path,
    ctx: ToolContext,
    allow: Callable[..., None],
    allowed: list[str],
    target: str,
    kwargs: dict[str, Any],
    names: str,
) -> None:
    allow(python=allowed)
    marker = tmp_path / "marker"
    kwargs = {k: str(marker) if v == "MARKER" else v for k, v in kwargs.items()}
    with pytest.raises(ToolDeniedError) as ei:
        call(target, ctx, **kwargs)
    assert f"python.call: {target!r} is not allowed" in str(ei.value)
    assert names in str(ei.value)
    assert "BUDDY_PYTHON_ALLOW lists" in str(ei.value)
    assert not marker.exists()  # nothing was called
    assert allowmod.CONFIG == {"greeting": "hello"}
    assert preview(target, ctx)["allowed"] is False


def test_python_call_module_itself_not_allowed_is_not_imported(
    ctx: ToolContext, allow: Callable[..., None]
) -> None:
    allow(python=[MOD])
    name = "tests.fixtures.sample_tools"
    sys.modules.pop(name, None)
    with pytest.raises(ToolDeniedError, match=r"module .tests\.fixtures\.sample_tools. is not on the list"):
        call(f"{name}:upper", ctx)
    assert preview(f"{name}:upper", ctx)["allowed"] is False
    assert name not in sys.modules


def test_python_call_dry_run_reports_missing_names(ctx: ToolContext, allow: Callable[..., None]) -> None:
    allow(python=[MOD])
    out = preview(f"{MOD}:nothing_here", ctx)
    assert out["allowed"] is True  # the policy has nothing against it; the call would fail
    assert "no attribute 'nothing_here'" in out["error"]
    with pytest.raises(ToolError) as ei:
        call(f"{MOD}:nothing_here", ctx)
    assert ei.value.error_type == "AttributeError"
    assert not isinstance(ei.value, ToolDeniedError)


# -- shell ------------------------------------------------------------------------------------


def script(path: Path, body: str = 'echo "$0"') -> Path:
    """An executable ``/bin/sh`` script at ``path`` (it prints the file the kernel ran)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def run_shell(ctx: ToolContext, argv: list[str], **kw: Any) -> dict[str, Any]:
    c = tool("shell")
    return c.execute(c.parse_args({"argv": argv, **kw}), ctx)


def test_shell_bare_name_must_resolve_to_the_allowed_file(
    tmp_path: Path, ctx: ToolContext, allow: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = script(tmp_path / "bin" / "prog")
    marker = tmp_path / "evil-ran"
    script(tmp_path / "evil" / "prog", f"touch {marker}")
    allow(shell=[str(good)])
    monkeypatch.setenv("PATH", f"{tmp_path / 'evil'}{os.pathsep}{tmp_path / 'bin'}")
    with pytest.raises(ToolDeniedError, match=r"'prog' \(resolves to .*evil/prog\) is not allowed"):
        run_shell(ctx, ["prog"])
    assert not marker.exists()
    c = tool("shell")
    assert c.preview(c.parse_args({"argv": ["prog"]}), ctx)["allowed"] is False
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert run_shell(ctx, ["prog"])["stdout"] == f"{good}\n"


@pytest.mark.parametrize("argv0", ["./prog", "sub/prog"])
def test_shell_refuses_relative_paths_with_an_allowed_basename(
    tmp_path: Path, ctx: ToolContext, allow: Callable[..., None], monkeypatch: pytest.MonkeyPatch, argv0: str
) -> None:
    script(tmp_path / "bin" / "prog")
    marker = tmp_path / "ran"
    script(tmp_path / "prog", f"touch {marker}")
    script(tmp_path / "sub" / "prog", f"touch {marker}")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    allow(shell=["prog", argv0])  # a relative entry with a '/' never matches: it means nothing fixed
    with pytest.raises(ToolDeniedError):
        run_shell(ctx, [argv0])
    assert not marker.exists()


def test_shell_runs_the_resolved_real_file(
    tmp_path: Path, ctx: ToolContext, allow: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = script(tmp_path / "real" / "prog")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "prog").symlink_to(real)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    allow(shell=["prog"])
    assert run_shell(ctx, ["prog"])["stdout"] == f"{real}\n"  # the checked file, not a PATH lookup
    assert run_shell(ctx, ["./link"])["stdout"] == f"{real}\n"  # a symlink to the allowed file is it
    c = tool("shell")
    assert c.preview(c.parse_args({"argv": ["prog"]}), ctx)["program"] == str(real)
    assert allowed_program("prog", [str(tmp_path / "bin" / "prog")]) == str(real)


def test_shell_venv_interpreter_matches_its_real_file_and_keeps_its_venv(
    ctx: ToolContext, allow: Callable[..., None]
) -> None:
    allow(shell=[os.path.realpath(sys.executable)])  # the list names the real interpreter
    out = run_shell(ctx, [sys.executable, "-c", "import sys; print(sys.prefix)"])
    assert out["stdout"].strip() == sys.prefix  # argv[0] still finds the venv
    allow(shell=[sys.executable])
    assert run_shell(ctx, [sys.executable, "-c", "print(1)"])["stdout"] == "1\n"


def test_shell_listed_but_missing_program_is_not_found(
    tmp_path: Path, ctx: ToolContext, allow: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    allow(shell=["no-such-program"])
    with pytest.raises(ToolError) as ei:
        run_shell(ctx, ["no-such-program"])
    assert ei.value.error_type == "CommandNotFound"
    assert not isinstance(ei.value, ToolDeniedError)
    with pytest.raises(ToolDeniedError):
        run_shell(ctx, ["other-missing-program"])
