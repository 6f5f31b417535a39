"""``report.html``: the campaign report with charts, in one self-contained file.

Charts are drawn with matplotlib (Agg, no display, no pyplot global state) as PNG images
embedded as ``data:`` URIs; the page has no script and no external reference, so it opens
offline. Charts: health per wave, throughput per agent per wave, latency distribution.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Any

from buddy.analysis.health import HealthReport
from buddy.analysis.metrics import WaveMetrics, percentile
from buddy.analysis.outcomes import executed
from buddy.models import Outcome

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}
.EXCELLENT{color:#1a7f37}.GOOD{color:#2f6fb0}.FAIR{color:#b26b00}.POOR{color:#c62828}
figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}
img{max-width:100%;height:auto}
"""

_STATUS_COLORS = {"EXCELLENT": "#1a7f37", "GOOD": "#2f6fb0", "FAIR": "#b26b00", "POOR": "#c62828"}


def _figure(width: float = 8.0, height: float = 3.2, right: float = 0.98) -> Figure:
    """A figure with fixed margins (``right``: the plot's right edge, a 0–1 fraction of the
    width; less leaves room for a legend beside it).

    Everything is placed, nothing is searched for: layout="constrained" (0.45 s for the three
    charts of a 2000-task campaign), a title placed above whatever the axes draw there, a
    legend at loc="best" (which tests every artist for overlap) each cost more than the
    drawing itself.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90)
    fig.subplots_adjust(left=0.08, right=right, top=0.88, bottom=0.18)
    return fig


def _title(ax: Any, text: str) -> None:
    """The chart's title at a fixed height: an explicit ``y`` turns off matplotlib's search
    for a place above the axes' decorations (there are none: ticks and labels sit below)."""
    ax.set_title(text, y=1.0, pad=6)


def _legend_beside(ax: Any, ncols: int = 1) -> None:
    """The legend right of the plot, top-aligned (the figure leaves room: ``_figure(right=...)``)."""
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, ncols=ncols)


