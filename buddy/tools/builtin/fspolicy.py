"""The filesystem policy of the file tools (``file.sha256``, ``file.write``, ``file.append``,
``file.delete``).

Two rules, checked by the tools in ``execute`` and reported by their ``dry_run``:

**Regular files only.** A path that names a FIFO, a socket, a character or block device (e.g.
``/dev/null``, ``/dev/zero``) is refused with :class:`~buddy.errors.NotARegularFileError` (a
:class:`~buddy.errors.ToolError`, ``error_type`` ``NotARegularFile``: the outcome is ``failed``);
a directory with a :class:`~buddy.errors.ToolError` of ``error_type`` ``IsADirectoryError``.
The check is made on the real path (:func:`check_real`: ``os.path.realpath``, then ``lstat``)
and again on the open descriptor (:func:`open_regular`: ``O_NOFOLLOW | O_NONBLOCK``, then
``fstat``), so a FIFO with no writer or an endless device fails at once instead of holding a
worker slot until the timeout, and a file swapped for a symlink or a device in between is
caught. ``file.write`` never replaces a non-regular file (:func:`ensure_replaceable` runs right
before its ``os.replace``). ``file.delete`` also removes a symlink itself (not its target).

**Optional confinement.** When ``BUDDY_FILE_ROOT`` is set (:attr:`buddy.config.Settings.file_root`,
read by :func:`file_root` on the process that checks: the plan loader on the coordinator,
the tool on the worker), a path is refused with :class:`~buddy.errors.OutsideRootError` (a
:class:`~buddy.errors.ToolDeniedError`, ``error_type`` ``OutsideRoot``: the outcome is
``denied``, nothing is touched) when

- it starts with ``~`` (a home directory means different things on different machines);
- joined to the campaign's workdir and normalized (``..`` folded), it lies outside the root:
  an absolute path elsewhere, or ``..`` climbing out (:func:`check_lexical`, which makes no
  filesystem call, so the coordinator validates a large plan fast and without the files);
- at execution time, its real path (symlinks resolved with ``os.path.realpath`` on the worker,
  where the files live) lies outside the real path of the root (:func:`check_real`).

Unset, nothing is confined; the regular-file rule always holds.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from buddy.config import get_settings
from buddy.errors import NotARegularFileError, OutsideRootError, ToolError


def file_root() -> str | None:
    """``BUDDY_FILE_ROOT`` as an absolute, normalized path (``~`` expanded), or None when unset."""
    root = get_settings().file_root
    if not root or not root.strip():
        return None
    return os.path.abspath(os.path.expanduser(root.strip()))


def _inside(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or below it (both absolute and normalized)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _outside(given: str, resolved: str, root: str) -> str:
    """The refusal message: ``'x' is outside ...`` or ``'x' resolves to /y, outside ...``."""
    if resolved == given:
        return f"{given!r} is outside the file root {root} (BUDDY_FILE_ROOT)"
    return f"{given!r} resolves to {resolved}, outside the file root {root} (BUDDY_FILE_ROOT)"


def check_lexical(path: str, workdir: Path | str, root: str | None) -> Path:
    """``path`` made absolute against ``workdir`` and normalized, without any filesystem call.

    With ``root`` (absolute), raises :class:`OutsideRootError` when ``path`` starts with ``~`` or
    its normalized form lies outside ``root``. Symlinks are not looked at (:func:`check_real`
    does that where the files live). Without ``root``, ``~`` is expanded as
    :meth:`~buddy.tools.ToolContext.path` does and nothing is refused.
    """
    if root is None:
        path = os.path.expanduser(path)
    elif path.startswith("~"):
        raise OutsideRootError(
            f"{path!r} starts with '~', which is not allowed under the file root {root} "
            "(BUDDY_FILE_ROOT); give a path relative to the workdir or an absolute path in the root"
        )
    full = os.path.normpath(os.path.join(os.path.abspath(workdir), path))
    if root is not None:
        root = os.path.normpath(root)
        if not _inside(full, root):
            raise OutsideRootError(_outside(path, full, root))
    return Path(full)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def check_mode(mode: int, path: Path | str, what: str, *, allow_symlink: bool = False) -> None:
    """Raise unless ``mode`` (an ``st_mode``) is a regular file (or a symlink, with ``allow_symlink``).

    ``what`` is the verb of the message (``read``, ``write``, ``delete``). A directory raises a
    :class:`ToolError` of type ``IsADirectoryError``; anything else :class:`NotARegularFileError`.
    """
    if stat.S_ISREG(mode) or (allow_symlink and stat.S_ISLNK(mode)):
        return
    if stat.S_ISDIR(mode):
        raise ToolError(f"cannot {what} {path}: it is a directory", error_type="IsADirectoryError")
    raise NotARegularFileError(
        f"cannot {what} {path}: it is {_kind(mode)}; the file tools act on regular files only"
    )


def check_real(path: Path | str, root: str | None, what: str, *, follow_last: bool = True) -> Path:
    """The real path of ``path`` (absolute), checked where the file lives.

    ``os.path.realpath`` resolves every symlink (``follow_last=False`` keeps the last component
    as it is, for ``file.delete``, which removes a symlink itself). Raises
    :class:`OutsideRootError` when ``root`` is given and the result is outside the real path of
    ``root``; :class:`NotARegularFileError` (or ``IsADirectoryError``) when something other than a
    regular file is there (:func:`check_mode`). A missing file passes (the caller creates it or
    reports it); so does a path ``lstat`` cannot look at, for the caller's own call to report.
    """
    text = os.fspath(path)
    parent, name = os.path.split(text)
    if follow_last or name in ("", ".", ".."):
        real = os.path.realpath(text)
    else:
        real = os.path.join(os.path.realpath(parent), name)
    if root is not None:
        real_root = os.path.realpath(root)
        if not _inside(real, real_root):
            raise OutsideRootError(_outside(text, real, real_root))
    try:
        st = os.lstat(real)
    except OSError:
        return Path(real)
    check_mode(st.st_mode, real, what, allow_symlink=not follow_last)
    return Path(real)


def open_regular(path: Path | str, flags: int, what: str, mode: int = 0o644) -> int:
    """``os.open`` a regular file: ``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` are added to ``flags``,
    and the descriptor is checked with ``fstat``.

    ``O_NONBLOCK`` makes opening a FIFO return at once (no writer or reader to wait for) and has
    no effect on a regular file. Raises ``OSError`` from ``os.open`` (``ELOOP`` when the last
    component is a symlink), or :class:`NotARegularFileError` / ``IsADirectoryError`` (the
    descriptor is closed). Returns the open descriptor.
    """
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        check_mode(os.fstat(fd).st_mode, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_replaceable(path: Path | str, what: str) -> None:
    """Raise :class:`NotARegularFileError` (or ``IsADirectoryError``) when something other than a
    regular file is at ``path`` (``lstat``, so a symlink is refused too); a missing path passes.

    Called right before ``os.replace``/``unlink`` so a device node, FIFO or socket that appeared
    since the first check is never replaced or removed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    check_mode(st.st_mode, path, what)


def check_path(
    path: str, workdir: Path | str, root: str | None, what: str, *, follow_last: bool = True
) -> Path:
    """Both checks in execution order: :func:`check_lexical` (with a root), then :func:`check_real`
    on ``path`` made absolute against ``workdir`` (not normalized first, so ``link/..`` means what
    the kernel makes of it). Returns the real path the tool acts on."""
    if root is not None:
        check_lexical(path, workdir, root)
    p = Path(path).expanduser()
    return check_real(p if p.is_absolute() else Path(workdir) / p, root, what, follow_last=follow_last)
