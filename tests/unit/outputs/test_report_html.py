"""report.html: self-contained (no network reference), three charts, tables of waves and health."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from buddy.analysis.anomalies import detect_anomalies
from buddy.analysis.health import HealthReport, health
from buddy.analysis.metrics import WaveMetrics
from buddy.analysis.wave_metrics import compute_wave_metrics
from buddy.models import AgentSpec, Mode, Outcome, TaskStatus
from buddy.outputs.report_html import LatencyChart, render_html

T0 = datetime(2024, 1, 1, tzinfo=UTC)
AGENTS = [AgentSpec(id="a1", concurrency=4), AgentSpec(id="a2", concurrency=1)]


def outcomes(wave: int) -> list[Outcome]:
    outs = []
    for i in range(12):
        aid = "a1" if i % 3 else "a2"
        outs.append(
            Outcome(
                task_id=f"w{wave}-t{i}",
                campaign_id="c-1",
                agent_id=aid,
                wave=wave,
                status=TaskStatus.FAILED if i == 5 and wave == 2 else TaskStatus.SUCCEEDED,
                mode=Mode.MOCK,
                attempts=1,
                start_time=T0 + timedelta(seconds=10 * wave),
                end_time=T0 + timedelta(seconds=10 * wave + 2),
                duration_ms=50.0 + 40 * i,
                worker="w",
                tool="t",
            )
        )
    return outs


def campaign() -> tuple[dict, list[WaveMetrics], list[Outcome], list[HealthReport]]:
    metrics: list[WaveMetrics] = []
    all_outs: list[Outcome] = []
    reports: list[HealthReport] = []
    for wave in (1, 2):
        outs = outcomes(wave)
        m = compute_wave_metrics(wave, outs, {}, {o.task_id: 0.9 for o in outs}, AGENTS, previous=metrics)
        reports.append(health(m, detect_anomalies(m, metrics)))
        metrics.append(m)
        all_outs += outs
    summary = {
        "campaign_id": "c-1",
        "status": "finished_with_failures",
        "exit_code": 1,
        "counts": {"total": 24, "by_status": {"succeeded": 23, "failed": 1}},
        "optimizer": [{"wave": 2, "goal": "maximize_success", "reason": "wave 1: <script>alert(1)</script>"}],
    }
    return summary, metrics, all_outs, reports


def test_html_has_three_embedded_charts_and_the_tables() -> None:
    summary, metrics, outs, reports = campaign()
    html = render_html(summary, metrics, outs, reports)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3  # health per wave, throughput per agent per wave, latency distribution
    for alt in ("Health per wave", "Throughput per agent per wave", "Latency distribution"):
        assert f'alt="{alt}"' in html
    assert "Campaign c-1" in html and "finished_with_failures" in html
    assert "maximize_success" in html
    assert "<script>" not in html and "&lt;script&gt;" in html  # text is escaped


def test_html_needs_no_network() -> None:
    summary, metrics, outs, reports = campaign()
    html = render_html(summary, metrics, outs, reports)
    # every src= / href= is a data: URI
    for ref in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html, flags=re.IGNORECASE):
        assert ref.startswith("data:"), ref
    without_data = re.sub(r'"data:[^"]*"', '""', html)
    assert "http://" not in without_data and "https://" not in without_data
    assert "@import" not in html and "url(" not in html and "<script" not in html.lower()
    assert "<link" not in html.lower()


def test_html_without_data_says_so() -> None:
    html = render_html({"campaign_id": "empty"}, [], [], [])
    assert "Campaign empty" in html
    assert html.count("no data") == 3
    assert "<img" not in html


def test_a_latency_chart_drawn_ahead_is_used_only_for_the_same_durations() -> None:
    summary, metrics, outs, reports = campaign()
    ahead = LatencyChart.of(outs)
    assert ahead.uri is not None and len(ahead.durations) == len(outs)
    marked = LatencyChart(ahead.durations, "data:image/png;base64,QUhFQUQ=")
    html = render_html(summary, metrics, outs, reports, marked)
    assert "QUhFQUQ=" in html  # drawn ahead, not drawn again
    # one more outcome since: the chart drawn ahead is stale and is drawn again
    stale = LatencyChart(ahead.durations[:-1], "data:image/png;base64,QUhFQUQ=")
    html = render_html(summary, metrics, outs, reports, stale)
    assert "QUhFQUQ=" not in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == 3
