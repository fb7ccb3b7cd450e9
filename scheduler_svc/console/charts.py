"""Inline SVG charts drawn on the server: `runs_per_minute`, `lag_lines`, `outcome_strip`.

Colours and text sizes come from console.css through classes (`s-succeeded`, `p99`,
`axis` ...) and SVG presentation attributes, never a style attribute: the console's CSP
has no 'unsafe-inline'. Every element is built by `_el`, which escapes each attribute
value and text, and the same input gives the same bytes. A chart of the last hour has
60 one-minute slots ending at `end` (by default the latest minute given); a minute with
no entry is an empty slot. Pure: no clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from markupsafe import Markup, escape

OUTCOMES = ("succeeded", "failed", "skipped", "cancelled", "retried")
_STATUSES = frozenset((*OUTCOMES, "pending", "running"))
_SLOTS = 60
_MINUTE = timedelta(minutes=1)
_WIDTH, _HEIGHT = 600, 160
_LEFT, _RIGHT, _TOP, _BOTTOM = 44, 8, 16, 20  # margins round the plot, for the axis labels
_PLOT_W = _WIDTH - _LEFT - _RIGHT
_PLOT_H = _HEIGHT - _TOP - _BOTTOM
_BASE = _TOP + _PLOT_H
_SLOT_W = _PLOT_W / _SLOTS
_SQUARE, _GAP = 10, 2  # the outcome strip
_SERIES = ("p50", "p99")


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """Runs that ended in one minute, by outcome (a name in OUTCOMES, or another)."""

    minute: datetime
    counts: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class LagPoint:
    """Fire lag of the runs started in one minute, in milliseconds; None when none started."""

    minute: datetime
    p50_ms: float | None
    p99_ms: float | None


def runs_per_minute(minutes: Sequence[MinuteCounts], *, end: datetime | None = None) -> Markup:
    """Stacked bars of runs per minute by outcome over the hour ending at `end`; entries
    for the same minute (one per replica) are added up."""
    last = _last_minute([m.minute for m in minutes], end)
    totals: dict[int, dict[str, int]] = {}
    for entry in minutes:
        slot = _slot(entry.minute, last)
        if slot is not None:
            counts = totals.setdefault(slot, {})
            for outcome, count in entry.counts.items():
                counts[outcome] = counts.get(outcome, 0) + max(count, 0)
    peak = max((sum(c.values()) for c in totals.values()), default=0)
    if last is None or peak == 0:
        return _empty("runs", "Runs per minute", "no runs in the last hour")
    top = _nice(peak)
    scale = _PLOT_H / top
    body = [*_count_axis(top), *_time_axis(last)]
    overall: dict[str, int] = {}
    for slot in sorted(totals):
        counts = {o: c for o, c in _ordered(totals[slot]) if c > 0}
        if not counts:
            continue
        when = _clock(last - (_SLOTS - 1 - slot) * _MINUTE)
        bars = [_el("title", {}, f"{when} — {_tally(counts)}")]
        below = 0
        for outcome, count in counts.items():
            overall[outcome] = overall.get(outcome, 0) + count
            y_top, y_bottom = _BASE - (below + count) * scale, _BASE - below * scale
            bar = {
                "class": f"bar {_status_class(outcome)}",
                "x": _n(_LEFT + slot * _SLOT_W),
                "y": _n(y_top),
                "width": _n(_SLOT_W - 1),
                "height": _n(y_bottom - y_top),
            }
            bars.append(_el("rect", bar))
            below += count
        body.append(_el("g", {}, *bars))
    runs = sum(overall.values())
    label = f"Runs per minute, {_span(last)}: {runs:,} runs ({_tally(overall)})"
    return _svg("runs", label, body)


def lag_lines(points: Sequence[LagPoint], *, end: datetime | None = None) -> Markup:
    """p50 and p99 fire lag per minute over the hour ending at `end`, two lines on a
    log-scale axis in ms (lags under 1 ms are drawn at 1 ms); a gap breaks a line."""
    last = _last_minute([p.minute for p in points], end)
    slots: dict[int, LagPoint] = {}
    for point in points:
        slot = _slot(point.minute, last)
        if slot is not None:
            slots[slot] = point  # one point per minute: a repeat replaces it
    values = [v for p in slots.values() for s in _SERIES if (v := _lag(p, s)) is not None]
    if last is None or not values:
        return _empty("lag", "Fire lag per minute", "no fires in the last hour")
    low = 10 ** math.floor(math.log10(max(min(values), 1)))
    high = max(10 ** math.ceil(math.log10(max(max(values), 1))), low * 10)
    decades = math.log10(high / low)

    def y(value: float) -> float:
        return _BASE - math.log10(max(value, 1) / low) / decades * _PLOT_H

    body = [*_time_axis(last)]
    for exponent in range(round(decades) + 1):
        tick = low * 10**exponent
        body.extend(_tick(y(tick), _ms_tick(tick)))
    peaks: list[str] = []
    for series in _SERIES:
        runs: list[list[str]] = []
        for slot in range(_SLOTS):
            value = _lag(slots.get(slot), series)
            if value is None:
                if runs and runs[-1]:
                    runs.append([])
                continue
            if not runs:
                runs.append([])
            runs[-1].append(f"{_n(_middle(slot))},{_n(y(value))}")
        for run in filter(None, runs):
            line = {"class": f"line {series}", "fill": "none", "points": " ".join(run)}
            body.append(_el("polyline", line))
        seen = [v for p in slots.values() if (v := _lag(p, series)) is not None]
        if seen:
            peaks.append(f"{series} up to {_ms(max(seen))}")
    for slot in sorted(slots):
        point = slots[slot]
        parts = [f"{s} {_ms(v)}" for s in _SERIES if (v := _lag(point, s)) is not None]
        title = _el("title", {}, f"{_clock(point.minute)} — " + ", ".join(parts))
        for series in _SERIES:
            value = _lag(point, series)
            if value is not None:
                dot = {"class": f"pt {series}", "cx": _n(_middle(slot)), "cy": _n(y(value))}
                body.append(_el("circle", {**dot, "r": "2"}, title))
    for index, series in enumerate(_SERIES):
        x = _WIDTH - _RIGHT - 70 + index * 36
        key = {"class": f"line {series}", "x1": x, "y1": 6, "x2": x + 10, "y2": 6}
        body.append(_el("line", key))
        body.append(_el("text", {"class": "legend", "x": x + 13, "y": 9}, series))
    label = f"Fire lag per minute, {_span(last)}: " + ", ".join(peaks)
    return _svg("lag", label, body)


def outcome_strip(statuses: Sequence[str]) -> Markup:
    """A row of squares, one per recent run, oldest on the left, coloured by status."""
    if not statuses:
        empty = _el("text", {"class": "empty", "x": 0, "y": 10}, "no runs yet")
        frame = {"viewBox": "0 0 120 12", "width": 120, "height": 12}
        return _el("svg", {**_root("strip", "Recent runs: none"), **frame}, empty)
    width = len(statuses) * (_SQUARE + _GAP) - _GAP
    squares = [
        _el(
            "rect",
            {
                "class": _status_class(status),
                "x": i * (_SQUARE + _GAP),
                "y": 0,
                "width": _SQUARE,
                "height": _SQUARE,
            },
            _el("title", {}, status),
        )
        for i, status in enumerate(statuses)
    ]
    tally: dict[str, int] = {}
    for status in statuses:
        tally[status] = tally.get(status, 0) + 1
    root = _root("strip", f"Recent runs, oldest first: {_tally(tally)}")
    frame = {"viewBox": f"0 0 {width} {_SQUARE}", "width": width, "height": _SQUARE}
    return _el("svg", {**root, **frame}, *squares)


# --- parts ---------------------------------------------------------------------------


def _el(tag: str, attributes: Mapping[str, object], *content: Markup | str) -> Markup:
    """One element; attribute values and text content are escaped, Markup kept as is.
    Built with f-strings over escape(): a page draws thousands of elements, and
    Markup.format costs several times as much for the same bytes."""
    attrs = "".join(f' {k}="{escape(v)}"' for k, v in attributes.items())
    inner = "".join(escape(part) for part in content)
    # Safe: tag and attribute names are this module's own constants, values escaped above.
    return Markup(f"<{tag}{attrs}>{inner}</{tag}>")  # noqa: S704


def _root(kind: str, label: str) -> dict[str, object]:
    # No xmlns: inline in HTML an <svg> is SVG by itself, and the pages name no origin
    # but the service's own.
    return {
        "class": f"chart {kind}",
        "role": "img",
        "aria-label": label,
    }


def _svg(kind: str, label: str, body: Sequence[Markup]) -> Markup:
    frame = {"viewBox": f"0 0 {_WIDTH} {_HEIGHT}", "width": _WIDTH, "height": _HEIGHT}
    axis = {"class": "axis", "x1": _LEFT, "y1": _BASE, "x2": _WIDTH - _RIGHT, "y2": _BASE}
    return _el("svg", {**_root(kind, label), **frame}, _el("line", axis), *body)


def _empty(kind: str, title: str, message: str) -> Markup:
    where = {"x": _LEFT + _PLOT_W // 2, "y": _TOP + _PLOT_H // 2, "text-anchor": "middle"}
    return _svg(kind, f"{title}: {message}", [_el("text", {"class": "empty", **where}, message)])


def _count_axis(top: int) -> list[Markup]:
    ticks = [0, top // 2, top] if top % 2 == 0 else [0, top]
    return [part for tick in ticks for part in _tick(_BASE - tick * _PLOT_H / top, _count(tick))]


def _tick(y: float, label: str) -> list[Markup]:
    grid = {"class": "grid", "x1": _LEFT, "y1": _n(y), "x2": _WIDTH - _RIGHT, "y2": _n(y)}
    where = {"x": _LEFT - 4, "y": _n(y + 3), "text-anchor": "end"}
    return [_el("line", grid), _el("text", {"class": "axis", **where}, label)]


def _time_axis(last: datetime) -> list[Markup]:
    return [
        _el(
            "text",
            {"class": "axis", "x": _n(_middle(slot)), "y": _HEIGHT - 6, "text-anchor": "middle"},
            _clock(last - (_SLOTS - 1 - slot) * _MINUTE),
        )
        for slot in (0, 15, 30, 45, 59)
    ]


def _middle(slot: int) -> float:
    return _LEFT + (slot + 0.5) * _SLOT_W


def _last_minute(minutes: Sequence[datetime], end: datetime | None) -> datetime | None:
    last = end if end is not None else max(minutes, default=None)
    return None if last is None else last.replace(second=0, microsecond=0)


def _slot(minute: datetime, last: datetime | None) -> int | None:
    if last is None:
        return None
    slot = _SLOTS - 1 - (last - minute.replace(second=0, microsecond=0)) // _MINUTE
    return slot if 0 <= slot < _SLOTS else None


def _lag(point: LagPoint | None, series: str) -> float | None:
    if point is None:
        return None
    value = point.p50_ms if series == "p50" else point.p99_ms
    return None if value is None or not math.isfinite(value) else value


def _ordered(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Known outcomes in their fixed order, then any other names alphabetically."""
    known = [(o, counts[o]) for o in OUTCOMES if o in counts]
    return known + sorted((o, c) for o, c in counts.items() if o not in OUTCOMES)


def _tally(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{c:,} {o}" for o, c in _ordered(counts))


def _status_class(status: str) -> str:
    return f"s-{status}" if status in _STATUSES else "s-other"


def _nice(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value`."""
    power = 1
    while True:
        for factor in (1, 2, 5):
            if factor * power >= value:
                return factor * power
        power *= 10


def _count(value: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return str(value)


def _ms(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.1f} ms" if value < 10 else f"{value:.0f} ms"


def _ms_tick(value: float) -> str:
    return f"{value / 1000:g} s" if value >= 1000 else f"{value:g} ms"


def _clock(moment: datetime) -> str:
    return moment.strftime("%H:%M")


def _span(last: datetime) -> str:
    return f"{_clock(last - (_SLOTS - 1) * _MINUTE)} to {_clock(last)}"


def _n(value: float) -> str:
    """A coordinate with at most two decimals, the same text for the same value."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
