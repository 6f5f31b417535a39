"""File built-ins: ``file.sha256``, ``file.write``, ``file.append`` and ``file.delete``.

Relative paths resolve against the campaign's workdir (:meth:`ToolContext.path`); each tool
claims its file (``file:<absolute path>``: read for ``file.sha256``, write for the others).
Text is UTF-8. ``file.write`` is atomic (a temporary file in the same directory, then
``os.replace``) and reversible: its rollback puts the old bytes back or removes a file it created.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import glob
import hashlib
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from buddy.errors import ToolError
from buddy.models import ResourceClaim, Risk
from buddy.tools import ToolContext, file_claim, tool
from buddy.tools.builtin.basic import DEFAULT_RETRY, NO_RETRY

_CHUNK = 1024 * 1024
_TMP_SUFFIX = ".buddy-tmp"
#: Largest diff (characters) a ``file.write`` preview shows; longer diffs are cut with a note.
MAX_DIFF_CHARS = 64 * 1024


def resolve(path: str, workdir: Path) -> Path:
    """``path`` made absolute against ``workdir`` (``~`` expanded), as :meth:`ToolContext.path` does."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p


def _os_error(e: OSError, what: str, path: Path) -> ToolError:
    reason = e.strerror or str(e)
    return ToolError(f"cannot {what} {path}: {reason}", error_type=type(e).__name__)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(target: Path, data: bytes, mode: int | None, ctx: ToolContext | None = None) -> None:
    """Write ``data`` to ``target`` through a temporary file in its directory and ``os.replace``.

    ``mode`` (permission bits) is applied to the new file when given. With ``ctx``, the lease
    is checked (``ctx.check_lease``) right before the ``os.replace`` that commits the effect.
    Raises ``OSError``, or :class:`~buddy.leases.LeaseLostError` (nothing replaced).
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if ctx is not None:
            ctx.check_lease()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


def _check_target(target: Path) -> None:
    """Raise :class:`ToolError` when ``target`` cannot be written as a regular file."""
    if not target.parent.is_dir():
        raise ToolError(
            f"cannot write {target}: parent directory {target.parent} does not exist",
            error_type="ParentNotFound",
        )
    if target.is_dir():
        raise ToolError(f"cannot write {target}: it is a directory", error_type="IsADirectoryError")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathArgs(_Args):
    """``path``: the file, absolute or relative to the campaign workdir."""

    path: str = Field(min_length=1)


# -- file.sha256 ------------------------------------------------------------------------


class Sha256Result(BaseModel):
    """``sha256``: hex digest of the file's bytes; ``bytes``: its size."""

    sha256: str
    bytes: int


def _sha256_mock(args: PathArgs) -> Sha256Result:
    """Synthetic result: the digest of the *path string* (not of any content) and 0 bytes."""
    return Sha256Result(sha256=hashlib.sha256(args.path.encode("utf-8")).hexdigest(), bytes=0)


def _sha256_dry_run(args: PathArgs, ctx: ToolContext) -> dict[str, Any]:
    target = ctx.path(args.path)
    return {"path": str(target), "exists": target.is_file()}


def _read_claim(args: PathArgs, workdir: Path) -> list[ResourceClaim]:
    return [file_claim(resolve(args.path, workdir), "read")]


def _write_claim(args: PathArgs, workdir: Path) -> list[ResourceClaim]:
    return [file_claim(resolve(args.path, workdir), "write")]


@tool(
    "file.sha256",
    args=PathArgs,
    result=Sha256Result,
    description="SHA-256 digest and size of a file.",
    risk=Risk.LOW,
    idempotent=True,
    timeout_s=300.0,
    retry=DEFAULT_RETRY,
    resources=_read_claim,
    mock=_sha256_mock,
    dry_run=_sha256_dry_run,
)
def file_sha256(args: PathArgs, ctx: ToolContext) -> Sha256Result:
    """Hash the file at ``args.path``.

    Raises :class:`ToolError` when it cannot be read (``error_type`` the ``OSError`` class name,
    e.g. ``FileNotFoundError``, ``IsADirectoryError``).
    """
    target = ctx.path(args.path)
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise _os_error(e, "read", target) from None
    return Sha256Result(sha256=digest.hexdigest(), bytes=size)


