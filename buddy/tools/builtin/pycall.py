"""The ``python.call`` built-in: call an allow-listed Python function by its dotted name.

``target`` is ``pkg.module:function`` (the function part may be dotted, ``module:Class.method``).
An *allowed module* is one whose name equals, or sits under, a prefix in ``BUDDY_PYTHON_ALLOW``
(:attr:`buddy.config.Settings.python_allow`): ``json`` allows ``json`` and ``json.decoder``,
not ``jsonschema``; the module the target's own module name imports counts as allowed too
(``os.path`` is ``posixpath``). The checks (:func:`resolve_target`):

1. the target's module name must be allowed; this is checked before anything is imported;
2. every step of the attribute path must stay in allowed modules: a step that is a module must
   be an allowed module (``mymod:os.system`` is refused, ``json:decoder.JSONDecoder`` is not),
   any other object must be defined in one (its ``__module__``);
3. so must the final object; for a bound method (a classmethod, a method of an instance, a
   builtin bound to its module) its owner must be too.

So names an allowed module imported from elsewhere are refused: ``mymod:join`` after
``from os.path import join``, builtins (``mymod:open``, ``mymod:print``), and objects with no
defining module (a ``dict``'s methods). Every refusal is a :class:`~buddy.errors.ToolDeniedError`
(outcome ``denied``) raised before the call; ``dry_run`` reports the same decision in
``allowed`` (importing the module only when its name is allowed).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
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


def _defining_module(obj: Any) -> str | None:
    """The name of the module that defines ``obj``: a module's own name, else its ``__module__``
    (an instance's falls back to its class's); None when it has none."""
    if inspect.ismodule(obj):
        return obj.__name__
    try:
        name = getattr(obj, "__module__", None)
    except Exception:
        return None
    return name if isinstance(name, str) else None


def _owner_module(obj: Any) -> str | None:
    """For a bound method or a builtin bound to an object: the module defining that object
    (a class's own module, an instance's class's module, a module's name); None when unbound."""
    if not (inspect.ismethod(obj) or inspect.isbuiltin(obj)):
        return None
    owner = getattr(obj, "__self__", None)
    if owner is None:
        return None
    if inspect.ismodule(owner):
        return owner.__name__
    cls = owner if inspect.isclass(owner) else type(owner)
    return _defining_module(cls) or "(no module)"


def _refuse(target: str, why: str, allow: list[str]) -> ToolDeniedError:
    listed = ", ".join(allow) if allow else "nothing"
    return ToolDeniedError(
        f"python.call: {target!r} is not allowed: {why}; BUDDY_PYTHON_ALLOW lists {listed}"
    )


def _check_step(obj: Any, shown: str, target: str, ok: Callable[[str], bool], allow: list[str]) -> None:
    """Raise :class:`ToolDeniedError` unless ``obj`` (reached as ``shown``) stays in allowed modules."""
    if inspect.ismodule(obj):
        if not ok(obj.__name__):
            raise _refuse(target, f"{shown!r} is the module {obj.__name__!r}, which is not allowed", allow)
        return
    where = _defining_module(obj)
    if where is None or not ok(where):
        place = f"module {where!r}" if where else "no module"
        raise _refuse(target, f"{shown!r} is defined in {place}, not in an allowed module", allow)
    owner = _owner_module(obj)
    if owner is not None and not ok(owner):
        raise _refuse(
            target, f"{shown!r} is bound to an object of module {owner!r}, which is not allowed", allow
        )


def resolve_target(target: str, allow: list[str]) -> Any:
    """Import the target's module and walk its attribute path, refusing anything outside the
    allowed modules (see the module docstring). Returns the final object (not called).

    Raises :class:`ToolDeniedError` for a refused module, step or final object (for a module
    name, before anything is imported); :class:`ToolError` when the import fails
    (``ImportError``-family class name) or a name is missing (``AttributeError``).
    """
    module_name, attr = split_target(target)
    if not is_allowed(module_name, allow):
        raise _refuse(target, f"module {module_name!r} is not on the list", allow)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise ToolError(
            f"python.call: cannot import {module_name!r}: {e}", error_type=type(e).__name__
        ) from None
    imported = obj.__name__

    def ok(name: str) -> bool:
        return name == imported or is_allowed(name, allow)

    shown = module_name
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ToolError(
                f"python.call: {target!r}: no attribute {part!r}", error_type="AttributeError"
            ) from None
        shown = f"{shown}.{part}"
        _check_step(obj, shown, target, ok, allow)
    return obj


def _mock(args: PyCallArgs) -> PyCallResult:
    """Synthetic result: ``None``; nothing is imported or called."""
    return PyCallResult(result=None)


def _dry_run(args: PyCallArgs, ctx: ToolContext) -> dict[str, Any]:
    """The call it would make and ``allowed``: the decision of :func:`resolve_target` (which
    imports the module only when its name is allowed). When the target cannot be resolved for
    another reason (import failure, missing name), ``error`` says why."""
    module, attr = split_target(args.target)
    allow = get_settings().python_allow
    out: dict[str, Any] = {
        "target": args.target,
        "module": module,
        "function": attr,
        "kwargs": args.kwargs,
        "allowed": False,
    }
    try:
        resolve_target(args.target, allow)
    except ToolDeniedError:
        return out
    except ToolError as e:
        out["error"] = str(e)
    out["allowed"] = True
    return out


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
    """Resolve the target (:func:`resolve_target`) and call it with ``args.kwargs``.

    Raises :class:`ToolDeniedError` when the module is not allow-listed (nothing is imported)
    or the attribute path or final object leaves the allowed modules (nothing is called);
    :class:`ToolError` when the import fails (``ImportError``-family class name), the name is
    missing (``AttributeError``) or not callable (``NotCallable``), the function raises
    (``error_type`` the exception's class name; a :class:`ToolError` it raises passes through
    unchanged) or its value is not JSON-serializable (``ResultNotJSON``).
    """
    obj = resolve_target(args.target, get_settings().python_allow)
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
