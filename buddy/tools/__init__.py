"""Tools and their contracts: registration (:func:`tool`), lookup, built-ins."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from buddy.errors import ContractError
from buddy.models import ResourceClaim, Risk
from buddy.tools.contract import RetryPolicy, ToolContext, ToolContract
from buddy.tools.registry import REGISTRY, ToolRegistry, default_registry

__all__ = [
    "REGISTRY",
    "ResourceClaim",
    "RetryPolicy",
    "Risk",
    "ToolContext",
    "ToolContract",
    "ToolRegistry",
    "default_registry",
    "file_claim",
    "tool",
]

_OPTIONS = {
    "description",
    "risk",
    "reversible",
    "rollback",
    "idempotent",
    "exclusive",
    "timeout_s",
    "retry",
    "resources",
    "mock",
    "dry_run",
    "risk_of",
    "idempotent_of",
    "expected_duration",
    "timeout_of",
    "registry",
}


def tool(
    name: str,
    *,
    args: type[BaseModel],
    result: type[BaseModel],
    **options: Any,
) -> Callable[[Callable[[Any, ToolContext], Any]], ToolContract]:
    """Register the decorated ``fn(args, ctx)`` as the tool ``name``.

    ``args`` and ``result`` are the pydantic argument and result models. ``options`` are the
    other :class:`ToolContract` fields (``risk``, ``reversible``, ``rollback``, ``idempotent``,
    ``exclusive``, ``timeout_s``, ``retry``, ``resources``, ``mock``, ``dry_run``, ``risk_of``,
    ``idempotent_of``, ``expected_duration``, ``timeout_of``, ``description``) plus ``registry`` (default: the
    process registry). The description defaults to the function's docstring's first line.

    Raises :class:`ContractError` for an unknown option or a contract that does not hold
    together (for example ``reversible=True`` without a ``rollback``).
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ContractError(
            f"tool {name!r}: unknown contract option(s) {', '.join(unknown)}; "
            f"the options are: {', '.join(sorted(_OPTIONS))}"
        )
    given: ToolRegistry | None = options.pop("registry", None)
    registry = REGISTRY if given is None else given  # an empty registry is falsy: test for None

    def decorate(fn: Callable[[Any, ToolContext], Any]) -> ToolContract:
        description = options.pop("description", None) or (fn.__doc__ or name).strip().splitlines()[0]
        contract = ToolContract(
            name=name, description=description, args_model=args, result_model=result, run=fn, **options
        )
        return registry.register(contract)

    return decorate


def file_claim(path: Path, mode: str = "write") -> ResourceClaim:
    """The claim on a file: ``file:<absolute path>``."""
    return ResourceClaim(name=f"file:{path.resolve()}", mode="read" if mode == "read" else "write")
