"""PNG line charts of Prometheus series, readable in Discord's dark theme (no discord import).

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend state), so
charts may be drawn in worker threads. One line per series with a legend naming what differs
between the series, the unit on the y axis, the time zone on the x axis, thresholds as dashed
lines, and the query in small print at the bottom.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

from matplotlib import dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from commands.metrics import Series, Threshold, format_value, sig

CHART_SIZE = (1000, 500)  # pixels: what the tests decode and Discord scales down without blurring text
DPI = 100
MAX_SERIES = 10

# Discord's dark theme: the chat background, a slightly darker plot, its text colours.
BACKGROUND = "#313338"
PLOT = "#2b2d31"
TEXT = "#dbdee1"
MUTED = "#949ba4"
GRID = "#3f4147"
# Distinct on a dark background, and never the thresholds' yellow and red.
PALETTE = ("#5865f2", "#57f287", "#00b0f4", "#eb459e", "#faa61a", "#9b84ee", "#f47b67", "#1abc9c",
           "#e3e5e8", "#a3e635")
THRESHOLD_COLOURS = {"warn": "#fee75c", "critical": "#ed4245", "threshold": "#ed4245"}

UNIT_LABELS = {
    "rps": "requests per second",
    "ratio": "percent",
    "seconds": "seconds",
    "cores": "CPU cores",
    "bytes": "bytes",
    "count": "value",
}


def _axis_formatter(unit: str) -> FuncFormatter:
    def fmt(value: float, _pos: int) -> str:
        if unit == "rps":
            return f"{format_value(value, 'count')}/s"
        if unit == "ratio":
            return f"{sig(value * 100)}%"
        if unit == "cores":
            return sig(value)
        return format_value(value, unit)

    return FuncFormatter(fmt)


def varying_labels(series: Sequence[Series]) -> list[str]:
    """The label names whose values differ between the series."""
    keys = sorted({k for s in series for k in s.labels})
    return [k for k in keys if len({s.labels.get(k) for s in series}) > 1]


def legend_labels(series: Sequence[Series], fallback: str = "value") -> list[str]:
    """What tells the series apart: the labels whose values differ (``200``, ``pod=chat-1 code=500``)."""
    varying = varying_labels(series)
    out = []
    for s in series:
        if len(varying) == 1:
            out.append(s.labels.get(varying[0], "") or "∅")
        elif varying:
            out.append(" ".join(f"{k}={s.labels.get(k, '')}" for k in varying))
        else:
            shown = {k: v for k, v in s.labels.items() if k != "__name__"}
            name = s.labels.get("__name__", "")
            inner = ", ".join(f'{k}="{v}"' for k, v in sorted(shown.items()))
            out.append(f"{name}{{{inner}}}" if inner else name or fallback)
    return _elide_common_prefix(out)


def _elide_common_prefix(labels: list[str], keep: int = 4) -> list[str]:
    """``chat-gui-5d9c7b6f4-abcde``, ``chat-gui-5d9c7b6f4-fghij`` → ``…b6f4-abcde``, ``…b6f4-fghij``:
    pods of one service differ at the end, and the chart's title names the service."""
    if len(labels) < 2:
        return labels
    prefix = os.path.commonprefix(labels)
    if len(prefix) < 8 or any(len(label) == len(prefix) for label in labels):
        return labels
    cut = len(prefix) - keep
    return ["…" + label[cut:] for label in labels]


