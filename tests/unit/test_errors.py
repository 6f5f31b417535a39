"""Every exception class of ``buddy`` and ``workers`` derives from :class:`BuddyError` and is
drawn in the tree of :mod:`buddy.errors`; :class:`PlanError` carries its problems as data."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
from types import ModuleType

import pytest

import buddy
import buddy.errors
import workers
from buddy.errors import MAX_ERRORS, BuddyError, PlanError


def _modules(package: ModuleType) -> list[ModuleType]:
    """``package`` and every module under it, imported (``__main__`` modules left out: they run)."""
    out = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        out.append(importlib.import_module(info.name))
    return out


def _exception_classes() -> list[type[BaseException]]:
    """The exception classes defined (not imported) in a module of ``buddy`` or ``workers``."""
    found: dict[str, type[BaseException]] = {}
    for module in [*_modules(buddy), *_modules(workers)]:
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def _tree() -> set[str]:
    """The class names drawn in the tree of :mod:`buddy.errors`' docstring (its indented lines)."""
    names = set()
    for line in (buddy.errors.__doc__ or "").splitlines():
        if line.startswith("    "):
            words = line.strip(" │├└─").split()
            if words:
                names.add(words[0])
    return names


def test_the_walk_finds_the_errors() -> None:
    names = {cls.__name__ for cls in _exception_classes()}
    assert {"BuddyError", "PlanError", "ToolError", "RedisUnavailable"} <= names


@pytest.mark.parametrize("cls", _exception_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_error_is_a_buddy_error_in_the_tree(cls: type[BaseException]) -> None:
    assert issubclass(cls, BuddyError), f"{cls.__module__}.{cls.__qualname__} does not derive from BuddyError"
    assert cls.__name__ in _tree(), f"{cls.__name__} is not drawn in the tree of buddy.errors"
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} has no docstring"


def test_the_tree_draws_only_classes_that_exist() -> None:
    assert _tree() == {cls.__name__ for cls in _exception_classes()}


def test_plan_error_prints_its_problems_and_pickles() -> None:
    err = PlanError([("plan.jsonl", 3, "unknown tool 'x'"), ("plan.jsonl", 0, "plan has no tasks")])
    assert err.errors == [("plan.jsonl", 3, "unknown tool 'x'"), ("plan.jsonl", 0, "plan has no tasks")]
    assert str(err) == "plan.jsonl:3: unknown tool 'x'\nplan.jsonl: plan has no tasks"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is PlanError
    assert again.errors == err.errors and str(again) == str(err)
    assert PlanError.single("<tasks>", "conflict (x); resolution is reject").errors == [
        ("<tasks>", 0, "conflict (x); resolution is reject")
    ]


def test_plan_error_caps_what_it_prints_not_what_it_holds() -> None:
    err = PlanError(("p", n, "bad") for n in range(1, MAX_ERRORS + 3))
    assert len(err.errors) == MAX_ERRORS + 2
    lines = str(err).split("\n")
    assert len(lines) == MAX_ERRORS + 1
    assert lines[-1] == "… and 2 more errors"
    assert PlanError([("p", 1, "a")] * (MAX_ERRORS + 1)).lines()[-1] == "… and 1 more error"
