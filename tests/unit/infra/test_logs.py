"""buddy.logs: text and JSON lines with campaign, task and worker ids; secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from buddy.config import Settings, get_settings
from buddy.infra.logs import log_context, redact_secrets, set_worker, setup_logging

log = logging.getLogger("buddy.test")


@pytest.fixture(autouse=True)
def _restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    set_worker(None)


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_ids() -> None:
    stream = io.StringIO()
    setup_logging(Settings(log_format="json"), stream=stream)
    log.info("before")
    with log_context(campaign_id="c-1"):
        log.info("campaign %s", "started")
        with log_context(task_id="t-7", worker="w@h"):
            log.warning("task line")
        log.info("after the task")
    rows = _json_lines(stream)
    assert [r["msg"] for r in rows] == ["before", "campaign started", "task line", "after the task"]
    assert rows[0]["campaign_id"] is None and rows[0]["task_id"] is None
    assert (rows[1]["campaign_id"], rows[1]["task_id"]) == ("c-1", None)
    assert rows[2] == {
        "ts": rows[2]["ts"],
        "level": "WARNING",
        "logger": "buddy.test",
        "msg": "task line",
        "campaign_id": "c-1",
        "task_id": "t-7",
        "worker": "w@h",
    }
    assert rows[2]["ts"].endswith("Z") and "T" in rows[2]["ts"]
    assert (rows[3]["campaign_id"], rows[3]["task_id"], rows[3]["worker"]) == ("c-1", None, None)


def test_extra_overrides_the_context_and_exceptions_are_kept() -> None:
    stream = io.StringIO()
    setup_logging(Settings(log_format="json"), stream=stream)
    with log_context(campaign_id="c-1", task_id="t-1"):
        log.info("explicit", extra={"task_id": "t-2"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    first, second = _json_lines(stream)
    assert first["task_id"] == "t-2" and first["campaign_id"] == "c-1"
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_text_lines_carry_the_ids() -> None:
    stream = io.StringIO()
    setup_logging(Settings(), stream=stream)
    set_worker("a1-1@host")
    log.info("no ids")
    with log_context(campaign_id="c-9", task_id="hash-1"):
        log.info("with ids")
    first, second = stream.getvalue().splitlines()
    assert first.endswith(" INFO buddy.test campaign=- task=- worker=a1-1@host: no ids")
    assert second.endswith(" INFO buddy.test campaign=c-9 task=hash-1 worker=a1-1@host: with ids")


def test_level_and_replacing_the_handler() -> None:
    stream = io.StringIO()
    setup_logging(Settings(log_level="WARNING"), stream=io.StringIO())
    setup_logging(Settings(log_level="WARNING", log_format="json"), stream=stream)
    assert sum(1 for h in logging.getLogger().handlers if getattr(h, "_buddy", False)) == 1
    log.info("dropped")
    log.warning("kept")
    assert [r["msg"] for r in _json_lines(stream)] == ["kept"]
    with pytest.raises(ValueError):
        setup_logging(Settings(), level="LOUD", stream=io.StringIO())


def test_redis_passwords_never_reach_a_line() -> None:
    assert redact_secrets("redis://:s3cret@h:6379/0 and rediss://u:p%40ss@h/1") == (
        "redis://:***@h:6379/0 and rediss://u:***@h/1"
    )
    assert redact_secrets("unix://:pw@/tmp/redis.sock") == "unix://:***@/tmp/redis.sock"
    assert redact_secrets("mail me at ops@example.com") == "mail me at ops@example.com"
    for fmt in ("text", "json"):
        stream = io.StringIO()
        setup_logging(Settings(log_format=fmt), stream=stream)
        log.info("connecting to %s", "redis://:hunter2-xyz@redis:6379/0")
        try:
            raise ConnectionError("Error connecting to redis://:hunter2-xyz@redis:6379/0")
        except ConnectionError:
            log.exception("failed")
        assert "hunter2-xyz" not in stream.getvalue()
        assert "redis://:***@redis:6379/0" in stream.getvalue()


def test_celery_task_kwargs_give_the_ids() -> None:
    """Inside a Celery task, lines carry its campaign_id / task_id kwargs and its Celery id."""
    app = Celery("t", set_as_current=False)
    app.conf.task_always_eager = True
    stream = io.StringIO()
    setup_logging(Settings(log_format="json"), stream=stream)

    @app.task(name="t.rollback")
    def rollback(campaign_id: str, task_id: str) -> None:
        log.info("compensating")

    rollback.apply(kwargs={"campaign_id": "c-5", "task_id": "write-1"}, task_id="celery-id-1")
    [row] = [r for r in _json_lines(stream) if r["msg"] == "compensating"]
    assert (row["campaign_id"], row["task_id"], row["celery_task_id"]) == ("c-5", "write-1", "celery-id-1")


def test_worker_signal_installs_the_format(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.logging import _name_worker, _setup_logging

    monkeypatch.setenv("BUDDY_LOG_FORMAT", "json")
    get_settings.cache_clear()  # importing workers read the settings already
    _setup_logging(loglevel=logging.DEBUG)
    _name_worker(sender="a1-1@host")
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_buddy", False))
    stream = io.StringIO()
    handler.setStream(stream)  # type: ignore[attr-defined]
    log.debug("from a worker")
    [row] = _json_lines(stream)
    assert row["worker"] == "a1-1@host" and row["level"] == "DEBUG"
