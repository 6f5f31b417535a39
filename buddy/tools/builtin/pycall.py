"""The ``python.call`` built-in: call an allow-listed Python function by its dotted name.

``target`` is ``pkg.module:function`` (the function part may be dotted, ``module:Class.method``).
The module must equal, or sit under, a prefix in ``BUDDY_PYTHON_ALLOW``
(:attr:`buddy.config.Settings.python_allow`): ``json`` allows ``json`` and ``json.decoder``,
not ``jsonschema``. The check happens before anything is imported.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from buddy.config import get_settings
from buddy.errors import ToolDeniedError, ToolError
from buddy.models import Risk
from buddy.tools import ToolContext, tool
from buddy.tools.builtin.basic import NO_RETRY

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TARGET_RE = rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$"


class PyCallArgs(BaseModel):
    """``target``: ``pkg.module:function``; ``kwargs``: keyword arguments of the call."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(pattern=TARGET_RE, max_length=512)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class PyCallResult(BaseModel):
    """``result``: the function's return value (JSON; tuples become lists)."""

    result: Any


def split_target(target: str) -> tuple[str, str]:
    """``pkg.mod:func`` as ``("pkg.mod", "func")``."""
    module, _, attr = target.partition(":")
    return module, attr


def is_allowed(module: str, allow: list[str]) -> bool:
    """True when ``module`` equals a prefix in ``allow`` or starts with ``prefix + "."``."""
    return any(module == p or module.startswith(p + ".") for p in allow if p)


def _mock(args: PyCallArgs) -> PyCallResult:
    """Synthetic result: ``None``; nothing is imported or called."""
    return PyCallResult(result=None)


def _dry_run(args: PyCallArgs, ctx: ToolContext) -> dict[str, Any]:
    module, attr = split_target(args.target)
    return {
        "target": args.target,
        "module": module,
        "function": attr,
        "kwargs": args.kwargs,
        "allowed": is_allowed(module, get_settings().python_allow),
    }


@tool(
    "python.call",
    args=PyCallArgs,
    result=PyCallResult,
    description="Call an allow-listed Python function with keyword arguments.",
    risk=Risk.MEDIUM,
    idempotent=False,
    timeout_s=60.0,
    retry=NO_RETRY,
    mock=_mock,
    dry_run=_dry_run,
)
def python_call(args: PyCallArgs, ctx: ToolContext) -> PyCallResult:
    """Import the target's module, look up the function and call it with ``args.kwargs``.

    Raises :class:`ToolDeniedError` when the module is not allow-listed (nothing is imported);
    :class:`ToolError` when the import fails (``ImportError``-family class name), the name is
    missing (``AttributeError``) or not callable (``NotCallable``), the function raises
    (``error_type`` the exception's class name; a :class:`ToolError` it raises passes through
    unchanged) or its value is not JSON-serializable (``ResultNotJSON``).
    """
    module_name, attr = split_target(args.target)
    allow = get_settings().python_allow
    if not is_allowed(module_name, allow):
        raise ToolDeniedError(
            f"python.call: module {module_name!r} is not allowed; BUDDY_PYTHON_ALLOW lists "
            f"{', '.join(allow) if allow else 'nothing'}"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise ToolError(
            f"python.call: cannot import {module_name!r}: {e}", error_type=type(e).__name__
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ToolError(
                f"python.call: {args.target!r}: no attribute {part!r}", error_type="AttributeError"
            ) from None
    if not callable(obj):
        raise ToolError(f"python.call: {args.target!r} is not callable", error_type="NotCallable")
    try:
        value = obj(**args.kwargs)
    except ToolError:
        raise
    except (Exception, SystemExit) as e:
        raise ToolError(
            f"python.call: {args.target} raised {type(e).__name__}: {e}", error_type=type(e).__name__
        ) from e
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ToolError(
            f"python.call: {args.target} returned a value that is not JSON ({type(value).__name__}): {e}",
            error_type="ResultNotJSON",
        ) from None
    return PyCallResult(result=json.loads(encoded))
