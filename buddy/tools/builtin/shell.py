"""The ``shell`` built-in: run one allow-listed program, without a shell.

Only programs named in ``BUDDY_SHELL_ALLOW`` (:attr:`buddy.config.Settings.shell_allow`) run.
The decision compares real files, not names (:func:`allowed_program`):

- ``argv[0]`` is located: a bare name (no ``/``) through the worker's ``PATH``
  (``shutil.which``; only an absolute hit counts), a path with a ``/`` as written (a relative
  one against the call's ``cwd``); then resolved with ``os.path.realpath``;
- each list entry is resolved the same way: a bare name through ``PATH``, an absolute path as
  written, then ``os.path.realpath`` (a relative entry with a ``/`` never matches);
- ``argv[0]`` is allowed when its real path equals an entry's real path. So ``./python3`` or
  ``/tmp/x/python3`` never passes for an allowed ``python3`` unless it *is* that file (a
  symlink to it), and a venv's ``bin/python`` symlink matches the interpreter it points to.

A program that is not allowed raises :class:`~buddy.errors.ToolDeniedError` (outcome
``denied``, nothing runs). The allowed program is run by its resolved real path (Popen's
``executable``), with ``argv[0]`` set to the absolute path it was located at (so a venv's
``python`` still finds its venv), so a ``PATH`` or symlink change between the check and the
exec cannot swap the program. It runs in its own process group (``start_new_session``) so a
timeout kills it and everything it started.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from buddy.config import get_settings
from buddy.errors import ToolDeniedError, ToolError, ToolTimeoutError
from buddy.models import Risk
from buddy.tools import ToolContext, tool
from buddy.tools.builtin.basic import NO_RETRY, head_text, tail_text, time_budget

#: Characters of stderr quoted in a ``NonZeroExit`` error message.
STDERR_TAIL_CHARS = 2000


class ShellArgs(BaseModel):
    """``argv``: program and arguments (no shell parsing); ``timeout_s``: seconds, up to a day;
    ``cwd``: working directory, relative to the campaign workdir (default: the workdir)."""

    model_config = ConfigDict(extra="forbid")

    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    cwd: str | None = None

    @field_validator("argv")
    @classmethod
    def _program(cls, v: list[str]) -> list[str]:
        if not v[0]:
            raise ValueError("argv[0] (the program) must not be empty")
        if any("\0" in a for a in v):
            raise ValueError("argv must not contain NUL characters")
        return v


class ShellResult(BaseModel):
    """``returncode``: exit status; ``stdout``: its first 64 KiB; ``stderr``: its last 64 KiB."""

    returncode: int
    stdout: str
    stderr: str


def locate(program: str, cwd: Path | str | None = None) -> str | None:
    """The absolute path ``program`` names, symlinks not resolved; None when it cannot be found.

    A bare name is looked up on ``PATH`` (``shutil.which``; a relative hit from an empty or
    ``.`` entry does not count); a path with a ``/`` is made absolute against ``cwd`` (default:
    the process's current directory) whether or not it exists.
    """
    if "/" not in program:
        found = shutil.which(program)
        return found if found is not None and os.path.isabs(found) else None
    return os.path.abspath(os.path.join(cwd if cwd is not None else os.getcwd(), program))


def _real_entries(allow: list[str]) -> set[str]:
    """The real paths of the allow-list entries that can be resolved (bare names via ``PATH``,
    absolute paths as written; relative paths with a ``/`` are skipped)."""
    out: set[str] = set()
    for entry in allow:
        if not entry or ("/" in entry and not os.path.isabs(entry)):
            continue
        found = locate(entry)
        if found is not None:
            out.add(os.path.realpath(found))
    return out


def resolve_program(
    program: str, allow: list[str], cwd: Path | str | None = None
) -> tuple[str | None, str | None]:
    """``(located, executable)``: where ``program`` was found (:func:`locate`, relative paths
    against ``cwd``; None when not found) and, when it is allowed, its real path (else None).

    It is allowed when ``os.path.realpath`` of the located path equals the real path of an
    ``allow`` entry.
    """
    found = locate(program, cwd)
    if found is None:
        return None, None
    real = os.path.realpath(found)
    return found, (real if real in _real_entries(allow) else None)


def allowed_program(program: str, allow: list[str], cwd: Path | str | None = None) -> str | None:
    """The real path to execute for ``program`` when it is allowed, else None (:func:`resolve_program`)."""
    return resolve_program(program, allow, cwd)[1]


def is_allowed(program: str, allow: list[str], cwd: Path | str | None = None) -> bool:
    """True when ``program`` resolves to the same real file as an entry of ``allow``
    (:func:`allowed_program`)."""
    return allowed_program(program, allow, cwd) is not None


def _cwd(args: ShellArgs, ctx: ToolContext) -> Path:
    return ctx.path(args.cwd) if args.cwd is not None else ctx.workdir


def _mock(args: ShellArgs) -> ShellResult:
    """Synthetic result: exit status 0 and empty output; nothing is run."""
    return ShellResult(returncode=0, stdout="", stderr="")


def _dry_run(args: ShellArgs, ctx: ToolContext) -> dict[str, Any]:
    """The command, ``allowed`` (the same check as the live call) and ``program``: the real
    path that would be executed (None when the program is not allowed)."""
    cwd = _cwd(args, ctx)
    executable = allowed_program(args.argv[0], get_settings().shell_allow, cwd)
    return {
        "command": shlex.join(args.argv),
        "argv": list(args.argv),
        "cwd": str(cwd),
        "cwd_exists": cwd.is_dir(),
        "allowed": executable is not None,
        "program": executable,
        "timeout_s": args.timeout_s,
    }


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


@tool(
    "shell",
    args=ShellArgs,
    result=ShellResult,
    description="Run an allow-listed program (no shell) and capture its output.",
    risk=Risk.HIGH,
    idempotent=False,
    timeout_of=lambda a: a.timeout_s,
    timeout_s=60.0,
    retry=NO_RETRY,
    mock=_mock,
    dry_run=_dry_run,
)
def shell(args: ShellArgs, ctx: ToolContext) -> ShellResult:
    """Run ``args.argv`` in ``args.cwd`` with stdin closed, capturing stdout and stderr.

    The time limit is ``args.timeout_s`` or what is left of ``ctx.deadline``, whichever is sooner.
    The program run is the real file the allow-list check approved (:func:`allowed_program`).
    Raises :class:`ToolDeniedError` when ``argv[0]`` is not allow-listed (nothing runs),
    :class:`ToolTimeoutError` when the limit passes (the process group is killed), and
    :class:`ToolError` for a missing ``cwd`` (``CwdNotFound``), a program that cannot start
    (``CommandNotFound`` or the ``OSError`` class name) or a nonzero exit (``NonZeroExit``,
    with the return code and the end of stderr).
    """
    program = args.argv[0]
    allow = get_settings().shell_allow
    cwd = _cwd(args, ctx)
    located, executable = resolve_program(program, allow, cwd)
    if executable is None or located is None:
        if located is None and program in allow:
            raise ToolError(f"shell: program {program!r} not found on PATH", error_type="CommandNotFound")
        where = f" (resolves to {os.path.realpath(located)})" if located is not None else ""
        raise ToolDeniedError(
            f"shell: program {program!r}{where} is not allowed; BUDDY_SHELL_ALLOW lists "
            f"{', '.join(allow) if allow else 'nothing'} (compared by real path)"
        )
    if not cwd.is_dir():
        raise ToolError(f"shell: working directory {cwd} does not exist", error_type="CwdNotFound")
    limit, deadline_binds = time_budget(ctx, args.timeout_s)
    try:
        proc = subprocess.Popen(
            [located, *args.argv[1:]],
            executable=executable,
            cwd=cwd,
            shell=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except FileNotFoundError:
        raise ToolError(f"shell: program {program!r} not found", error_type="CommandNotFound") from None
    except OSError as e:
        raise ToolError(
            f"shell: cannot start {program!r}: {e.strerror or e}", error_type=type(e).__name__
        ) from None
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        why = "the call's deadline" if deadline_binds else f"timeout_s={args.timeout_s:g}"
        raise ToolTimeoutError(f"shell: {shlex.join(args.argv)} killed after {limit:.3g} s ({why})") from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    result = ShellResult(returncode=proc.returncode, stdout=head_text(out), stderr=tail_text(err))
    if proc.returncode != 0:
        tail = result.stderr[-STDERR_TAIL_CHARS:].strip()
        raise ToolError(
            f"shell: {shlex.join(args.argv)} exited with {proc.returncode}"
            + (f"; stderr ends: {tail}" if tail else "; stderr empty"),
            error_type="NonZeroExit",
        )
    return result