# -- file.write -------------------------------------------------------------------------


class WriteArgs(PathArgs):
    """``content``: the whole new text of the file (written as UTF-8)."""

    content: str


class WriteResult(BaseModel):
    """``bytes``: size written; ``created``: True when the file did not exist before."""

    bytes: int
    created: bool


def _write_mock(args: WriteArgs) -> WriteResult:
    """Synthetic result: the size ``content`` would have, and ``created`` False (nothing is looked at)."""
    return WriteResult(bytes=len(args.content.encode("utf-8")), created=False)


def _write_dry_run(args: WriteArgs, ctx: ToolContext) -> dict[str, Any]:
    target = ctx.path(args.path)
    exists = target.is_file()
    old = ""
    read_error: str | None = None
    if exists:
        try:
            old = target.read_bytes().decode("utf-8", errors="replace")
        except OSError as e:
            read_error = e.strerror or str(e)
    diff = "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            args.content.splitlines(keepends=True),
            fromfile=str(target) if exists else "/dev/null",
            tofile=str(target),
        )
    )
    if len(diff) > MAX_DIFF_CHARS:
        diff = diff[:MAX_DIFF_CHARS] + f"\n... diff cut at {MAX_DIFF_CHARS} characters\n"
    return {
        "path": str(target),
        "would_create": not exists,
        "parent_exists": target.parent.is_dir(),
        "bytes": len(args.content.encode("utf-8")),
        "changed": not exists or old != args.content,
        "diff": diff,
        "read_error": read_error,
    }


