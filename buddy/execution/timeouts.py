"""A hard stop for a live tool call that runs past its timeout (SIGALRM in the worker's main thread).

Celery's own time limits (``task_time_limit``) stop a whole batch; Buddy stops one task's tool
call and turns it into a ``timed_out`` outcome (:class:`buddy.errors.ToolTimeoutError`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from buddy.errors import ToolTimeoutError

#: Seconds past a tool's timeout before the worker's alarm stops it (the tool's own timeout,
#: e.g. ``subprocess`` for ``shell``, gets the first chance to end it cleanly).
HARD_TIMEOUT_GRACE_S = 1.0


#: What the armed alarm of this process stops: (tool name, seconds). Set only in the main thread.
_alarm: list[tuple[str, float]] = []


def _on_alarm(signum: int, frame: Any) -> None:
    what, seconds = _alarm[-1] if _alarm else ("the tool", 0.0)
    raise ToolTimeoutError(f"{what} ran past its timeout and was stopped after {seconds:g} s")


@contextmanager
def hard_timeout(seconds: float, what: str) -> Iterator[None]:
    """Stop the enclosed call with :class:`ToolTimeoutError` after ``seconds`` (SIGALRM).

    Works where Celery runs tasks in a process's main thread (the ``prefork`` and ``solo``
    pools); in the ``threads`` pool it does nothing and a tool relies on its own timeout and
    ``ctx.deadline``, as Celery's own time limits do (they need prefork too). The handler is
    installed once per process (again only if someone replaced it); each call only arms and
    disarms the timer (``setitimer``).
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    _alarm.append((what, seconds))
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _alarm.pop()
