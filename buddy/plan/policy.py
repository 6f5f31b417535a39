"""Which resolution applies to which plan-time conflict: the ``conflicts:`` section of
campaign.yaml and the ``--conflict TYPE=RESOLUTION`` flags.

The conflict types and the resolutions are described in :mod:`buddy.plan.conflicts`, which
finds the conflicts of a plan and applies a :class:`ConflictPolicy` to them. This module
holds only the policy, so that the campaign config (:mod:`buddy.config`) can validate it
without the conflict detector and the tool registry.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field, model_validator


class ConflictType(StrEnum):
    """A kind of plan-time conflict between tasks (:mod:`buddy.plan.conflicts`)."""

    WRITE_WRITE = "write_write"
    READ_WRITE = "read_write"
    EXCLUSIVE_TOOL = "exclusive_tool"
    DUPLICATE_IRREVERSIBLE = "duplicate_irreversible"
    DEPENDENCY_VIOLATION = "dependency_violation"
    CAPABILITY_MISMATCH = "capability_mismatch"


class Resolution(StrEnum):
    """What is done about a conflict (:mod:`buddy.plan.conflicts`)."""

    SERIALIZE = "serialize"
    PRIORITY = "priority"
    DEDUPLICATE = "deduplicate"
    REJECT = "reject"


T, R = ConflictType, Resolution

#: The resolutions each conflict type may take.
APPLICABLE: dict[ConflictType, frozenset[Resolution]] = {
    T.WRITE_WRITE: frozenset({R.SERIALIZE, R.PRIORITY, R.REJECT}),
    T.READ_WRITE: frozenset({R.SERIALIZE, R.PRIORITY, R.REJECT}),
    T.EXCLUSIVE_TOOL: frozenset({R.SERIALIZE, R.PRIORITY, R.REJECT}),
    T.DUPLICATE_IRREVERSIBLE: frozenset({R.DEDUPLICATE, R.PRIORITY, R.REJECT}),
    T.DEPENDENCY_VIOLATION: frozenset({R.SERIALIZE, R.REJECT}),
    T.CAPABILITY_MISMATCH: frozenset({R.REJECT}),
}
#: The resolution of each conflict type when the policy names none.
DEFAULTS: dict[ConflictType, Resolution] = {
    T.WRITE_WRITE: R.SERIALIZE,
    T.READ_WRITE: R.SERIALIZE,
    T.EXCLUSIVE_TOOL: R.SERIALIZE,
    T.DUPLICATE_IRREVERSIBLE: R.DEDUPLICATE,
    T.DEPENDENCY_VIOLATION: R.REJECT,
    T.CAPABILITY_MISMATCH: R.REJECT,
}


class ConflictPolicy(BaseModel):
    """The resolution per conflict type (the ``conflicts:`` section of campaign.yaml)."""

    resolutions: dict[ConflictType, Resolution] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _applicable(self) -> ConflictPolicy:
        for t, r in self.resolutions.items():
            if r not in APPLICABLE[t]:
                ok = ", ".join(sorted(x.value for x in APPLICABLE[t]))
                raise ValueError(f"{r.value} does not apply to {t.value} conflicts (use one of: {ok})")
        return self

    def of(self, t: ConflictType) -> Resolution:
        """The resolution of conflicts of type ``t``: the policy's, else :data:`DEFAULTS`."""
        return self.resolutions.get(t, DEFAULTS[t])
