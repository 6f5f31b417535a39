"""Compensation: undo succeeded reversible tasks after an abort (``--rollback-on-abort``,
``buddy rollback CAMPAIGN``).

Tasks are compensated newest first (reverse completion order), one at a time, each by a
``buddy.rollback`` Celery task on the queue of the agent that ran it, chained so the order
holds across agents. A compensation uses the undo record the tool stored in Redis before its
effect. Tasks that ran live but whose tool is not reversible cannot be compensated: they are
recorded as ``not_reversible`` events and listed in the report. Tasks that ran ``mock`` or
``dry_run`` changed nothing and are left out.

After the compensations every output shows the final outcomes (docs/architecture.md,
"Outputs"): :meth:`buddy.outputs.campaign.CampaignFiles.rollbacks` rewrites the waves' files
of the tasks that changed, and :func:`summaries_after` recomputes those waves' summaries.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from celery import Celery, chain

from buddy.analysis.agents import summarize_wave
from buddy.infra.transport import ROLLBACK_TASK
from buddy.models import Mode, Outcome, RollbackEvent, TaskStatus, WaveSummary, agent_queue, utcnow
from buddy.state.store import Store
from buddy.tools.registry import ToolRegistry


def select(
    outcomes: Iterable[Outcome], registry: ToolRegistry, *, wave: int | None = None
) -> tuple[list[Outcome], list[Outcome]]:
    """Split the succeeded live outcomes (of ``wave``, or all) into (reversible newest first,
    irreversible)."""
    live = [
        o
        for o in outcomes
        if o.status is TaskStatus.SUCCEEDED and o.mode is Mode.LIVE and (wave is None or o.wave == wave)
    ]
    live.sort(key=lambda o: (o.end_time or utcnow(), o.task_id), reverse=True)
    reversible: list[Outcome] = []
    irreversible: list[Outcome] = []
    for o in live:
        contract = registry.get(o.tool) if o.tool and o.tool in registry else None
        (reversible if contract is not None and contract.reversible else irreversible).append(o)
    return reversible, irreversible


def compensate(
    app: Celery,
    store: Store,
    campaign_id: str,
    outcomes: Iterable[Outcome],
    registry: ToolRegistry,
    *,
    wave: int | None = None,
    timeout_s: float = 300.0,
) -> list[RollbackEvent]:
    """Compensate ``outcomes`` (see :func:`select`) and return every event, in order.

    Waits at most ``timeout_s`` seconds for the chain; compensations that did not report by
    then are returned as ``failed`` events saying so (their task may still run later).
    """
    reversible, irreversible = select(outcomes, registry, wave=wave)
    events = [
        RollbackEvent(
            campaign_id=campaign_id,
            task_id=o.task_id,
            tool=o.tool,
            agent_id=o.agent_id,
            wave=o.wave,
            status="not_reversible",
            at=utcnow(),
            reason=f"{o.tool} is not reversible: its effect stays",
        )
        for o in irreversible
    ]
    if not reversible:
        return events
    start = len(store.rollback_events(campaign_id))
    sigs = [
        app.signature(
            ROLLBACK_TASK,
            kwargs={"campaign_id": campaign_id, "task_id": o.task_id},
            queue=agent_queue(o.agent_id or ""),
            immutable=True,
        )
        for o in reversible
    ]
    chain(*sigs, app=app).apply_async()
    deadline = time.monotonic() + timeout_s
    got: list[RollbackEvent] = []
    while time.monotonic() < deadline:
        got = store.rollback_events(campaign_id, start)
        if len(got) >= len(reversible):
            break
        time.sleep(0.1)
    done = {e.task_id for e in got}
    for o in reversible:
        if o.task_id not in done:
            got.append(
                RollbackEvent(
                    campaign_id=campaign_id,
                    task_id=o.task_id,
                    tool=o.tool,
                    agent_id=o.agent_id,
                    wave=o.wave,
                    status="failed",
                    at=utcnow(),
                    error=f"no compensation reported within {timeout_s:g} s (is {o.agent_id} served?)",
                )
            )
    return got + events


def summaries_after(
    summaries: list[WaveSummary], outcomes: Mapping[str, Outcome], waves: Iterable[int]
) -> list[WaveSummary]:
    """``summaries`` (one per closed wave, in order) with those of ``waves`` computed again from
    ``outcomes`` (task id → final outcome, after the compensations) by
    :func:`buddy.analysis.agents.summarize_wave`, so a wave's counts in
    ``execution_summary.json`` and ``report.md`` add up to the campaign's."""
    again = set(waves)
    if not again:
        return list(summaries)
    by_wave: dict[int, list[Outcome]] = {n: [] for n in again}
    for o in outcomes.values():
        if o.wave in by_wave:
            by_wave[o.wave].append(o)
    # counts change with a compensation; the wave's throughput (what ran, when) does not
    return [
        summarize_wave(s.campaign_id, s.wave, by_wave[s.wave]).model_copy(
            update={"throughput_tps": s.throughput_tps}
        )
        if s.wave in again
        else s
        for s in summaries
    ]