def _write_rollback(args: WriteArgs, undo: dict[str, Any], ctx: ToolContext) -> None:
    """Undo a ``file.write``: restore the old bytes (and permissions), or remove a created file.

    An empty ``undo`` means the write never started: nothing to do. Temporary files a write
    that died half-way left next to the file are removed. Raises :class:`ToolError`
    when the file cannot be restored or removed.
    """
    if not undo:
        return
    target = Path(undo["path"]) if undo.get("path") else ctx.path(args.path)
    try:
        if undo.get("existed"):
            old = base64.b64decode(undo["content_b64"])
            _atomic_write(target, old, undo.get("mode"))
        else:
            target.unlink(missing_ok=True)
            _fsync_dir(target.parent)
    except OSError as e:
        raise _os_error(e, "roll back", target) from None
    # A worker that died mid-write leaves its temporary file; the write claim means it is ours.
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*{_TMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            leftover.unlink()


@tool(
    "file.write",
    args=WriteArgs,
    result=WriteResult,
    description="Write a whole text file atomically (reversible).",
    risk=Risk.MEDIUM,
    reversible=True,
    rollback=_write_rollback,
    idempotent=True,
    timeout_s=60.0,
    retry=DEFAULT_RETRY,
    resources=_write_claim,
    mock=_write_mock,
    dry_run=_write_dry_run,
)
def file_write(args: WriteArgs, ctx: ToolContext) -> WriteResult:
    """Replace the file at ``args.path`` with ``args.content``, creating it if needed.

    A symlink is followed: its target file is replaced (the claim names the target too).
    Before writing it records, through ``ctx.record_undo``, the absolute path, whether the file
    existed, its old bytes (base64) and permission bits. Raises :class:`ToolError` when the
    parent directory is missing (``ParentNotFound``), the path is a directory, or an
    ``OSError`` stops the read or write (``error_type`` its class name).
    """
    target = Path(os.path.realpath(ctx.path(args.path)))
    _check_target(target)
    data = args.content.encode("utf-8")
    existed, old, mode = False, b"", None
    try:
        st = target.stat()
    except FileNotFoundError:
        pass
    except OSError as e:
        raise _os_error(e, "stat", target) from None
    else:
        existed, mode = True, stat.S_IMODE(st.st_mode)
        try:
            old = target.read_bytes()
        except OSError as e:
            raise _os_error(e, "read", target) from None
    ctx.record_undo(
        {
            "path": str(target),
            "existed": existed,
            "content_b64": base64.b64encode(old).decode("ascii") if existed else None,
            "mode": mode,
        }
    )
    try:
        _atomic_write(target, data, mode, ctx)
    except OSError as e:
        raise _os_error(e, "write", target) from None
    return WriteResult(bytes=len(data), created=not existed)


# -- file.append ------------------------------------------------------------------------


class AppendArgs(PathArgs):
    """``line``: one line of text, without a line break (the tool adds ``\\n``)."""

    line: str

    @field_validator("line")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if "\n" in v or "\r" in v:
            raise ValueError("line must not contain a line break (\\n or \\r); the tool adds one")
        return v


class AppendResult(BaseModel):
    """``bytes``: size of the file after the append."""

    bytes: int


def _append_mock(args: AppendArgs) -> AppendResult:
    """Synthetic result: the size as if the file had been empty (nothing is looked at)."""
    return AppendResult(bytes=len(args.line.encode("utf-8")) + 1)


def _append_dry_run(args: AppendArgs, ctx: ToolContext) -> dict[str, Any]:
    target = ctx.path(args.path)
    exists = target.is_file()
    size = target.stat().st_size if exists else 0
    return {
        "path": str(target),
        "line": args.line,
        "would_append": args.line + "\n",
        "exists": exists,
        "would_create": not exists,
        "parent_exists": target.parent.is_dir(),
        "bytes_after": size + len(args.line.encode("utf-8")) + 1,
    }


@tool(
    "file.append",
    args=AppendArgs,
    result=AppendResult,
    description="Append one line to a text file (created if missing).",
    risk=Risk.MEDIUM,
    idempotent=False,
    timeout_s=60.0,
    retry=NO_RETRY,
    resources=_write_claim,
    mock=_append_mock,
    dry_run=_append_dry_run,
)
def file_append(args: AppendArgs, ctx: ToolContext) -> AppendResult:
    """Append ``args.line`` and ``\\n`` to the file (``O_APPEND``, then ``fsync``).

    The file is created (mode 0644 before umask) when missing. Raises :class:`ToolError` when
    the parent directory is missing (``ParentNotFound``) or an ``OSError`` stops the write.
    """
    target = ctx.path(args.path)
    _check_target(target)
    data = (args.line + "\n").encode("utf-8")
    ctx.check_lease()
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise _os_error(e, "open", target) from None
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        size = os.fstat(fd).st_size
    except OSError as e:
        raise _os_error(e, "append to", target) from None
    finally:
        os.close(fd)
    return AppendResult(bytes=size)


# -- file.delete ------------------------------------------------------------------------


class DeleteResult(BaseModel):
    """``deleted``: True when a file was removed, False when there was none."""

    deleted: bool


def _delete_mock(args: PathArgs) -> DeleteResult:
    """Synthetic result: ``deleted`` True (nothing is looked at)."""
    return DeleteResult(deleted=True)


def _delete_dry_run(args: PathArgs, ctx: ToolContext) -> dict[str, Any]:
    target = ctx.path(args.path)
    exists = os.path.lexists(target)
    is_dir = target.is_dir() and not target.is_symlink()
    size = target.lstat().st_size if exists and not is_dir else None
    return {
        "path": str(target),
        "exists": exists,
        "size": size,
        "would_delete": exists and not is_dir,
        "is_directory": is_dir,
    }


@tool(
    "file.delete",
    args=PathArgs,
    result=DeleteResult,
    description="Delete a file (not reversible; a missing file is not an error).",
    risk=Risk.HIGH,
    idempotent=True,
    timeout_s=60.0,
    retry=DEFAULT_RETRY,
    resources=_write_claim,
    mock=_delete_mock,
    dry_run=_delete_dry_run,
)
def file_delete(args: PathArgs, ctx: ToolContext) -> DeleteResult:
    """Remove the file at ``args.path`` (a symlink itself, not its target).

    Raises :class:`ToolError` for a directory (``IsADirectoryError``) or when an ``OSError``
    stops the removal.
    """
    target = ctx.path(args.path)
    if target.is_dir() and not target.is_symlink():
        raise ToolError(f"cannot delete {target}: it is a directory", error_type="IsADirectoryError")
    ctx.check_lease()
    try:
        target.unlink()
    except FileNotFoundError:
        return DeleteResult(deleted=False)
    except OSError as e:
        raise _os_error(e, "delete", target) from None
    _fsync_dir(target.parent)
    return DeleteResult(deleted=True)
