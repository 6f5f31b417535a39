"""The ``shell`` built-in: run one allow-listed program, without a shell.

Only programs named in ``BUDDY_SHELL_ALLOW`` (:attr:`buddy.config.Settings.shell_allow`) run:
``argv[0]`` is allowed when it is on the list as written, or when it is a bare name (no ``/``,
found on ``PATH``) whose entry on the list is an absolute path with that basename; a path such
as ``/tmp/x/python3`` never passes for an allowed ``python3``. The program runs in its own
process group (``start_new_session``) so a timeout kills it and everything it started.
"""

from __future__ import annotations

import os
import shlex
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


def is_allowed(program: str, allow: list[str]) -> bool:
    """True when ``program`` is in ``allow`` as written, or is a bare name that an allowed
    absolute path ends in (``python3`` passes for an allowed ``/usr/bin/python3``)."""
    if program in allow:
        return True
    return "/" not in program and any(os.path.basename(a) == program for a in allow if "/" in a)


def _cwd(args: ShellArgs, ctx: ToolContext) -> Path:
    return ctx.path(args.cwd) if args.cwd is not None else ctx.workdir


def _mock(args: ShellArgs) -> ShellResult:
    """Synthetic result: exit status 0 and empty output; nothing is run."""
    return ShellResult(returncode=0, stdout="", stderr="")


def _dry_run(args: ShellArgs, ctx: ToolContext) -> dict[str, Any]:
    cwd = _cwd(args, ctx)
    return {
        "command": shlex.join(args.argv),
        "argv": list(args.argv),
        "cwd": str(cwd),
        "cwd_exists": cwd.is_dir(),
        "allowed": is_allowed(args.argv[0], get_settings().shell_allow),
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
    Raises :class:`ToolDeniedError` when ``argv[0]`` is not allow-listed (nothing runs),
    :class:`ToolTimeoutError` when the limit passes (the process group is killed), and
    :class:`ToolError` for a missing ``cwd`` (``CwdNotFound``), a program that cannot start
    (``CommandNotFound`` or the ``OSError`` class name) or a nonzero exit (``NonZeroExit``,
    with the return code and the end of stderr).
    """
    program = args.argv[0]
    allow = get_settings().shell_allow
    if not is_allowed(program, allow):
        raise ToolDeniedError(
            f"shell: program {program!r} is not allowed; BUDDY_SHELL_ALLOW lists "
            f"{', '.join(allow) if allow else 'nothing'}"
        )
    cwd = _cwd(args, ctx)
    if not cwd.is_dir():
        raise ToolError(f"shell: working directory {cwd} does not exist", error_type="CwdNotFound")
    limit, deadline_binds = time_budget(ctx, args.timeout_s)
    try:
        proc = subprocess.Popen(
            args.argv,
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
