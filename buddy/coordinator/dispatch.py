"""Sending a wave: how many tasks go in one Celery message, and how long a wave may take.

:func:`batch_size` and :func:`wave_deadline_s` are pure; the coordinator applies them when it
builds a wave's chord (docs/architecture.md, data flow).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

from buddy.execution.timeouts import HARD_TIMEOUT_GRACE_S
from buddy.models import AgentSpec
from buddy.plan.model import PlannedTask
from buddy.tools.registry import ToolRegistry

#: Batches whose tasks are expected to take at least this long go one per message.
LONG_TASK_S = 0.5
#: Upper bound on tasks per message.
MAX_BATCH = 64
#: Work (seconds) worth one Celery message: below it a message costs more than it carries.
MESSAGE_WORK_S = 0.05
#: Buddy's own cost of a task in a batch (seconds), the floor of a task's expected work.
TASK_OVERHEAD_S = 0.001
#: The share of the visibility timeout a batch's worst case may fill (the rest is margin).
VISIBILITY_SHARE = 0.8


def batch_size(n_tasks: int, slots: int, expected_s: float | None, fixed: int | None = None) -> int:
    """Tasks per Celery message for one agent's share of a wave.

    ``fixed`` (``--batch-size``) wins. Tasks expected to take ``LONG_TASK_S`` or longer go
    one per message so they spread over workers. When the tool states its duration, the
    share is cut into one message per execution slot (``slots`` = concurrency × live
    workers), or fewer when the work would be under ``MESSAGE_WORK_S`` per message: a
    50-task no-op wave goes out as one message per agent, not 26, and equal tasks finish
    together instead of waiting on a fetch between rounds. Otherwise about four messages
    per slot, to balance tasks of unknown length. At most ``MAX_BATCH`` tasks per message.
    """
    if fixed:
        return fixed
    if expected_s is not None and expected_s >= LONG_TASK_S:
        return 1
    if expected_s is not None:
        work = n_tasks * max(expected_s, TASK_OVERHEAD_S)
        messages = min(max(1, slots), max(1, math.ceil(work / MESSAGE_WORK_S)))
        return max(1, min(MAX_BATCH, math.ceil(n_tasks / messages)))
    return max(1, min(MAX_BATCH, math.ceil(n_tasks / (max(1, slots) * 4))))


def wave_deadline_s(
    to_send: dict[str, list[PlannedTask]],
    agents: list[AgentSpec],
    registry: ToolRegistry,
    margin_s: float = 60.0,
) -> float:
    """Seconds a wave may run before members without an outcome count as ``lost``.

    Per agent: the sum of its tasks' worst case (a tool that states its duration: 4 × that
    + 5 s; otherwise its timeout × attempts plus the retry backoff between them) divided by
    the agent's concurrency; the slowest agent, plus ``margin_s``. ``--wave-timeout`` wins.
    """
    conc = {a.id: a.concurrency for a in agents}
    worst = 0.0
    for agent, pts in to_send.items():
        total = 0.0
        for pt in pts:
            contract = registry.get(pt.task.tool)
            if pt.expected_s is not None:
                total += 4 * pt.expected_s + 5
                continue
            args = contract.parse_args(pt.task.args)
            policy = contract.retry
            total += contract.timeout_for(args) * policy.max_attempts + sum(
                policy.delay_s(k) for k in range(1, policy.max_attempts)
            )
        worst = max(worst, total / conc.get(agent, 1))
    return worst + margin_s


def attempt_worst_s(
    pts: Sequence[PlannedTask], registry: ToolRegistry, lease_wait_s: float = 0.0
) -> list[float]:
    """Seconds each task's attempt can hold its message at most: its tool's timeout (from the
    args when the tool says so), the worker's hard-stop grace and, for a task with write
    claims, the wait for its leases. Retries go out as new messages, so one attempt counts."""
    fixed: dict[str, float] = {}
    out = []
    for pt in pts:
        contract = registry.get(pt.task.tool)
        if contract.timeout_of is None:
            t = fixed.get(contract.name)
            if t is None:
                t = fixed[contract.name] = float(contract.timeout_s)
        else:
            t = contract.timeout_for(contract.parse_args(pt.task.args))
        leased = any(c.mode == "write" for c in pt.claims)
        out.append(t + HARD_TIMEOUT_GRACE_S + (lease_wait_s if leased else 0.0))
    return out


def slices(worst_s: Sequence[float], size: int, visibility_timeout_s: float) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each message's tasks: at most ``size`` tasks, and at most
    :data:`VISIBILITY_SHARE` of the visibility timeout of worst case in one message, so Redis
    never redelivers a batch that is still running (a single longer task goes alone)."""
    budget = visibility_timeout_s * VISIBILITY_SHARE
    start, total = 0, 0.0
    for i, w in enumerate(worst_s):
        if i > start and (i - start >= size or total + w > budget):
            yield start, i
            start, total = i, 0.0
        total += w
    if start < len(worst_s):
        yield start, len(worst_s)
