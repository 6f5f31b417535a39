"""The Celery tasks: ``buddy.execute_batch`` (chord header) and ``buddy.wave_complete`` (body).

Both are thin: the work is in :mod:`buddy.execution.executor` and :mod:`buddy.analysis.wave`. Tool
failures come back as outcomes; only infrastructure faults (Redis down) raise, and then
Celery's ``acks_late`` + ``reject_on_worker_lost`` keep the message.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

from celery import Task
from celery.signals import task_revoked
from pydantic import BaseModel, Field, ValidationError

from buddy.analysis.agents import summarize_wave
from buddy.analysis.wave import analyze
from buddy.config import get_settings
from buddy.execution.compensation import compensate
from buddy.execution.executor import Executor
from buddy.infra.transport import (
    DEFAULT_REDIS_URL,
    EXECUTE_TASK,
    ROLLBACK_TASK,
    WAVE_COMPLETE_TASK,
    redis_client,
)
from buddy.models import Outcome, TaskSpec, TaskStatus, utcnow
from buddy.state import deadletter
from buddy.state.leases import LeaseManager
from buddy.state.store import Store, spec_digest
from buddy.tools.registry import default_registry
from workers.app import app
from workers.transport import refuse


@lru_cache(maxsize=1)
def store() -> Store:
    """This process's :class:`Store` (one connection pool per process, made after fork)."""
    s = get_settings()
    return Store(
        redis_client(s.redis_url or DEFAULT_REDIS_URL),
        events_maxlen=s.events_maxlen,
        stale_s=s.heartbeat_stale_s,
    )


@lru_cache(maxsize=4)
def executor(hostname: str) -> Executor:
    """This process's :class:`Executor` (one per worker name; it keeps claim heartbeats)."""
    s = get_settings()
    st = store()
    return Executor(
        st,
        default_registry(s.tools),
        worker=f"{hostname}:{os.getpid()}",
        # a claim must outlive every redelivery of its message, or a task killed mid-effect
        # would look unstarted: keep it as long as results
        claim_ttl_s=max(s.result_expires_s, 4 * s.visibility_timeout_s),
        leases=LeaseManager(st.r, ttl_s=s.lease_ttl_s, wait_s=s.lease_wait_s),
        stale_s=s.heartbeat_stale_s,
        renew_s=s.heartbeat_interval_s,
        inject_failure_rate=s.inject_failure_rate,
        on_refused=_refused(hostname),
    )


def _refused(hostname: str) -> Any:
    """The executor's ``on_refused``: dead-letter tasks nobody dispatched (a forged message, a
    campaign that is not running), with what they were; they get no outcome."""

    def hook(cid: str, wave: int, agent_id: str, specs: list[TaskSpec], why: str) -> None:
        refuse(
            deadletter.NOT_DISPATCHED,
            {
                "campaign_id": cid,
                "wave": wave,
                "agent_id": agent_id,
                "items": [s.model_dump(mode="json") for s in specs],
            },
            queue=f"buddy.agent.{agent_id}",
            detail=why,
            task_name=EXECUTE_TASK,
            campaign_id=cid,
            worker=hostname,
        )

    return hook


class BatchKwargs(BaseModel):
    """The kwargs of ``buddy.execute_batch``; a message whose kwargs do not validate is
    dead-lettered (reason ``invalid-kwargs``, :mod:`buddy.state.deadletter`) and returns ``[]``."""

    campaign_id: str = Field(min_length=1)
    wave: int
    agent_id: str = Field(min_length=1)
    items: list[TaskSpec]
    carry: list[list[str]] | None = None


def _refuse_batch(self: Task, error: ValidationError, kwargs: dict[str, Any]) -> None:
    """Dead-letter an ``execute_batch`` whose kwargs did not validate (one pipeline to Redis)."""
    req = self.request
    info = req.delivery_info if isinstance(req.delivery_info, dict) else {}
    cid = kwargs.get("campaign_id")
    refuse(
        deadletter.INVALID_KWARGS,
        {"id": req.id, "task": EXECUTE_TASK, "kwargs": kwargs},
        queue=str(info.get("routing_key") or ""),
        detail="; ".join(
            f"{'.'.join(map(str, d['loc'])) or '-'}: {d['msg']}" for d in error.errors(include_url=False)
        ),
        task_name=EXECUTE_TASK,
        campaign_id=cid if isinstance(cid, str) else None,
        worker=req.hostname,
    )


