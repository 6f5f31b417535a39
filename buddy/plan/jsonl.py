"""Reading plan and schedule files as strict JSON lines (README, "Plan format").

A plan file must be a regular file (a FIFO or a device would hang the read:
:func:`read_regular_file`); each line must be one JSON object that strict JSON allows: no
``NaN``/``Infinity``, no number out of a 64-bit float's range, no key given twice in one object
(at any depth; JSON parsers keep the last silently), no nesting deeper than
:data:`MAX_JSON_DEPTH`. Each problem becomes a ``FILE:LINE: message`` of a
:class:`~buddy.errors.FileErrors`.
"""

from __future__ import annotations

import gc
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import orjson

from buddy.errors import FileErrors, SpecialFileError

_json_loads: Callable[[bytes], Any] = orjson.loads

#: How deeply JSON objects and arrays may nest in a plan or schedule line, the line's own
#: object counting as level 1: ``{"args": {"a": [1]}}`` is 3 levels deep. Deeper lines are
#: errors, so that nothing after validation (conflict detection, message serialization, the
#: workers, the report) has to recurse through unbounded nesting.
MAX_JSON_DEPTH = 32

BOM = b"\xef\xbb\xbf"


_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: Path) -> bytes:
    """All bytes of ``path``, which must be a regular file (a symlink to one will do).

    Used for the plan, the schedule and the campaign config. The file is opened with
    ``O_NONBLOCK`` (which a regular file ignores) and checked with ``fstat`` before a byte is
    read: a FIFO would block until a writer came, a device such as ``/dev/zero`` never ends,
    a directory has no bytes. Each raises :class:`~buddy.errors.SpecialFileError` (an :class:`OSError`)
    at once instead. Raises :class:`OSError` when the file cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "a special file")
            raise SpecialFileError(f"not a regular file ({kind})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read()


def read_file(path: Path, what: str, errors: FileErrors) -> bytes | None:
    """The bytes of a plan or schedule file, or None after adding why not to ``errors``
    (``FILE: cannot read plan: …``, ``FILE: not a regular file (a FIFO)``)."""
    try:
        return read_regular_file(path)
    except SpecialFileError as e:
        errors.add(0, str(e))
    except OSError as e:
        errors.add(0, f"cannot read {what}: {e.strerror or e}")
    return None


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a plan is read (or its conflicts resolved).

    Reading a plan allocates a few objects per line and frees almost none, which makes the
    collector rescan the growing heap again and again (about half the time of a 100k-task
    plan). Plan records hold no reference cycles, so nothing is lost by waiting; the
    previous state is restored on the way out.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # The new objects would sit in the youngest generation and be rescanned by every
        # collection after this (about a second for a 100k-task plan): freeze them instead.
        # Frozen objects are still freed by reference counting when nothing uses them.
        gc.freeze()
        if was_enabled:
            gc.enable()


# -- reading JSONL ---------------------------------------------------------------------------


def lines_of(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(line number, stripped line)`` of each line that is not blank or a ``#`` comment."""
    for number, raw in enumerate(data.removeprefix(BOM).split(b"\n"), 1):
        text = raw.strip()
        if text and not text.startswith(b"#"):
            yield number, text


