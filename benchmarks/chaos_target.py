"""The ``python.call`` target of the chaos suite (:mod:`benchmarks.chaos`): an irreversible effect.

Workers of the chaos fleet allow this module (``BUDDY_PYTHON_ALLOW=benchmarks.chaos_target``).
:func:`append_line` appends one line to a ledger file, between two sleeps, so that a fault
can land before, during or after the effect; the ledger is the ground truth the suite
judges Buddy's outcomes against (a line twice is a duplicated irreversible effect).
"""

from __future__ import annotations

import os
import time


def append_line(path: str, line: str, before_s: float = 0.0, after_s: float = 0.0) -> dict[str, str]:
    """Sleep ``before_s``, append ``line`` + newline to ``path`` (created if missing; one
    ``write`` with ``O_APPEND``, then ``fsync``), sleep ``after_s``; returns ``{"line": line}``."""
    if before_s > 0:
        time.sleep(before_s)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if after_s > 0:
        time.sleep(after_s)
    return {"line": line}