@app.task(name=EXECUTE_TASK, bind=True, max_retries=None, acks_late=True)
def execute_batch(
    self: Task,
    campaign_id: str,
    wave: int,
    agent_id: str,
    items: list[dict[str, Any]],
    carry: list[list[str]] | None = None,
) -> list[list[str]]:
    """Run ``items`` (TaskSpec dicts) for ``agent_id`` and return ``[[task_id, status], …]``.

    Tasks whose tool asks for another try are sent again through ``self.retry`` with the
    policy's backoff as countdown; ``carry`` brings the statuses of the batch's finished
    tasks along, so the chord body sees every task of the batch in the final result.
    Kwargs that do not validate (:class:`BatchKwargs`) are dead-lettered (``invalid-kwargs``,
    :mod:`buddy.state.deadletter`) and the batch returns ``[]``: acked, never retried.
    """
    kwargs = {"campaign_id": campaign_id, "wave": wave, "agent_id": agent_id, "items": items, "carry": carry}
    try:  # a forged or corrupt batch is dead-lettered, not raised: it would only fail again
        batch = BatchKwargs.model_validate(kwargs)
    except ValidationError as e:
        _refuse_batch(self, e, kwargs)
        return []
    campaign_id, wave, agent_id, carry = batch.campaign_id, batch.wave, batch.agent_id, batch.carry
    specs = batch.items
    delivery = f"{self.request.id}:{self.request.retries}"
    res = executor(self.request.hostname or "worker").run_batch(
        campaign_id, wave, agent_id, specs, delivery=delivery, digests=[spec_digest(i) for i in items]
    )
    done = [*(carry or []), *([t, s] for t, s in res.done)]
    if res.retry:
        raise self.retry(
            args=(),
            kwargs={
                "campaign_id": campaign_id,
                "wave": wave,
                "agent_id": agent_id,
                "items": [s.model_dump(mode="json") for s in res.retry],
                "carry": done,
            },
            countdown=res.retry_delay_s,
        )
    return done


@app.task(name=WAVE_COMPLETE_TASK, acks_late=True)
def wave_complete(
    results: list[list[list[str]]], campaign_id: str, wave: int, token: str = ""
) -> dict[str, Any]:
    """Chord body: the feedback loop and monitor over the wave's outcomes
    (:func:`buddy.analysis.wave.analyze`), then wake the coordinator with the wave's summary."""
    st = store()
    try:
        summary = analyze(st, campaign_id, wave).summary
    except LookupError:  # a wave sent without inputs (an older coordinator): summary only
        ids = [pair[0] for batch in results for pair in batch]
        summary = summarize_wave(campaign_id, wave, st.outcomes(campaign_id, ids).values())
    st.finish_wave(campaign_id, summary, token)
    return {"wave": wave, "total": summary.counts.total, "by_status": summary.counts.by_status}


@app.task(name=ROLLBACK_TASK, bind=True, acks_late=True)
def rollback(self: Task, campaign_id: str, task_id: str) -> dict[str, Any]:
    """Compensate one succeeded reversible task (a link of the rollback chain)."""
    event = compensate(executor(self.request.hostname or "worker"), campaign_id, task_id)
    return event.model_dump(mode="json")


@task_revoked.connect
def _on_revoked(request: Any = None, terminated: bool = False, **_: Any) -> None:
    """A revoked batch is an outcome, not a hang: its tasks without an outcome end ``failed``
    (``error_type`` ``revoked``) so the coordinator can close the wave."""
    if request is None or getattr(request, "name", None) != EXECUTE_TASK:
        return
    kwargs = request.kwargs or {}
    cid, wave, agent = kwargs.get("campaign_id"), kwargs.get("wave"), kwargs.get("agent_id")
    items = kwargs.get("items") or []
    if not cid or not items:
        return
    st = store()
    have = st.outcomes(cid, [i["task_id"] for i in items])
    now = utcnow()
    lost = [
        Outcome(
            task_id=i["task_id"],
            campaign_id=cid,
            agent_id=agent,
            wave=wave,
            status=TaskStatus.FAILED,
            mode=i.get("mode", "mock"),
            start_time=None,  # not known: it may not have started
            end_time=now,
            error_type="revoked",
            error_msg="the Celery task was revoked" + (" and terminated" if terminated else ""),
            tool=i.get("tool"),
        )
        for i in items
        if i["task_id"] not in have
    ]
    st.record_outcomes(lost)