def decode_line(text: bytes, number: int, errors: FileErrors) -> dict[str, Any] | None:
    """The JSON object on a line, or None after adding why it is not one to ``errors``.

    For lines that passed :func:`screen` or :func:`json_problems` (so orjson reads them):
    the standard library keeps big ints exact (orjson makes them floats), so a message about
    ``"wave": 1000000000000000000000`` shows the int that was written."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        errors.add(number, _not_json(e, text))
        return None
    except (ValueError, RecursionError) as e:
        errors.add(number, f"not valid JSON: {e}")
        return None
    if not isinstance(obj, dict):
        errors.add(number, f"expected a JSON object, got {_json_type(obj)}")
        return None
    return obj


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


# -- strict JSON -----------------------------------------------------------------------------
#
# A plan line is read by pydantic (the fast path) or orjson (the slow path), and both are
# lenient where it hurts later: pydantic reads ``NaN``, ``Infinity`` and ``1e400``, neither
# sees a key given twice (the last one wins: ``{"tool": "noop", …, "tool": "file.delete"}``
# runs ``file.delete``), and nesting is only bounded by their recursion limits. So every line
# first passes a cheap screen (:func:`screen`; a plan line :func:`plain_json`, and the depth
# of its args when it holds many brackets), and the rare line it is not sure of the exact
# check, :func:`json_problems`.


def screen(text: bytes) -> bool:
    """True when a plan or schedule line certainly has none of the problems that
    :func:`json_problems` reports; False means "look closer", not "bad": at most
    :data:`MAX_JSON_DEPTH` ``{`` and ``[`` in the whole line (so it cannot nest deeper;
    brackets in strings only make the count too high), and :func:`plain_json`."""
    return text.count(b"{") + text.count(b"[") <= MAX_JSON_DEPTH and plain_json(text)


def plain_json(text: bytes) -> bool:
    """True when orjson reads a line (so it holds no ``NaN``, ``Infinity`` or number beyond a
    64-bit float) and no object of it repeats a key, at the cost of one orjson round trip
    and two byte counts at most (2-3 µs for a usual line, about 0.3 s for 100 000).

    Written back by orjson, each object keeps one ``key: value`` pair per distinct key. A
    line written compactly (``json.dumps(..., separators=(",", ":"))``, orjson) comes back
    byte for byte unless a pair was dropped. Otherwise, count colons: each pair has one
    ``:`` outside strings, and every string keeps its colons (orjson writes ``:`` as it
    is, and no escape but ``\\u003a`` stands for one: a line holding that is not called
    plain). So the line and its copy hold as many colons exactly when no pair was dropped,
    that is when no object repeats a key.
    """
    try:
        again = orjson.dumps(_json_loads(text))
    except (ValueError, TypeError):  # orjson.JSONDecodeError, orjson.JSONEncodeError
        return False
    return again == text or (b"\\u003" not in text and again.count(b":") == text.count(b":"))


def json_problems(text: bytes) -> tuple[list[str], Any]:
    """Why a line :func:`screen` is not sure of is not acceptable JSON: ``(messages, value)``,
    ``value`` being the parsed line (the last of repeated keys wins) or None when it cannot
    be read. No messages: the line is fine after all (a colon escaped as ``\\u003a``, many
    brackets but not nested deep).

    - ``not valid JSON: …`` (with the column): bad syntax, ``NaN`` or ``Infinity`` (not JSON
      numbers), a number beyond a 64-bit float (about ±1.8e308), bad UTF-8;
    - ``args nested deeper than 32 levels``: objects and arrays nested more than
      :data:`MAX_JSON_DEPTH` levels, the line's own object counting as level 1; named by the
      top-level field the nesting is under (``JSON nested …`` for a line that is not an
      object). Later stages recurse through a task's args: unbounded nesting would crash them;
    - ``duplicate key "tool"``: a key given twice in one object, at any depth (one message
      per key). JSON readers keep the last one silently, which is never what a plan means.
    """
    try:
        value = _json_loads(text)
    except json.JSONDecodeError as e:  # orjson's error is one
        deep = _deep_key_in(text) if text.count(b"{") + text.count(b"[") > MAX_JSON_DEPTH else None
        return [nested_message(deep) if deep is not None else _not_json(e, text)], None
    deep = _deep_key(value)
    if deep is not None:
        return [nested_message(deep)], value
    if plain_json(text):  # no repeated key: spare the slower search for one
        return [], value
    return [f"duplicate key {_quote(key)}" for key in _duplicate_keys(text)], value


def _not_json(e: json.JSONDecodeError, text: bytes) -> str:
    """``not valid JSON: <reason> (column N)``, with a hint for the non-JSON numbers."""
    hint = ""
    if "infinity" in e.msg:
        hint = "; a JSON number must fit a 64-bit float (at most about ±1.8e308)"
    elif text.decode("utf-8", "replace")[e.pos : e.pos + 9].lstrip("-").startswith(("NaN", "Infinity")):
        hint = "; NaN and Infinity are not JSON numbers"
    return f"not valid JSON: {e.msg} (column {e.colno}){hint}"


def nested_message(key: str) -> str:
    """The message for nesting deeper than :data:`MAX_JSON_DEPTH` under top-level ``key``."""
    if not key:
        where = "JSON"
    elif key.isidentifier() and len(key) <= 60:
        where = key
    else:
        where = _quote(key)
    return f"{where} nested deeper than {MAX_JSON_DEPTH} levels"


def _quote(key: str) -> str:
    """A key as JSON writes it, for a message (cut to 60 characters)."""
    return json.dumps(key if len(key) <= 60 else key[:57] + "...", ensure_ascii=False)


def _deep_key(value: Any) -> str | None:
    """The top-level key under which a parsed line nests deeper than :data:`MAX_JSON_DEPTH`
    (``""`` when the line is not an object), or None when it does not."""
    if not isinstance(value, dict):
        return "" if levels(value) > MAX_JSON_DEPTH else None
    return next((key for key, v in value.items() if 1 + levels(v) > MAX_JSON_DEPTH), None)


def levels(value: Any) -> int:
    """How many levels of objects and arrays ``value`` has (0 for a scalar, 1 for ``[1]``),
    counted up to ``MAX_JSON_DEPTH + 1``. Level by level, without recursion: a parsed line
    may nest up to orjson's own limit (1024)."""
    level = [value] if isinstance(value, (dict, list)) else []
    depth = 0
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        below: list[Any] = []
        for node in level:
            children = node.values() if isinstance(node, dict) else node
            below += [c for c in children if isinstance(c, (dict, list))]
        level = below
    return depth


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def _deep_key_in(text: bytes) -> str | None:
    """:func:`_deep_key` for a line orjson could not read (it stops at 1024 levels, and the
    line may be broken besides): one pass over its brackets, quotes and backslashes, skipping
    strings, that stops where the nesting gets too deep."""
    depth = 0
    in_string = False
    escaped = -1  # the position of the byte after a backslash in a string
    start = 0  # where the current string opened
    key = b""  # the last string closed at level 1: the key of the level-1 value being read
    is_object = False
    for m in _STRUCTURE.finditer(text):
        i = m.start()
        if i == escaped:
            continue
        c = text[i]
        if in_string:
            if c == 0x5C:  # backslash
                escaped = i + 1
            elif c == 0x22:  # closing quote
                in_string = False
                if depth == 1:
                    key = text[start + 1 : i]
        elif c == 0x22:
            in_string, start = True, i
        elif c in b"[{":
            depth += 1
            if depth == 1:
                is_object = c == 0x7B
            elif depth > MAX_JSON_DEPTH:
                return _key_text(key) if is_object else ""
        elif c in b"]}":
            depth -= 1
    return None


def _key_text(raw: bytes) -> str:
    """The text of a JSON string's raw bytes (between the quotes)."""
    try:
        return cast("str", json.loads(b'"' + raw + b'"'))
    except ValueError:
        return raw.decode("utf-8", "replace")


def _duplicate_keys(text: bytes) -> list[str]:
    """The keys that occur twice in one object of a line, at any depth, each once, in the
    order found (inner objects first). ``text`` is JSON that orjson has read."""
    found: dict[str, None] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    found[key] = None
                seen.add(key)
        return obj

    try:
        json.loads(text, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # pragma: no cover - orjson read it first
        pass
    return list(found)
