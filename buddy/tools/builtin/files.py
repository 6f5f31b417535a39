"""File built-ins: ``file.sha256``, ``file.write``, ``file.append`` and ``file.delete``.

Relative paths resolve against the campaign's workdir (:meth:`ToolContext.path`); each tool
claims its file (``file:<absolute path>``: read for ``file.sha256``, write for the others).
Text is UTF-8. ``file.write`` is atomic (a temporary file in the same directory, then
``os.replace``) and reversible: its rollback puts the old bytes back or removes a file it created,
only while the file still holds what the write wrote (else ``ChangedSinceWrite``: a newer
writer's bytes are never undone). Every commit is fenced: the lease is checked right before it
(``ctx.check_lease``) and confirmed right after (``ctx.confirm_lease``: a lease lost in between
ends the task ``needs_review``), rollbacks included.

Every tool applies the filesystem policy of :mod:`buddy.tools.builtin.fspolicy`, in ``execute``
and in ``dry_run``:

- regular files only: a FIFO, socket or device node is refused with ``error_type``
  ``NotARegularFile`` (outcome ``failed``), a directory with ``IsADirectoryError``; files are
  opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat``, so ``file.sha256`` of
  ``/dev/zero`` or of a FIFO fails at once, and ``file.write`` never replaces ``/dev/null``;
- with ``BUDDY_FILE_ROOT`` set, a path outside the root (``~``, an absolute path elsewhere,
  ``..`` climbing out, a symlink leading out: checked with ``os.path.realpath`` on the worker)
  is refused with ``error_type`` ``OutsideRoot`` (:class:`~buddy.errors.ToolDeniedError`:
  outcome ``denied``, nothing touched). The plan loader already refuses the lexical cases
  (claims functions raise, so ``buddy validate`` prints ``plan.jsonl:LINE: args.path: ...``)
  when the coordinator has ``BUDDY_FILE_ROOT`` set too.

A ``dry_run`` whose path the policy refuses returns ``{"path": ..., "refused": <message>,
"error_type": <type>}`` and looks at nothing else.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import glob
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, field_validator

from buddy.errors import NotARegularFileError, ToolError
from buddy.models import Risk
from buddy.tools import ToolContext, tool
from buddy.tools.builtin import fspolicy
from buddy.tools.builtin.basic import DEFAULT_RETRY, NO_RETRY
from buddy.tools.builtin.fileio import (
    CHUNK,
    TMP_SUFFIX,
    PathArgs,
    atomic_write,
    check_target,
    checked,
    current,
    fsync_dir,
    os_error,
    read_claim,
    read_regular,
    refusal,
    sha256_hex,
    write_claim,
)

#: Largest diff (characters) a ``file.write`` preview shows; longer diffs are cut with a note.
MAX_DIFF_CHARS = 64 * 1024


# -- file.sha256 ------------------------------------------------------------------------


class Sha256Result(BaseModel):
    """``sha256``: hex digest of the file's bytes; ``bytes``: its size."""

    sha256: str
    bytes: int


def _sha256_mock(args: PathArgs) -> Sha256Result:
    """Synthetic result: the digest of the *path string* (not of any content) and 0 bytes."""
    return Sha256Result(sha256=hashlib.sha256(args.path.encode("utf-8")).hexdigest(), bytes=0)


def _sha256_dry_run(args: PathArgs, ctx: ToolContext) -> dict[str, Any]:
    refused = refusal(args, ctx, "read")
    if refused is not None:
        return refused
    target = ctx.path(args.path)
    return {"path": str(target), "exists": target.is_file()}


