"""The console's inline SVG charts, read back with xml.etree: bar heights, titles,
escaping, empty charts, and no style attribute anywhere."""

from __future__ import annotations

import itertools
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from markupsafe import Markup

from scheduler_svc.console.charts import (
    OUTCOMES,
    LagPoint,
    MinuteCounts,
    lag_lines,
    outcome_strip,
    runs_per_minute,
)

NS = ""  # inline SVG in HTML carries no namespace
NOON = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>&\'"'


def svg(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    root = ET.fromstring(str(markup))
    assert root.tag == f"{NS}svg"
    assert root.get("role") == "img"
    for element in root.iter():
        assert "style" not in element.attrib, element.tag
        assert element.tag != f"{NS}style"
    return root


def minute(offset: int) -> datetime:
    return NOON + timedelta(minutes=offset)


def groups(root: ET.Element) -> list[ET.Element]:
    return root.findall(f"{NS}g")


def bars(group: ET.Element) -> list[tuple[str, float, float]]:
    """(class, y, height) of each rect of a minute's stack."""
    return [
        (r.get("class", ""), float(r.get("y", "nan")), float(r.get("height", "nan")))
        for r in group.findall(f"{NS}rect")
    ]


def title(element: ET.Element) -> str:
    found = element.find(f"{NS}title")
    assert found is not None
    return found.text or ""


# --- runs per minute ------------------------------------------------------------------


def test_bars_stack_by_outcome_with_heights_proportional_to_counts() -> None:
    root = svg(
        runs_per_minute(
            [
                MinuteCounts(minute(0), {"succeeded": 120, "failed": 2}),
                MinuteCounts(minute(1), {"failed": 30, "retried": 5, "skipped": 10}),
                MinuteCounts(minute(2), {"cancelled": 1, "succeeded": 60}),
            ]
        )
    )
    stacks = groups(root)
    assert [title(g) for g in stacks] == [
        "12:00 — 120 succeeded, 2 failed",
        "12:01 — 30 failed, 10 skipped, 5 retried",
        "12:02 — 60 succeeded, 1 cancelled",
    ]
    assert [[c for c, _, _ in bars(g)] for g in stacks] == [
        ["bar s-succeeded", "bar s-failed"],
        ["bar s-failed", "bar s-skipped", "bar s-retried"],
        ["bar s-succeeded", "bar s-cancelled"],
    ]
    counts = [[120, 2], [30, 10, 5], [60, 1]]
    per_run = bars(stacks[0])[0][2] / 120
    assert per_run > 0
    for group, expected in zip(stacks, counts, strict=True):
        stack = bars(group)
        for (_, _, height), count in zip(stack, expected, strict=True):
            assert math.isclose(height, count * per_run, abs_tol=0.01)
        # each segment sits on the one below it, the first on the base line
        for (_, y_low, _), (_, y_high, h_high) in itertools.pairwise(stack):
            assert math.isclose(y_high + h_high, y_low, abs_tol=0.01)
    bases = {round(y + h, 2) for g in stacks for (_, y, h) in bars(g)[:1]}
    assert len(bases) == 1


def test_bars_are_placed_by_minute_and_share_an_x_per_minute() -> None:
    root = svg(
        runs_per_minute(
            [
                MinuteCounts(minute(0), {"succeeded": 1}),
                MinuteCounts(minute(-59), {"succeeded": 1}),
                MinuteCounts(minute(-60), {"succeeded": 1}),  # past the hour: not drawn
            ]
        )
    )
    xs = [float(g.findall(f"{NS}rect")[0].get("x", "nan")) for g in groups(root)]
    assert len(xs) == 2
    assert xs[0] < xs[1]
    assert [title(g) for g in groups(root)] == ["11:01 — 1 succeeded", "12:00 — 1 succeeded"]
    assert root.get("aria-label") == "Runs per minute, 11:01 to 12:00: 2 runs (2 succeeded)"


def test_entries_for_the_same_minute_are_added_up() -> None:
    root = svg(
        runs_per_minute(
            [
                MinuteCounts(minute(0), {"succeeded": 3}),
                MinuteCounts(minute(0) + timedelta(seconds=30), {"succeeded": 4, "failed": 1}),
            ]
        )
    )
    assert [title(g) for g in groups(root)] == ["12:00 — 7 succeeded, 1 failed"]


def test_end_fixes_the_window_and_empty_minutes_draw_nothing() -> None:
    root = svg(
        runs_per_minute(
            [MinuteCounts(minute(0), {"succeeded": 5, "failed": 0})],
            end=minute(30),
        )
    )
    assert "12:30" in (root.get("aria-label") or "")
    assert len(root.findall(f".//{NS}rect")) == 1
    later = svg(runs_per_minute([MinuteCounts(minute(0), {"succeeded": 5})], end=minute(60)))
    assert later.findall(f".//{NS}rect") == []


def test_no_runs_draws_an_empty_chart_that_says_so() -> None:
    for chart in (
        runs_per_minute([]),
        runs_per_minute([MinuteCounts(minute(0), {"succeeded": 0})]),
    ):
        root = svg(chart)
        assert root.findall(f".//{NS}rect") == []
        texts = [t.text for t in root.iter(f"{NS}text")]
        assert texts == ["no runs in the last hour"]
        assert root.get("aria-label") == "Runs per minute: no runs in the last hour"


def test_hostile_outcome_names_are_escaped_and_classed_other() -> None:
    chart = runs_per_minute([MinuteCounts(minute(0), {HOSTILE: 2, "succeeded": 1})])
    assert "<script" not in str(chart)
    root = svg(chart)
    assert title(groups(root)[0]) == f"12:00 — 1 succeeded, 2 {HOSTILE}"
    assert [c for c, _, _ in bars(groups(root)[0])] == ["bar s-succeeded", "bar s-other"]
    assert HOSTILE in (root.get("aria-label") or "")


def test_the_count_axis_tops_at_a_round_number_above_the_peak() -> None:
    root = svg(runs_per_minute([MinuteCounts(minute(0), {"succeeded": 1300})]))
    labels = [t.text for t in root.iter(f"{NS}text") if t.get("text-anchor") == "end"]
    assert labels == ["0", "1k", "2k"]


def test_output_is_deterministic_whatever_the_input_order() -> None:
    entries = [MinuteCounts(minute(-i), {"succeeded": i, "failed": i % 3}) for i in range(60)]
    assert runs_per_minute(entries) == runs_per_minute(list(reversed(entries)))
    assert len(svg(runs_per_minute(entries)).findall(f".//{NS}rect")) == 59 + 40


@given(
    st.lists(
        st.dictionaries(st.sampled_from(OUTCOMES), st.integers(0, 10_000), max_size=5),
        min_size=1,
        max_size=60,
    )
)
@settings(max_examples=100, deadline=None)
def test_every_bar_height_is_its_count_times_one_scale(counts: list[dict[str, int]]) -> None:
    entries = [MinuteCounts(minute(-i), c) for i, c in enumerate(counts)]
    root = svg(runs_per_minute(entries))
    peak = max(sum(c.values()) for c in counts)
    rects = root.findall(f".//{NS}rect")
    assert len(rects) == sum(1 for c in counts for v in c.values() if v > 0)
    if peak == 0:
        return
    ticks = [t for t in root.iter(f"{NS}text") if t.get("text-anchor") == "end"]
    top = float((ticks[-1].text or "").replace("k", "e3"))
    assert top >= peak
    # the scale the axis shows: its height from 0 to the top tick, over the top count
    scale = (float(ticks[0].get("y", "nan")) - float(ticks[-1].get("y", "nan"))) / top
    by_stamp = {minute(-i).strftime("%H:%M"): c for i, c in enumerate(counts)}
    for group in groups(root):
        stamp = title(group).split(" — ")[0]
        expected = [v for o in OUTCOMES if (v := by_stamp[stamp].get(o, 0)) > 0]
        heights = [h for _, _, h in bars(group)]
        for height, count in zip(heights, expected, strict=True):
            assert math.isclose(height, count * scale, abs_tol=0.01)


# --- fire lag -------------------------------------------------------------------------


def test_lag_lines_draw_p50_below_p99_on_a_log_axis() -> None:
    root = svg(lag_lines([LagPoint(minute(i), 10.0, 1000.0) for i in range(-2, 1)]))
    lines = {p.get("class"): p.get("points", "") for p in root.iter(f"{NS}polyline")}
    assert set(lines) == {"line p50", "line p99"}
    p50 = [tuple(map(float, xy.split(","))) for xy in lines["line p50"].split()]
    p99 = [tuple(map(float, xy.split(","))) for xy in lines["line p99"].split()]
    assert len(p50) == len(p99) == 3
    assert all(b[1] < a[1] for a, b in zip(p50, p99, strict=True))  # higher lag, higher up
    ticks = {
        t.text: float(t.get("y", "nan"))
        for t in root.iter(f"{NS}text")
        if t.get("text-anchor") == "end"
    }
    assert list(ticks) == ["10 ms", "100 ms", "1 s"]
    # a log axis: one decade is the same height everywhere
    assert math.isclose(ticks["10 ms"] - ticks["100 ms"], ticks["100 ms"] - ticks["1 s"])
    assert math.isclose(p50[0][1] + 3, ticks["10 ms"], abs_tol=0.01)
    assert math.isclose(p99[0][1] + 3, ticks["1 s"], abs_tol=0.01)
    assert root.get("aria-label") == (
        "Fire lag per minute, 11:01 to 12:00: p50 up to 10 ms, p99 up to 1.0 s"
    )
    legend = [t.text for t in root.iter(f"{NS}text") if t.get("class") == "legend"]
    assert legend == ["p50", "p99"]


def test_a_minute_without_fires_breaks_the_lines() -> None:
    points = [
        LagPoint(minute(-3), 5.0, 50.0),
        LagPoint(minute(-2), 6.0, 60.0),
        LagPoint(minute(-1), None, None),
        LagPoint(minute(0), 7.0, float("nan")),
    ]
    root = svg(lag_lines(points))
    p50 = [p for p in root.iter(f"{NS}polyline") if p.get("class") == "line p50"]
    p99 = [p for p in root.iter(f"{NS}polyline") if p.get("class") == "line p99"]
    assert [len(p.get("points", "").split()) for p in p50] == [2, 1]
    assert [len(p.get("points", "").split()) for p in p99] == [2]
    dots = [title(c) for c in root.iter(f"{NS}circle")]
    assert dots[-1] == "12:00 — p50 7.0 ms"
    assert dots[0] == "11:57 — p50 5.0 ms, p99 50 ms"


def test_no_fires_draws_an_empty_lag_chart() -> None:
    for points in ([], [LagPoint(minute(0), None, None)]):
        root = svg(lag_lines(points))
        assert list(root.iter(f"{NS}polyline")) == []
        assert [t.text for t in root.iter(f"{NS}text")] == ["no fires in the last hour"]


def test_lag_under_a_millisecond_sits_on_the_floor() -> None:
    root = svg(lag_lines([LagPoint(minute(0), 0.2, 0.0)]))
    base = [float(t.get("y", "nan")) for t in root.iter(f"{NS}text") if t.text == "1 ms"]
    ys = {float(c.get("cy", "nan")) for c in root.iter(f"{NS}circle")}
    assert len(base) == 1
    assert ys == {base[0] - 3}


# --- recent outcomes ------------------------------------------------------------------


def test_outcome_strip_has_one_square_per_run_oldest_left() -> None:
    statuses = ["succeeded", "failed", "skipped", "cancelled", "running", "pending", "weird"]
    root = svg(outcome_strip(statuses))
    rects = root.findall(f"{NS}rect")
    assert [r.get("class") for r in rects] == [
        "s-succeeded",
        "s-failed",
        "s-skipped",
        "s-cancelled",
        "s-running",
        "s-pending",
        "s-other",
    ]
    assert [title(r) for r in rects] == statuses
    xs = [float(r.get("x", "nan")) for r in rects]
    assert xs == sorted(xs)
    assert len(set(xs)) == len(xs)
    assert root.get("aria-label") == (
        "Recent runs, oldest first: 1 succeeded, 1 failed, 1 skipped, 1 cancelled, "
        "1 pending, 1 running, 1 weird"
    )


def test_outcome_strip_escapes_hostile_statuses() -> None:
    chart = outcome_strip([HOSTILE, "failed"])
    assert "<script" not in str(chart)
    root = svg(chart)
    assert [title(r) for r in root.findall(f"{NS}rect")] == [HOSTILE, "failed"]
    assert root.findall(f"{NS}rect")[0].get("class") == "s-other"


def test_outcome_strip_without_runs_says_so() -> None:
    root = svg(outcome_strip([]))
    assert root.findall(f"{NS}rect") == []
    assert [t.text for t in root.iter(f"{NS}text")] == ["no runs yet"]
