"""What the file built-ins (:mod:`buddy.tools.builtin.files`) share: their path argument and
claims, and file access under the filesystem policy (:mod:`buddy.tools.builtin.fspolicy`).

:func:`checked` applies the policy to a path, :func:`refusal` reports it for a ``dry_run``;
:func:`atomic_write` writes through a temporary file and ``os.replace``, fenced by the task's
lease; :func:`claim` names the ``file:<absolute path>`` resource a tool claims, after the
lexical policy check.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from buddy.errors import NotARegularFileError, OutsideRootError, ToolError
from buddy.models import ResourceClaim
from buddy.tools import ToolContext, file_claim
from buddy.tools.builtin import fspolicy

#: Bytes read at a time when hashing a file.
CHUNK = 1024 * 1024
#: The suffix of the temporary file of an atomic write, next to its target.
TMP_SUFFIX = ".buddy-tmp"


def resolve(path: str, workdir: Path) -> Path:
    """``path`` made absolute against ``workdir`` (``~`` expanded), as :meth:`ToolContext.path` does."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else workdir / p


def os_error(e: OSError, what: str, path: Path) -> ToolError:
    """A :class:`~buddy.errors.ToolError` for ``e``: ``cannot WHAT PATH: reason``, typed by its class name."""
    reason = e.strerror or str(e)
    return ToolError(f"cannot {what} {path}: {reason}", error_type=type(e).__name__)


def checked(args: PathArgs, ctx: ToolContext, what: str, *, follow_last: bool = True) -> Path:
    """The real path ``args.path`` names, after the filesystem policy (:func:`fspolicy.check_path`).

    Raises :class:`~buddy.errors.OutsideRootError` (``OutsideRoot``, denied) or
    :class:`~buddy.errors.NotARegularFileError` / ``IsADirectoryError`` (failed).
    """
    return fspolicy.check_path(args.path, ctx.workdir, fspolicy.file_root(), what, follow_last=follow_last)


def refusal(
    args: PathArgs, ctx: ToolContext, what: str, *, follow_last: bool = True
) -> dict[str, Any] | None:
    """For a ``dry_run``: the policy's refusal of ``args.path`` (``OutsideRoot`` or
    ``NotARegularFile``) as ``path``, ``refused`` (the message) and ``error_type``; None when the
    policy has nothing against it (a directory or a missing file is left to the preview)."""
    try:
        checked(args, ctx, what, follow_last=follow_last)
    except (OutsideRootError, NotARegularFileError) as e:
        return {"path": str(ctx.path(args.path)), "refused": str(e), "error_type": e.error_type}
    except ToolError:
        pass  # a directory: the preview itself says so
    return None


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries to disk (a rename or unlink in it); errors are ignored."""
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


def atomic_write(target: Path, data: bytes, mode: int | None, ctx: ToolContext | None = None) -> None:
    """Write ``data`` to ``target`` through a temporary file in its directory and ``os.replace``.

    ``mode`` (permission bits) is applied to the new file when given. With ``ctx``, the lease
    is checked (``ctx.check_lease``) right before the ``os.replace`` that commits the effect,
    and so is ``target``: something other than a regular file there is never replaced.
    Raises ``OSError``, :class:`~buddy.errors.LeaseLostError` or
    :class:`~buddy.errors.NotARegularFileError` (nothing replaced).
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        if ctx is not None:
            ctx.check_lease()
        fspolicy.ensure_replaceable(target, "write")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)
    if ctx is not None:
        ctx.confirm_lease()  # a pause between the check and the rename: needs_review, not success


def sha256_hex(data: bytes) -> str:
    """The sha256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def current(target: Path) -> bytes | None:
    """The file's bytes now (None when it does not exist)."""
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return None


def check_target(target: Path) -> None:
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


def claim(args: PathArgs, workdir: Path, mode: str) -> list[ResourceClaim]:
    """The file claim; with ``BUDDY_FILE_ROOT`` set, first the lexical policy check (no
    filesystem call): raises :class:`~buddy.errors.OutsideRootError` whose
    message starts with ``args.path:``, which the plan loader reports on the plan line."""
    root = fspolicy.file_root()
    if root is not None:
        try:
            fspolicy.check_lexical(args.path, workdir, root)
        except OutsideRootError as e:
            raise OutsideRootError(f"args.path: {e}") from None
    return [file_claim(resolve(args.path, workdir), mode)]


def read_claim(args: PathArgs, workdir: Path) -> list[ResourceClaim]:
    """The ``read`` claim of ``args.path`` (see :func:`claim`)."""
    return claim(args, workdir, "read")


def write_claim(args: PathArgs, workdir: Path) -> list[ResourceClaim]:
    """The ``write`` claim of ``args.path`` (see :func:`claim`)."""
    return claim(args, workdir, "write")


def read_regular(target: Path) -> bytes:
    """The bytes of the regular file ``target`` (:func:`fspolicy.open_regular`); raises ``OSError``
    or :class:`~buddy.errors.NotARegularFileError`."""
    with os.fdopen(fspolicy.open_regular(target, os.O_RDONLY, "read"), "rb") as f:
        return f.read()
