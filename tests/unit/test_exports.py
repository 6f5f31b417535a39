"""The public names of ``buddy`` are a contract: an accidental rename or removal fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import buddy

PUBLIC = [
    "ApprovalRequest",
    "BuddyError",
    "Campaign",
    "CampaignContext",
    "CampaignHooks",
    "CampaignResult",
    "ConfigError",
    "Fleet",
    "InfrastructureError",
    "Mode",
    "Outcome",
    "PlanError",
    "PlanSummary",
    "RetryPolicy",
    "RetryableToolError",
    "Risk",
    "TaskStatus",
    "ToolContext",
    "ToolContract",
    "ToolError",
    "__version__",
    "resume",
    "tool",
]

PACKAGE = Path(buddy.__file__).parent


def test_all_is_pinned() -> None:
    assert sorted(buddy.__all__) == sorted(PUBLIC)


def test_every_exported_name_exists() -> None:
    for name in buddy.__all__:
        assert getattr(buddy, name, None) is not None, name


def test_hooks_are_typed_no_ops() -> None:
    hooks = buddy.CampaignHooks()
    for name in (
        "before_campaign",
        "before_wave",
        "on_approvals",
        "on_progress",
        "after_wave",
        "after_campaign",
    ):
        assert callable(getattr(hooks, name)), name


def _sizes() -> tuple[dict[str, int], dict[str, int]]:
    modules, classes = {}, {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        rel = str(path.relative_to(PACKAGE.parent))
        modules[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                classes[f"{rel}:{node.name}"] = (node.end_lineno or node.lineno) - node.lineno + 1
    return modules, classes


def test_modules_and_classes_stay_small() -> None:
    """No module over ~500 lines, no class over ~300 (docs/architecture.md, "Layout")."""
    modules, classes = _sizes()
    assert {m: n for m, n in modules.items() if n > 550} == {}
    assert {c: n for c, n in classes.items() if n > 330} == {}
