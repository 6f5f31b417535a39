"""The tool registry: one place where contracts are registered and looked up.

Tools arrive three ways, all ending in :meth:`ToolRegistry.register`: the built-ins
(:mod:`buddy.tools.builtin`), the ``@buddy.tool(...)`` decorator in any imported module
(``--tools pkg.module`` or ``BUDDY_TOOLS``), and the ``buddy.tools`` entry-point group
(each entry point names a module to import or a :class:`ToolContract`).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points

from buddy.errors import ContractError, UnknownToolError
from buddy.tools.contract import ToolContract

ENTRY_POINT_GROUP = "buddy.tools"


class ToolRegistry:
    """Contracts by name. Registering a second, different contract under a taken name fails."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolContract] = {}

    def register(self, contract: ToolContract) -> ToolContract:
        """Add ``contract``; raises :class:`ContractError` on a name clash."""
        if not isinstance(contract, ToolContract):
            raise ContractError(f"expected a ToolContract, got {contract!r}")
        old = self._tools.get(contract.name)
        if old is not None and old.run is not contract.run:
            raise ContractError(f"tool {contract.name!r} is already registered by {old.run!r}")
        self._tools[contract.name] = contract
        return contract

    def get(self, name: str) -> ToolContract:
        """The contract named ``name``; raises :class:`UnknownToolError` listing the known ones."""
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(
                f"unknown tool {name!r}; known tools: {', '.join(sorted(self._tools))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ToolContract]:
        return iter(sorted(self._tools.values(), key=lambda c: c.name))

    def __len__(self) -> int:
        return len(self._tools)

    def import_modules(self, modules: Iterable[str]) -> None:
        """Import each dotted module so its ``@buddy.tool`` decorators register.

        Raises :class:`ContractError` when a module cannot be imported.
        """
        for mod in modules:
            mod = mod.strip()
            if not mod:
                continue
            try:
                importlib.import_module(mod)
            except ImportError as e:
                raise ContractError(f"cannot import tool module {mod!r}: {e}") from None

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Load the ``buddy.tools`` entry points: a module (imported) or a ToolContract."""
        for ep in entry_points(group=group):
            try:
                obj = ep.load()
            except Exception as e:  # a broken plugin must not hide the others' names
                raise ContractError(f"entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
            if isinstance(obj, ToolContract):
                self.register(obj)


#: The process-wide registry the decorator writes to and the worker and coordinator read.
REGISTRY = ToolRegistry()
_loaded = False


def default_registry(extra_modules: Iterable[str] = ()) -> ToolRegistry:
    """The process registry with the built-ins, entry points and ``extra_modules`` loaded."""
    global _loaded
    if not _loaded:
        import buddy.tools.builtin  # noqa: F401  (registers on import)

        REGISTRY.load_entry_points()
        _loaded = True
    REGISTRY.import_modules(extra_modules)
    return REGISTRY