@tool(
    "file.sha256",
    args=PathArgs,
    result=Sha256Result,
    description="SHA-256 digest and size of a file.",
    risk=Risk.LOW,
    idempotent=True,
    timeout_s=300.0,
    retry=DEFAULT_RETRY,
    resources=read_claim,
    mock=_sha256_mock,
    dry_run=_sha256_dry_run,
)
def file_sha256(args: PathArgs, ctx: ToolContext) -> Sha256Result:
    """Hash the regular file at ``args.path`` (symlinks followed).

    Raises :class:`~buddy.errors.ToolDeniedError` ``OutsideRoot`` for a path outside
    ``BUDDY_FILE_ROOT``; :class:`ToolError` ``NotARegularFile`` for a FIFO, socket or device,
    ``IsADirectoryError`` for a directory, or the ``OSError`` class name (e.g.
    ``FileNotFoundError``) when it cannot be read.
    """
    target = checked(args, ctx, "read")
    digest = hashlib.sha256()
    size = 0
    try:
        fd = fspolicy.open_regular(target, os.O_RDONLY, "read")
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise os_error(e, "read", target) from None
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
    refused = refusal(args, ctx, "write")
    if refused is not None:
        return refused
    target = ctx.path(args.path)
    exists = target.is_file()
    old = ""
    read_error: str | None = None
    if exists:
        try:
            old = read_regular(checked(args, ctx, "write")).decode("utf-8", errors="replace")
        except (OSError, ToolError) as e:
            read_error = (e.strerror or str(e)) if isinstance(e, OSError) else str(e)
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
    that died half-way left next to the file are removed. Something other than a regular file
    at the path (a device node, a FIFO) is neither replaced nor removed. Raises
    :class:`ToolError` when the file cannot be restored or removed.
    """
    if not undo:
        return
    target = Path(undo["path"]) if undo.get("path") else ctx.path(args.path)
    try:
        try:
            fspolicy.ensure_replaceable(target, "roll back")
        except NotARegularFileError:
            return  # not the file this write made (a FIFO, a device): leave it, never read it
        now = current(target)
        old = base64.b64decode(undo["content_b64"]) if undo.get("existed") else None
        if now == old:
            pass  # the write never landed: nothing to undo
        elif undo.get("written_sha256") and (now is None or sha256_hex(now) != undo["written_sha256"]):
            raise ToolError(
                f"cannot roll back {target}: it changed since this task wrote it (another writer); "
                "left as it is",
                error_type="ChangedSinceWrite",
            )
        elif old is not None:
            atomic_write(target, old, undo.get("mode"), ctx)  # fenced like the write itself
        else:
            try:
                fspolicy.ensure_replaceable(target, "roll back")
            except NotARegularFileError:
                pass  # not the file this write created: leave it
            else:
                ctx.check_lease()
                target.unlink(missing_ok=True)
                fsync_dir(target.parent)
                ctx.confirm_lease()
    except OSError as e:
        raise os_error(e, "roll back", target) from None
    # A worker that died mid-write leaves its temporary file; the write claim means it is ours.
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*{TMP_SUFFIX}"):
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
    resources=write_claim,
    mock=_write_mock,
    dry_run=_write_dry_run,
)
def file_write(args: WriteArgs, ctx: ToolContext) -> WriteResult:
    """Replace the regular file at ``args.path`` with ``args.content``, creating it if needed.

    A symlink is followed: its target file is replaced (the claim names the target too); with
    ``BUDDY_FILE_ROOT`` set, a target outside the root is refused. Before writing it records,
    through ``ctx.record_undo``, the absolute path, whether the file existed, its old bytes
    (base64) and permission bits. Raises :class:`~buddy.errors.ToolDeniedError` ``OutsideRoot``
    for a path outside the root; :class:`ToolError` when the parent directory is missing
    (``ParentNotFound``), the path is a directory (``IsADirectoryError``) or a FIFO, socket or
    device (``NotARegularFile``: never replaced), or an ``OSError`` stops the read or write
    (``error_type`` its class name).
    """
    target = checked(args, ctx, "write")
    check_target(target)
    data = args.content.encode("utf-8")
    existed, old, mode = False, b"", None
    try:
        fd = fspolicy.open_regular(target, os.O_RDONLY, "write")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise os_error(e, "read", target) from None
    else:
        try:
            with os.fdopen(fd, "rb") as f:
                existed, mode = True, stat.S_IMODE(os.fstat(f.fileno()).st_mode)
                old = f.read()
        except OSError as e:
            raise os_error(e, "read", target) from None
    ctx.record_undo(
        {
            "path": str(target),
            "existed": existed,
            "content_b64": base64.b64encode(old).decode("ascii") if existed else None,
            "mode": mode,
            "written_sha256": sha256_hex(data),
        }
    )
    try:
        atomic_write(target, data, mode, ctx)
    except OSError as e:
        raise os_error(e, "write", target) from None
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
    refused = refusal(args, ctx, "append to")
    if refused is not None:
        return refused
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
    resources=write_claim,
    mock=_append_mock,
    dry_run=_append_dry_run,
)
def file_append(args: AppendArgs, ctx: ToolContext) -> AppendResult:
    """Append ``args.line`` and ``\\n`` to the regular file (``O_APPEND``, then ``fsync``).

    The file is created (mode 0644 before umask) when missing; a symlink is followed. Raises
    :class:`~buddy.errors.ToolDeniedError` ``OutsideRoot`` for a path outside
    ``BUDDY_FILE_ROOT``; :class:`ToolError` when the parent directory is missing
    (``ParentNotFound``), the path is a directory (``IsADirectoryError``) or a FIFO, socket or
    device (``NotARegularFile``), or an ``OSError`` stops the write.
    """
    target = checked(args, ctx, "append to")
    check_target(target)
    data = (args.line + "\n").encode("utf-8")
    ctx.check_lease()
    try:
        fd = fspolicy.open_regular(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "append to", 0o644)
    except OSError as e:
        raise os_error(e, "open", target) from None
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        size = os.fstat(fd).st_size
    except OSError as e:
        raise os_error(e, "append to", target) from None
    finally:
        os.close(fd)
    ctx.confirm_lease()
    return AppendResult(bytes=size)


# -- file.delete ------------------------------------------------------------------------


class DeleteResult(BaseModel):
    """``deleted``: True when a file was removed, False when there was none."""

    deleted: bool


def _delete_mock(args: PathArgs) -> DeleteResult:
    """Synthetic result: ``deleted`` True (nothing is looked at)."""
    return DeleteResult(deleted=True)


def _delete_dry_run(args: PathArgs, ctx: ToolContext) -> dict[str, Any]:
    refused = refusal(args, ctx, "delete", follow_last=False)
    if refused is not None:
        return refused
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
    resources=write_claim,
    mock=_delete_mock,
    dry_run=_delete_dry_run,
)
def file_delete(args: PathArgs, ctx: ToolContext) -> DeleteResult:
    """Remove the regular file at ``args.path``, or a symlink itself (not its target).

    With ``BUDDY_FILE_ROOT`` set, the symlink's directory must resolve inside the root (where
    the link leads does not matter: only the link goes). Raises
    :class:`~buddy.errors.ToolDeniedError` ``OutsideRoot`` for a path outside the root;
    :class:`ToolError` for a directory (``IsADirectoryError``), a FIFO, socket or device
    (``NotARegularFile``: never removed) or when an ``OSError`` stops the removal.
    """
    target = checked(args, ctx, "delete", follow_last=False)
    ctx.check_lease()
    try:
        target.unlink()
    except FileNotFoundError:
        return DeleteResult(deleted=False)
    except OSError as e:
        raise os_error(e, "delete", target) from None
    fsync_dir(target.parent)
    ctx.confirm_lease()
    return DeleteResult(deleted=True)