def _rank(s: Series) -> float:
    values = [v for _, v in s.points if not math.isnan(v)]
    return max(values) if values else -math.inf


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    unit: str = "count",
    start: float,
    end: float,
    step: float,
    tz: tzinfo,
    tz_name: str,
    subtitle: str = "",
    footer: str = "",
    thresholds: Sequence[Threshold] = (),
    size: tuple[int, int] = CHART_SIZE,
    max_series: int = MAX_SERIES,
) -> bytes:
    """One PNG of ``size`` pixels: a line per series (the ``max_series`` highest when more)."""
    shown = sorted(series, key=_rank, reverse=True)[:max_series] if len(series) > max_series else list(series)
    hidden = len(series) - len(shown)
    labels = legend_labels(shown)
    order = sorted(range(len(shown)), key=lambda i: labels[i])  # a stable, readable legend order

    fig = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, facecolor=BACKGROUND)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.085, 0.17, 0.68, 0.68), facecolor=PLOT)
    for n, i in enumerate(order):
        xs, ys = _with_gaps(shown[i].points, step)
        ax.plot(xs, ys, color=PALETTE[n % len(PALETTE)], linewidth=2.0, label=labels[i])
    for t in thresholds:
        ax.axhline(t.value, color=THRESHOLD_COLOURS.get(t.kind, "#ed4245"), linestyle="--", linewidth=1.4,
                   label=t.label)

    ax.set_xlim(_x(start), _x(end))
    locator = mdates.AutoDateLocator(tz=tz, minticks=4, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    span = end - start
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if span <= 86400 else "%b %d %H:%M", tz=tz))
    low, high = ax.get_ylim()
    if low > 0 and unit in ("rps", "ratio", "cores", "bytes", "seconds"):
        ax.set_ylim(0, high)  # these start at zero, so a small change does not look dramatic
    if unit == "bytes":
        scale, name = _byte_unit(max(abs(v) for v in ax.get_ylim()))
        ax.yaxis.set_major_locator(_ScaledLocator(scale))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{sig(v / scale)} {name}" if v else "0"))
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.yaxis.set_major_formatter(_axis_formatter(unit))

    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=TEXT, labelsize=12)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_xlabel(f"time ({tz_name})", color=MUTED, fontsize=12)
    ax.set_ylabel(UNIT_LABELS.get(unit, unit), color=MUTED, fontsize=12)

    fig.text(0.085, 0.93, title, color=TEXT, fontsize=16, fontweight="bold", va="baseline")
    note = subtitle + (f" · {hidden} more series not shown" if hidden else "")
    if note:
        fig.text(0.085, 0.875, note, color=MUTED, fontsize=11, va="baseline")
    if footer:
        fig.text(0.015, 0.03, _clip(footer, 120), color=MUTED, fontsize=9, family="monospace")

    if shown or thresholds:
        varying = varying_labels(shown)
        legend = ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=10.5,
                           labelcolor=TEXT, handlelength=1.6, borderaxespad=0,
                           title=varying[0] if len(varying) == 1 else None, title_fontsize=11,
                           alignment="left")
        if legend.get_title():
            legend.get_title().set_color(MUTED)
        for text in legend.get_texts():
            text.set_text(_clip_middle(text.get_text(), 24))
    if not shown:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color=MUTED, fontsize=16)
    _fit(fig, ax, size)

    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI, facecolor=BACKGROUND)
    return out.getvalue()


def _fit(fig: Figure, ax: Any, size: tuple[int, int], margin: float = 10.0) -> None:
    """Move the plot's edges so its tick labels, axis label and legend stay inside the image."""
    for _ in range(3):
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        box = ax.get_tightbbox(renderer)
        left, right = margin - box.x0, box.x1 - (size[0] - margin)
        if left <= 0.5 and right <= 0.5:
            return
        pos = ax.get_position()
        x0 = pos.x0 + max(left, 0) / size[0]
        x1 = pos.x1 - max(right, 0) / size[0]
        ax.set_position((x0, pos.y0, max(x1 - x0, 0.3), pos.height))


def _byte_unit(top: float) -> tuple[float, str]:
    for name, scale in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if top >= scale:
            return scale, name
    return 1.0, "B"


class _ScaledLocator(MaxNLocator):
    """Round ticks in a unit (every 50 MiB, not every 38.1 MiB)."""

    def __init__(self, scale: float) -> None:
        super().__init__(nbins=6, steps=[1, 2, 2.5, 5, 10])
        self.scale = scale

    def tick_values(self, vmin: float, vmax: float) -> Any:
        ticks: Any = super().tick_values(vmin / self.scale, vmax / self.scale)
        return ticks * self.scale


def _clip_middle(text: str, limit: int) -> str:
    """Long names lose their middle: pod names differ at the end (``auth-867…4-hkk2s``)."""
    if len(text) <= limit:
        return text
    tail = limit * 2 // 3
    return text[: limit - tail - 1] + "…" + text[-tail:]


def _x(at: float) -> float:
    """Unix time as matplotlib's date number (the axis formats it in the chart's zone)."""
    return float(mdates.date2num(datetime.fromtimestamp(at, UTC)))


def _with_gaps(points: Sequence[tuple[float, float]], step: float) -> tuple[list[float], list[float]]:
    """Points as datetimes; a missing stretch (more than two steps) breaks the line."""
    xs: list[float] = []
    ys: list[float] = []
    previous: float | None = None
    for at, value in points:
        if previous is not None and at - previous > 2.5 * step:
            xs.append(_x(previous + step))
            ys.append(math.nan)
        xs.append(_x(at))
        ys.append(value)
        previous = at
    return xs, ys


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
