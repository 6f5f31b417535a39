"""``buddy flower`` on a real fleet: a private Redis (TCP, password), one worker, Flower with basic auth.

Reads ``/api/workers`` (the worker and its agent queue), ``/broker`` (the agent queues' depth)
and ``/metrics`` (Flower's Prometheus metrics), and drives headless Chromium to the workers
dashboard for a screenshot. Without Chromium the screenshot test is skipped on a laptop (with
the reason) and fails under ``CI=true``; ``make test`` installs Debian's ``chromium`` when it can.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from buddy.infra.fleet import LocalFleet
from buddy.infra.redis_server import EmbeddedRedis
from buddy.models import AgentSpec
from tests.helpers import free_port, start_redis, unavailable, wait_for_workers

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ops", "flower-pw-8c2d"
REDIS_PASSWORD = "redis-pw-for-flower-41f7"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@dataclass
class FlowerFleet:
    base: str
    port: int
    log: Path
    worker_prefix: str
    redis: EmbeddedRedis

    def get(self, path: str, auth: bool = True, timeout: float = 10) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path)
        if auth:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def workers(self) -> dict[str, Any]:
        """``/api/workers?refresh=1`` (Flower inspects the workers again), by worker name."""
        status, body = self.get("/api/workers?refresh=1", timeout=20)
        assert status == 200, body[:500]
        return {k: v for k, v in json.loads(body).items() if k.startswith(self.worker_prefix)}


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerFleet]:
    tmp = tmp_path_factory.mktemp("flower")
    server = start_redis(port=free_port(), password=REDIS_PASSWORD)
    fleet = LocalFleet(server.tcp_url, [AgentSpec(id="a1")], env={"BUDDY_TOOLS": ""}, log_dir=tmp / "workers")
    proc: subprocess.Popen[bytes] | None = None
    try:
        fleet.start()
        wait_for_workers(server.tcp_url, ["a1"])
        port = free_port()
        log = tmp / "flower.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BUDDY_", "FLOWER_"))}
        env["BUDDY_REDIS_URL"] = server.tcp_url
        argv = [
            sys.executable,
            "-m",
            "buddy",
            "flower",
            "--port",
            str(port),
            "--basic-auth",
            f"{USER}:{PASSWORD}",
        ]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        ff = FlowerFleet(f"http://127.0.0.1:{port}", port, log, f"a1-1-{os.getpid()}@", server)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"flower exited: {log.read_text()[-3000:]}"
            try:
                if ff.get("/healthcheck", auth=False, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"flower did not answer: {log.read_text()[-3000:]}"
            time.sleep(0.25)
        yield ff
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        fleet.stop()
        server.stop()


def _wait_for_worker(flower: FlowerFleet, timeout_s: float = 60) -> tuple[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        workers = flower.workers()
        ready = {k: v for k, v in workers.items() if v.get("active_queues")}
        if ready:
            return next(iter(ready.items()))
        assert time.monotonic() < deadline, f"Flower never listed the worker: {workers}"
        time.sleep(1)


def test_api_workers_lists_the_buddy_worker_and_its_agent_queue(flower: FlowerFleet) -> None:
    assert flower.get("/api/workers", auth=False)[0] == 401  # basic auth is on
    name, info = _wait_for_worker(flower)
    assert name.startswith(flower.worker_prefix)
    assert {q["name"] for q in info["active_queues"]} == {"buddy.agent.a1", "buddy.coordinator"}
    assert info["conf"]["accept_content"] == ["json"]
    assert REDIS_PASSWORD not in json.dumps(info)  # Celery masks the broker URL's password


def test_broker_view_shows_the_agent_queue_depth(flower: FlowerFleet) -> None:
    _wait_for_worker(flower)  # Flower reads the depth of the queues its workers consume
    deadline = time.monotonic() + 20
    while True:
        status, body = flower.get("/api/queues/length")
        assert status == 200, body[:300]
        lengths = {q["name"]: q["messages"] for q in json.loads(body)["active_queues"]}
        if "buddy.agent.a1" in lengths:
            break
        assert time.monotonic() < deadline, lengths
        time.sleep(0.5)
    assert set(lengths) == {"buddy.agent.a1", "buddy.coordinator"}
    assert all(isinstance(n, int) for n in lengths.values())
    status, page = flower.get("/broker")
    assert status == 200 and "buddy.agent.a1" in page
    assert REDIS_PASSWORD not in page


def test_metrics_has_flower_metrics(flower: FlowerFleet) -> None:
    name, _ = _wait_for_worker(flower)
    deadline = time.monotonic() + 30
    while True:
        status, body = flower.get("/metrics")
        assert status == 200
        if f'flower_worker_online{{worker="{name}"}} 1.0' in body:
            break
        assert time.monotonic() < deadline, [x for x in body.splitlines() if x.startswith("flower_")][:20]
        time.sleep(0.5)
    assert any(line.startswith("flower_") for line in body.splitlines())


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium_argv(exe: str, profile: Path) -> list[str]:
    return [
        exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,900",
        "--virtual-time-budget=10000",  # let the page's XHR fill the workers table first
    ]  # fmt: skip


def test_dashboard_screenshot_shows_the_worker(flower: FlowerFleet, tmp_path: Path) -> None:
    exe = _chromium()
    if exe is None:
        unavailable(
            "headless Chromium not found (tried " + ", ".join(CHROMIUM_NAMES) + "): "
            "`apt-get install chromium` (make test does it as root or under CI=true)"
        )
    name, _ = _wait_for_worker(flower)
    # basic auth in the URL works for Chromium's top-level navigation and the page's XHR
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{flower.port}/workers"
    shot = tmp_path / "flower-workers.png"
    argv = _chromium_argv(exe, tmp_path / "profile")
    res = subprocess.run([*argv, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=180)
    assert shot.exists(), f"no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000, f"screenshot is only {len(data)} bytes"
    # the same page's DOM after its scripts ran: the table lists Buddy's worker as online
    dom = subprocess.run(
        [*_chromium_argv(exe, tmp_path / "profile2"), "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert name in dom.stdout, f"{name} not on the dashboard: {dom.stdout[-2000:]} {dom.stderr[-1000:]}"
    assert "Online" in dom.stdout
    keep = ROOT / "outputs" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, keep / "flower-workers.png")


# -- Buddy's own Prometheus endpoints on the same fleet -------------------------------------


def _scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def _buddy_env(flower: FlowerFleet) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUDDY_")}
    env["BUDDY_REDIS_URL"] = flower.redis.tcp_url
    return env


def test_exporter_serves_queue_depth_and_agent_metrics(flower: FlowerFleet, tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "buddy", "exporter", "--port", str(port), "--agent", "a1", "--agent", "a7"]
    with open(tmp_path / "exporter.log", "wb") as log:
        proc = subprocess.Popen(argv, env=_buddy_env(flower), stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        while 'buddy_agent_live_workers{agent="a1"} 1.0' not in (body := _scrape(url)):
            assert proc.poll() is None, (tmp_path / "exporter.log").read_text()
            assert time.monotonic() < deadline, body[-2000:]
            time.sleep(0.2)
        assert "buddy_redis_up 1.0" in body
        assert 'buddy_queue_depth{agent="a1",queue="buddy.agent.a1"} 0.0' in body
        assert 'buddy_queue_depth{agent="a7",queue="buddy.agent.a7"} 0.0' in body  # asked for, no worker
        assert 'buddy_agent_live_workers{agent="a7"} 0.0' in body
        assert 'buddy_agent_heartbeat_age_seconds{agent="a1"}' in body
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    log_text = (tmp_path / "exporter.log").read_text()
    assert REDIS_PASSWORD not in log_text and ":***@" in log_text


def test_coordinator_metrics_while_a_campaign_runs(flower: FlowerFleet, tmp_path: Path) -> None:
    plan = tmp_path / "plan.jsonl"
    rows: list[dict[str, Any]] = [{"task_id": f"n{i}", "tool": "noop"} for i in range(3)]
    rows.append(
        {"task_id": "wait", "tool": "sleep", "args": {"seconds": 3}, "depends_on": ["n0", "n1", "n2"]}
    )
    plan.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    port = free_port()
    argv = [
        sys.executable, "-m", "buddy", "run", str(plan), "--agents", "a1", "--mode", "live",
        "--out", str(tmp_path / "out"), "--no-progress", "--metrics-port", str(port),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, env=_buddy_env(flower), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}/metrics"
    seen = ""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        body = _scrape(url)
        if "buddy_current_wave 2.0" in body:
            seen = body
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert seen, "never scraped the coordinator during wave 2"
    assert 'buddy_tasks_total{status="succeeded"} 3.0' in seen
    health = re.search(r'^buddy_wave_health\{wave="1"\} ([0-9.]+)$', seen, re.M)
    assert health is not None and 0.0 < float(health.group(1)) <= 100.0  # the monitor's score of wave 1
    assert "buddy_error_budget_remaining 1.0" in seen
    assert "buddy_lease_contention_total 0.0" in seen
    assert 'buddy_queue_depth{agent="a1",queue="buddy.agent.a1"}' in seen
    assert 'buddy_agent_live_workers{agent="a1"} 1.0' in seen
    assert "buddy_campaign_tasks_planned 4.0" in seen
    assert _scrape(url) == "", "the metrics endpoint outlived the campaign"