def _png(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,…`` URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def health_chart(health: Sequence[HealthReport]) -> str | None:
    """Health score per wave (with the status bands), as a data URI; None without waves."""
    points = [(h.wave, h.score, h.status) for h in health if h.wave is not None]
    if not points:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for lo, hi, status in ((90, 100, "EXCELLENT"), (75, 90, "GOOD"), (50, 75, "FAIR"), (0, 50, "POOR")):
        ax.axhspan(lo, hi, color=_STATUS_COLORS[status], alpha=0.07, linewidth=0)
    xs = [p[0] for p in points]
    ax.plot(xs, [p[1] for p in points], color="#444", linewidth=1.5, zorder=2)
    ax.scatter(xs, [p[1] for p in points], c=[_STATUS_COLORS[p[2]] for p in points], zorder=3)
    ax.set_ylim(0, 100)
    ax.set_xticks(xs)
    ax.set_xlabel("wave")
    ax.set_ylabel("health (0–100)")
    _title(ax, "Health per wave")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def throughput_chart(wave_metrics: Sequence[WaveMetrics]) -> str | None:
    """Throughput (tasks/s) per agent per wave, grouped bars; None without data."""
    waves = [m.wave for m in wave_metrics]
    agents = sorted({aid for m in wave_metrics for aid, a in m.agents.items() if a.executed})
    if not waves or not agents:
        return None
    ncols = 1 + (len(agents) - 1) // 10  # ten agents to a legend column
    fig = _figure(right=0.86 - 0.1 * (ncols - 1))
    ax = fig.add_subplot()
    width = 0.8 / len(agents)
    for i, aid in enumerate(agents):
        values = [m.agents[aid].throughput_tps if aid in m.agents else 0.0 for m in wave_metrics]
        xs = [k + (i - (len(agents) - 1) / 2) * width for k in range(len(waves))]
        ax.bar(xs, values, width=width, label=aid)
    ax.set_xticks(range(len(waves)), [str(w) for w in waves])
    ax.set_xlabel("wave")
    ax.set_ylabel("tasks / s")
    _title(ax, "Throughput per agent per wave")
    _legend_beside(ax, ncols)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


@dataclass(frozen=True)
class LatencyChart:
    """The latency chart drawn ahead of the report, with the durations (ms) it shows.

    The coordinator draws it while the last wave's chord body analyzes (the chart needs only
    the outcomes, the other two charts need that analysis); :func:`render_html` uses it when
    the outcomes it is given have the same durations, else draws the chart again.
    """

    durations: tuple[float, ...]
    uri: str | None

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> LatencyChart:
        durations = _durations(outcomes)
        return cls(durations, _latency_uri(durations))


def _durations(outcomes: Sequence[Outcome]) -> tuple[float, ...]:
    return tuple(o.duration_ms for o in outcomes if executed(o))


def _latency_uri(durations: Sequence[float]) -> str | None:
    """Histogram of executed tasks' duration (ms), log-scaled bins when the range is wide."""
    if not durations:
        return None
    fig = _figure(right=0.84)
    ax = fig.add_subplot()
    lo, hi = min(durations), max(durations)
    if lo > 0 and hi / lo > 100:
        import numpy as np

        bins: Any = np.geomspace(lo, hi, 40)
        ax.set_xscale("log")
    else:
        bins = 40
    from matplotlib.ticker import MaxNLocator

    # one filled outline, not a rectangle per bin: the same picture, a third of the drawing
    ax.hist(durations, bins=bins, color="#2f6fb0", alpha=0.85, histtype="stepfilled")
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        x = percentile(durations, q)
        ax.axvline(x, color="#c62828", linestyle=style, linewidth=1.2, label=f"p{q} {x:.3g} ms")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _legend_beside(ax)
    ax.set_xlabel("duration (ms)")
    ax.set_ylabel("tasks")
    _title(ax, f"Latency distribution ({len(durations)} tasks)")
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _latency(outcomes: Sequence[Outcome], drawn: LatencyChart | None) -> str | None:
    durations = _durations(outcomes)
    if drawn is not None and drawn.durations == durations:
        return drawn.uri
    return _latency_uri(durations)


# -- HTML ------------------------------------------------------------------------------------


def _num(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return "–" if x is None else str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"
    return escape(str(x))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="l">{escape(h)}</th>' if i < left else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="l">{escape(str(v))}</td>' if i < left else f"<td>{_num(v)}</td>"
            for i, v in enumerate(r)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_html(uri: str | None, alt: str, caption: str) -> str:
    if uri is None:
        return f"<p><em>{escape(alt)}: no data.</em></p>"
    return f'<figure><img src="{uri}" alt="{escape(alt)}"><figcaption>{escape(caption)}</figcaption></figure>'


def _overview(summary: Mapping[str, Any]) -> str:
    keys = ("campaign_id", "status", "exit_code", "mode", "start_time", "end_time", "wall_s", "abort_reason")
    rows = [(k, summary[k]) for k in keys if k in summary and summary[k] is not None]
    counts = summary.get("counts")
    if isinstance(counts, Mapping):
        rows.append(("tasks", counts.get("total", "")))
        by = counts.get("by_status") or {}
        rows.append(("by status", ", ".join(f"{k} {v}" for k, v in sorted(by.items())) or "–"))
    cells = "".join(
        f'<tr><th class="l">{escape(str(k))}</th><td class="l">{escape(str(v))}</td></tr>' for k, v in rows
    )
    return f"<table>{cells}</table>"


def _final_success(summary_json: Mapping[str, Any]) -> dict[int, float]:
    """Wave → its success rate (0–1) in ``execution_summary.json``: computed from the final
    outcomes, so a task compensated after its wave counts as ``rolled_back`` there, as it does
    in the overview's counts and report.md (a wave's metrics keep the rate it closed with)."""
    waves = summary_json.get("waves")
    if not isinstance(waves, Sequence):
        return {}
    return {
        int(w["wave"]): float(w["success_rate"])
        for w in waves
        if isinstance(w, Mapping) and "wave" in w and "success_rate" in w
    }


def render_html(
    summary_json: Mapping[str, Any],
    wave_metrics: Sequence[WaveMetrics],
    outcomes: Sequence[Outcome],
    health: Sequence[HealthReport],
    latency: LatencyChart | None = None,
) -> str:
    """The self-contained HTML report.

    ``summary_json``: ``execution_summary.json`` as a dict (overview; each wave's final
    success rate, a 0–1 fraction, in the waves table; an optional ``optimizer`` key with a list
    of ``{"wave", "goal", "reason"}`` dicts adds a section); ``wave_metrics``: every wave's
    metrics (the rest of the waves table, computed when each wave closed); ``outcomes``:
    every outcome (latency chart);
    ``health``: every wave's health report (the one with ``wave`` None, if any, is the
    campaign's); ``latency``: the latency chart if already drawn (used only when it shows
    these outcomes' durations).
    """
    cid = str(summary_json.get("campaign_id", "campaign"))
    success = _final_success(summary_json)
    final = next((h for h in reversed(health) if h.wave is None), health[-1] if health else None)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Buddy campaign {escape(cid)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Campaign {escape(cid)}</h1>",
    ]
    if final is not None:
        parts.append(
            f'<p>Health <strong class="{final.status}">{final.score:.1f} / 100 ({final.status})</strong>'
            f"{'' if final.wave is None else f' after wave {final.wave}'}.</p>"
        )
    parts += ["<h2>Overview</h2>", _overview(summary_json)]
    parts += [
        "<h2>Health</h2>",
        _figure_html(
            health_chart(health),
            "Health per wave",
            "Score 0–100; bands: EXCELLENT ≥ 90, GOOD ≥ 75, FAIR ≥ 50.",
        ),
    ]
    if health:
        comps = sorted({k for h in health for k in h.components})
        rows = [
            [("campaign" if h.wave is None else str(h.wave)), h.score, h.status, h.penalty, h.anomalies]
            + [h.components.get(k, 0.0) for k in comps]
            for h in health
        ]
        parts.append(_table(["wave", "score", "status", "penalty", "anomalies", *comps], rows, left=1))
    parts += [
        "<h2>Waves</h2>",
        _table(
            [
                "wave",
                "tasks",
                "success",
                "throughput (tasks/s)",
                "utilization",
                "load balance",
                "efficiency",
                "adherence",
                "retry rate",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "Brier",
                "ECE",
            ],
            [
                [
                    str(m.wave),
                    m.tasks,
                    success.get(m.wave, m.success_rate),
                    m.throughput_tps,
                    m.agent_utilization,
                    m.load_balance,
                    m.optimization_efficiency,
                    m.schedule_adherence,
                    m.retry_rate,
                    m.latency_p50_ms,
                    m.latency_p95_ms,
                    m.latency_p99_ms,
                    m.brier,
                    m.ece,
                ]
                for m in wave_metrics
            ],
        ),
        _figure_html(
            throughput_chart(wave_metrics),
            "Throughput per agent per wave",
            "Executed tasks per second of the wave's wall time, per agent.",
        ),
        "<h2>Latency</h2>",
        _figure_html(
            _latency(outcomes, latency),
            "Latency distribution",
            "Duration of each executed task's last attempt; red lines: p50, p95, p99.",
        ),
    ]
    decisions = summary_json.get("optimizer")
    if isinstance(decisions, Sequence) and decisions:
        parts += [
            "<h2>Optimizer</h2>",
            _table(
                ["wave", "goal", "why"],
                [
                    [str(d.get("wave", "–")), str(d.get("goal", "")), str(d.get("reason", ""))]
                    for d in decisions
                    if isinstance(d, Mapping)
                ],
                left=3,
            ),
        ]
    parts.append("</body></html>")
    return "\n".join(parts)
