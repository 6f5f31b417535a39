"""The built-in tools; importing this package registers them in the process registry.

- :mod:`~buddy.tools.builtin.basic`: ``noop``, ``sleep``, ``flaky``
- :mod:`~buddy.tools.builtin.files`: ``file.sha256``, ``file.write``, ``file.append``, ``file.delete``
- :mod:`~buddy.tools.builtin.shell`: ``shell``
- :mod:`~buddy.tools.builtin.http`: ``http.request``
- :mod:`~buddy.tools.builtin.pycall`: ``python.call``
"""

from __future__ import annotations

from buddy.tools.builtin import basic, files, http, pycall, shell

__all__ = ["BUILTIN_TOOLS", "basic", "files", "http", "pycall", "shell"]

#: Names of the built-in tools.
BUILTIN_TOOLS = (
    "noop",
    "sleep",
    "flaky",
    "file.sha256",
    "file.write",
    "file.append",
    "file.delete",
    "shell",
    "http.request",
    "python.call",
)
