"""Schedule parsing and fire-time arithmetic: tables, DST cases and properties."""

from __future__ import annotations

import functools
import itertools
import time
from datetime import UTC, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo, available_timezones

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler_svc.schedule import (
    PREVIEW_HORIZON,
    DueTicks,
    MisfirePolicy,
    Schedule,
    ScheduleError,
    check_min_interval,
    due_ticks,
    fires,
    first_fire,
    next_fire,
    parse,
    parse_timezone,
    preview,
)

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
SYDNEY = ZoneInfo("Australia/Sydney")
UTC_ZONE = ZoneInfo("UTC")
US = timedelta(microseconds=1)
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def at(text: str) -> datetime:
    """An ISO timestamp (with offset or Z) as a UTC datetime."""
    return datetime.fromisoformat(text).astimezone(UTC)


def iso(moments: list[datetime]) -> list[str]:
    return [m.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for m in moments]


# --- parse: accepted ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cron", "has_seconds"),
    [
        ("*/5 * * * *", "*/5 * * * *", False),
        ("  0 9 * * MON-FRI \n", "0 9 * * MON-FRI", False),
        ("0   9 * *   1-5", "0 9 * * 1-5", False),
        ("0,15,30,45 8-18/2 * * *", "0,15,30,45 8-18/2 * * *", False),
        ("5-50/5 * * * *", "5-50/5 * * * *", False),
        ("0 0 1 JAN,jul *", "0 0 1 JAN,jul *", False),
        ("0 22-2 * * *", "0 22-2 * * *", False),
        ("0 0 L * *", "0 0 L * *", False),
        ("0 9 * * 1#2", "0 9 * * 1#2", False),
        ("0 9 * * L5", "0 9 * * L5", False),
        ("0 9 15W * *", "0 9 15W * *", False),
        ("0 12 ? * SUN", "0 12 ? * SUN", False),
        ("0 0 29 2 *", "0 0 29 2 *", False),
        ("*/10 * * * * *", "*/10 * * * * *", True),
        ("30 0 9 * * *", "30 0 9 * * *", True),
        ("0 */15 * * * MON", "0 */15 * * * MON", True),
        ("@yearly", "0 0 1 1 *", False),
        ("@annually", "0 0 1 1 *", False),
        ("@monthly", "0 0 1 * *", False),
        ("@weekly", "0 0 * * 0", False),
        ("@daily", "0 0 * * *", False),
        ("@midnight", "0 0 * * *", False),
        ("@hourly", "0 * * * *", False),
        (" @Daily ", "0 0 * * *", False),
    ],
)
def test_parse_cron_forms(text: str, cron: str, has_seconds: bool) -> None:
    parsed = parse(text)
    assert parsed == Schedule(text=text.strip(), kind="cron", cron=cron, has_seconds=has_seconds)


@pytest.mark.parametrize(
    ("text", "every"),
    [
        ("@every 30s", timedelta(seconds=30)),
        ("@every 1s", timedelta(seconds=1)),
        ("@every 5m", timedelta(minutes=5)),
        ("@every 90m", timedelta(minutes=90)),
        ("@every 1h30m", timedelta(hours=1, minutes=30)),
        ("@every 2d", timedelta(days=2)),
        ("@every 1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("@every 366d", timedelta(days=366)),
        ("@every 1H", timedelta(hours=1)),
        ("  @every   45s  ", timedelta(seconds=45)),
    ],
)
def test_parse_every(text: str, every: timedelta) -> None:
    assert parse(text) == Schedule(text=text.strip(), kind="every", every=every)


@pytest.mark.parametrize(
    ("text", "when"),
    [
        ("@at 2025-06-01T09:00:00Z", "2025-06-01T09:00:00+00:00"),
        ("@at 2025-06-01T09:00:00+02:00", "2025-06-01T07:00:00+00:00"),
        ("@at 2025-06-01T09:00:00-05:30", "2025-06-01T14:30:00+00:00"),
        ("@at 2025-06-01t09:00:00.25z", "2025-06-01T09:00:00.250000+00:00"),
        ("@at 2025-06-01 09:00:00Z", "2025-06-01T09:00:00+00:00"),
        ("@at 2025-06-01T09:00:00.1234567891Z", "2025-06-01T09:00:00.123456+00:00"),
        ("@at 2025-12-31T23:30:00-01:00", "2026-01-01T00:30:00+00:00"),
        ("@at 2025-06-01T09:00:00-00:00", "2025-06-01T09:00:00+00:00"),
    ],
)
def test_parse_at(text: str, when: str) -> None:
    parsed = parse(text)
    assert parsed.kind == "at"
    assert parsed.at == datetime.fromisoformat(when)
    assert parsed.at is not None
    assert parsed.at.tzinfo is UTC


# --- parse: rejected ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "schedule must not be empty"),
        ("   ", "schedule must not be empty"),
        ("x" * 600, "longer than 512 characters"),
        ("* * * *", "cron expression must have 5 or 6 fields"),
        ("* * * * * * *", "cron expression must have 5 or 6 fields"),
        ("daily", "cron expression must have 5 or 6 fields"),
        ("61 * * * *", "invalid minute field '61'"),
        ("* 24 * * *", "invalid hour field '24'"),
        ("* * 32 * *", "invalid day-of-month field '32'"),
        ("* * 0 * *", "invalid day-of-month field '0'"),
        ("* * * 13 *", "invalid month field '13'"),
        ("* * * FOO *", "invalid month field 'FOO'"),
        ("* * * * 8", "invalid day-of-week field '8'"),
        ("* * * * 1#6", "invalid day-of-week field '1#6'"),
        ("60 * * * * *", "invalid second field '60'"),
        ("*/0 * * * *", "invalid minute field '*/0'"),
        ("1-2-3 * * * *", "invalid minute field '1-2-3'"),
        ("* ? * * *", "invalid hour field '?'"),
        ("* * * * * ;", "day-of-week field ';' contains invalid characters"),
        ("0 9-9 * * *", "range '9-9' in the hour field has equal bounds; write '9'"),
        ("0 9 * * MON-mon", "range 'MON-mon' in the day-of-week field has equal bounds"),
        ("H * * * *", "hashed and random values ('H') are not supported"),
        ("0 R/2 * * *", "hashed and random values ('R/2') are not supported"),
        ("0 0 30 2 *", "cron expression '0 0 30 2 *' never matches a date"),
        ("0 0 31 4,6,9,11 *", "never matches a date"),
        ("@weekly 3", "'@weekly' takes no argument"),
        ("@fortnightly", "unknown schedule keyword '@fortnightly'"),
        ("@every", "'@every' needs a duration"),
        ("@every 0s", "'@every 0s' is shorter than 1 second"),
        ("@every 0h0m", "'@every 0h0m' is shorter than 1 second"),
        ("@every 367d", "'@every 367d' is longer than 366 days"),
        ("@every 8785h", "is longer than 366 days"),
        ("@every 99999999999999999999999d", "is longer than 366 days"),
        ("@every 5x", "invalid duration '5x'"),
        ("@every 1.5h", "invalid duration '1.5h'"),
        ("@every -5m", "invalid duration '-5m'"),
        ("@every 1m1h", "invalid duration '1m1h'"),
        ("@every 500ms", "invalid duration '500ms'"),
        ("@at", "invalid '@at' timestamp ''"),
        ("@at tomorrow", "invalid '@at' timestamp 'tomorrow'"),
        ("@at 2025-06-01T09:00Z", "invalid '@at' timestamp"),
        ("@at 2025-06-01T09:00:00", "has no UTC offset; add 'Z' or an offset"),
        ("@at 2025-02-30T09:00:00Z", "is not a valid date and time"),
        ("@at 2025-06-01T24:00:00Z", "is not a valid date and time"),
        ("@at 2025-06-01T09:00:00+24:00", "is not a valid date and time"),
        ("@at 2025-06-01T09:00:00+01:60", "is not a valid date and time"),
        ("@at 0001-01-01T00:00:00+01:00", "is not a valid date and time"),
    ],
)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


@given(
    st.one_of(
        st.text(max_size=40),
        st.lists(
            st.text(alphabet="0123456789*/-,#?LWHRlwhrMONJANsun ", min_size=1, max_size=6),
            min_size=4,
            max_size=7,
        ).map(" ".join),
        st.text(alphabet="@everyat0123456789dhms:TZ+-. ", max_size=30),
    )
)
@PROPERTY
def test_parse_raises_only_schedule_error(text: str) -> None:
    try:
        parsed = parse(text)
    except ScheduleError as exc:
        message = str(exc)
    else:
        message = "accepted"
        assert parsed.text == text.strip()
    assert message
    assert "\n" not in message


# --- time zones ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["UTC", "America/New_York", "Etc/GMT+5", "America/Argentina/Buenos_Aires"]
)
def test_parse_timezone_accepts(name: str) -> None:
    assert parse_timezone(name) == ZoneInfo(name)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "time zone must not be empty"),
        ("Mars/Base", "unknown time zone 'Mars/Base'"),
        ("America", "unknown time zone 'America'"),
        ("america/new_york", "unknown time zone"),
        ("../etc/passwd", "invalid time zone name '../etc/passwd'"),
        ("/etc/localtime", "invalid time zone name"),
        ("Europe/../Europe/London", "invalid time zone name"),
        ("America//New_York", "invalid time zone name"),
        ("America/New York", "invalid time zone name"),
        ("Europe/London\x00", "invalid time zone name"),
        ("A" * 100, "longer than 64 characters"),
    ],
)
def test_parse_timezone_rejects(name: str, message: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_timezone(name)
    assert message in str(caught.value)


# --- fire times: basics ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "zone", "after", "expected"),
    [
        ("*/15 * * * *", "UTC", "2025-01-01T10:07:30Z", ["10:15", "10:30", "10:45"]),
        ("*/15 * * * *", "UTC", "2025-01-01T10:15:00Z", ["10:30", "10:45", "11:00"]),
        ("*/15 * * * *", "UTC", "2025-01-01T10:14:59.999999Z", ["10:15", "10:30", "10:45"]),
        ("0 9 * * MON-FRI", "Europe/Paris", "2025-01-03T09:00:00+01:00", ["01-06T08:00"]),
        ("0 0 L * *", "UTC", "2025-02-10T00:00:00Z", ["02-28T00:00", "03-31T00:00"]),
        ("0 9 * * 1#2", "UTC", "2025-01-01T00:00:00Z", ["01-13T09:00", "02-10T09:00"]),
        ("0 9 * * L5", "UTC", "2025-01-01T00:00:00Z", ["01-31T09:00", "02-28T09:00"]),
        ("0 0 29 2 *", "UTC", "2025-01-01T00:00:00Z", ["2028-02-29T00:00"]),
        ("*/20 * * * * *", "UTC", "2025-01-01T10:00:05Z", ["10:00:20", "10:00:40", "10:01:00"]),
        ("@hourly", "Asia/Kolkata", "2025-01-01T10:00:00Z", ["10:30", "11:30"]),
        ("@every 90m", "UTC", "2025-01-01T10:00:00.5Z", ["11:30:00.5", "13:00:00.5"]),
        ("@at 2025-01-01T12:00:00Z", "UTC", "2025-01-01T10:00:00Z", ["12:00"]),
        ("@at 2025-01-01T12:00:00Z", "UTC", "2025-01-01T12:00:00Z", []),
    ],
)
def test_preview_basics(text: str, zone: str, after: str, expected: list[str]) -> None:
    fires = preview(parse(text), ZoneInfo(zone), at(after), len(expected) or 1)
    rendered = [f.isoformat() for f in fires]
    assert len(rendered) == len(expected)
    for fire, fragment in zip(rendered, expected, strict=True):
        assert fragment in fire
    assert all(f.tzinfo is UTC for f in fires)


def test_next_fire_accepts_any_aware_datetime_and_returns_utc() -> None:
    after = datetime(2025, 1, 1, 5, 7, tzinfo=NEW_YORK)
    fire = next_fire(parse("*/15 * * * *"), NEW_YORK, after)
    assert fire == at("2025-01-01T10:15:00Z")
    assert fire is not None
    assert fire.tzinfo is UTC


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(parse("* * * * *"), NEW_YORK, datetime(2025, 1, 1))


def test_first_fire_of_past_at_is_its_own_time() -> None:
    schedule = parse("@at 2025-01-01T12:00:00+01:00")
    assert first_fire(schedule, NEW_YORK, at("2026-01-01T00:00:00Z")) == at("2025-01-01T11:00:00Z")
    assert next_fire(schedule, NEW_YORK, at("2026-01-01T00:00:00Z")) is None


def test_first_fire_of_recurring_is_next_fire() -> None:
    now = at("2025-01-01T10:00:00Z")
    assert first_fire(parse("@every 5m"), UTC_ZONE, now) == at("2025-01-01T10:05:00Z")
    assert first_fire(parse("0 * * * *"), UTC_ZONE, now) == at("2025-01-01T11:00:00Z")


def test_never_matching_cron_built_directly_returns_none_quickly() -> None:
    started = time.perf_counter()
    schedule = Schedule(text="0 0 30 2 *", kind="cron", cron="0 0 30 2 *")
    assert next_fire(schedule, NEW_YORK, at("2025-01-01T00:00:00Z")) is None
    assert preview(schedule, NEW_YORK, at("2025-01-01T00:00:00Z"), 5) == []
    assert time.perf_counter() - started < 2


def test_preview_of_zero_is_empty() -> None:
    assert preview(parse("* * * * *"), NEW_YORK, at("2025-01-01T00:00:00Z"), 0) == []


# --- DST ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "text", "after", "expected"),
    [
        # New York: 2025-03-09 02:00 EST -> 03:00 EDT; 2025-11-02 02:00 EDT -> 01:00 EST.
        (
            NEW_YORK,
            "30 2 * * *",
            "2025-03-08T12:00-05:00",
            ["2025-03-09T07:00", "2025-03-10T06:30"],
        ),
        (
            NEW_YORK,
            "0,30 2 * * *",
            "2025-03-08T12:00-05:00",
            ["2025-03-09T07:00", "2025-03-10T06:00"],
        ),
        (
            NEW_YORK,
            "0 2,3 * * *",
            "2025-03-08T12:00-05:00",
            ["2025-03-09T07:00", "2025-03-10T06:00"],
        ),
        (
            NEW_YORK,
            "59 1,2 * * *",
            "2025-03-08T12:00-05:00",
            ["2025-03-09T06:59", "2025-03-09T07:00"],
        ),
        (NEW_YORK, "30 2 * * *", "2025-03-09T06:59:59Z", ["2025-03-09T07:00"]),
        (NEW_YORK, "30 2 * * *", "2025-03-09T07:00:00Z", ["2025-03-10T06:30"]),
        (
            NEW_YORK,
            "30 1 * * *",
            "2025-11-01T12:00-04:00",
            ["2025-11-02T05:30", "2025-11-03T06:30"],
        ),
        (NEW_YORK, "0 1 * * *", "2025-11-01T12:00-04:00", ["2025-11-02T05:00", "2025-11-03T06:00"]),
        (
            NEW_YORK,
            "*/30 1,2 * * *",
            "2025-11-02T01:20-04:00",
            ["2025-11-02T05:30", "2025-11-02T07:00"],
        ),
        # resumed during the repeated hour: its wall times already fired
        (
            NEW_YORK,
            "*/30 1,2 * * *",
            "2025-11-02T01:10-05:00",
            ["2025-11-02T07:00", "2025-11-02T07:30"],
        ),
        # London: 2025-03-30 01:00 GMT -> 02:00 BST; 2025-10-26 02:00 BST -> 01:00 GMT.
        (LONDON, "30 1 * * *", "2025-03-29T12:00Z", ["2025-03-30T01:00", "2025-03-31T00:30"]),
        (LONDON, "0 1 * * *", "2025-03-29T12:00Z", ["2025-03-30T01:00", "2025-03-31T00:00"]),
        (LONDON, "30 1 * * *", "2025-10-25T12:00Z", ["2025-10-26T00:30", "2025-10-27T01:30"]),
        # Sydney: 2025-10-05 02:00 AEST -> 03:00 AEDT; 2025-04-06 03:00 AEDT -> 02:00 AEST.
        (SYDNEY, "30 2 * * *", "2025-10-04T12:00+10:00", ["2025-10-04T16:00", "2025-10-05T15:30"]),
        (
            SYDNEY,
            "15,45 2 * * *",
            "2025-10-04T12:00+10:00",
            ["2025-10-04T16:00", "2025-10-05T15:15"],
        ),
        (SYDNEY, "30 2 * * *", "2025-04-05T12:00+11:00", ["2025-04-05T15:30", "2025-04-06T16:30"]),
        (SYDNEY, "0 2 * * *", "2025-04-05T12:00+11:00", ["2025-04-05T15:00", "2025-04-06T16:00"]),
        (SYDNEY, "0 */2 * * *", "2025-04-06T01:30+11:00", ["2025-04-05T15:00", "2025-04-05T18:00"]),
        # 6 fields, fixed hour: the whole skipped hour collapses into one fire
        (
            NEW_YORK,
            "*/20 * 2 * * *",
            "2025-03-09T01:59:50-05:00",
            ["2025-03-09T07:00", "2025-03-10T06:00"],
        ),
    ],
)
def test_dst_fixed_hours(zone: ZoneInfo, text: str, after: str, expected: list[str]) -> None:
    fires = preview(parse(text), zone, at(after), len(expected))
    assert iso(fires) == [f"{e}:00Z" for e in expected]


@pytest.mark.parametrize(
    ("zone", "day", "text", "count"),
    [
        (NEW_YORK, (2025, 3, 9), "0 * * * *", 23),
        (NEW_YORK, (2025, 11, 2), "0 * * * *", 25),
        (NEW_YORK, (2025, 6, 1), "0 * * * *", 24),
        (NEW_YORK, (2025, 3, 9), "*/15 * * * *", 92),
        (NEW_YORK, (2025, 11, 2), "*/15 * * * *", 100),
        (NEW_YORK, (2025, 3, 9), "* * * * *", 23 * 60),
        (NEW_YORK, (2025, 11, 2), "* * * * *", 25 * 60),
        (NEW_YORK, (2025, 3, 9), "0 */5 * * * *", 23 * 12),
        (NEW_YORK, (2025, 11, 2), "0 */5 * * * *", 25 * 12),
        (NEW_YORK, (2025, 11, 2), "@hourly", 25),
        (NEW_YORK, (2025, 11, 2), "0 0-23 * * *", 25),
        (LONDON, (2025, 3, 30), "0 * * * *", 23),
        (LONDON, (2025, 10, 26), "0 * * * *", 25),
        (LONDON, (2025, 10, 26), "*/15 * * * *", 100),
        (SYDNEY, (2025, 10, 5), "0 * * * *", 23),
        (SYDNEY, (2025, 4, 6), "0 * * * *", 25),
        (SYDNEY, (2025, 4, 6), "30 * * * *", 25),
        # fixed hours: the repeated 01:xx fires once, the skipped 02:xx once (at 03:00)
        (NEW_YORK, (2025, 11, 2), "0 0-5 * * *", 6),
        (NEW_YORK, (2025, 3, 9), "0 0-5 * * *", 5),
        (NEW_YORK, (2025, 3, 9), "0 0-2 * * *", 3),
    ],
)
def test_dst_fires_per_local_day(
    zone: ZoneInfo, day: tuple[int, int, int], text: str, count: int
) -> None:
    start = datetime(*day, tzinfo=zone).astimezone(UTC)
    end = (datetime(*day, tzinfo=zone) + timedelta(days=1)).astimezone(UTC)
    fires = preview(parse(text), zone, start - US, count + 2)
    assert len([f for f in fires if f < end]) == count


@pytest.mark.parametrize(
    ("zone", "text", "after", "expected"),
    [
        # 00:00 EDT, 01:00 EDT, 01:00 EST, 02:00 EST
        (NEW_YORK, "0 * * * *", "2025-11-02T04:00Z", ["04:00", "05:00", "06:00", "07:00"]),
        # 00:00 EST, 01:00 EST, 03:00 EDT (02:00 does not exist), 04:00 EDT
        (NEW_YORK, "0 * * * *", "2025-03-09T05:00Z", ["05:00", "06:00", "07:00", "08:00"]),
        (NEW_YORK, "30 * * * *", "2025-03-09T05:00Z", ["05:30", "06:30", "07:30", "08:30"]),
        (
            NEW_YORK,
            "*/30 * * * *",
            "2025-11-02T05:00Z",
            ["05:00", "05:30", "06:00", "06:30", "07:00"],
        ),
        # resumed inside the repeated hour: only real time that is still ahead
        (NEW_YORK, "*/30 * * * *", "2025-11-02T06:10Z", ["06:30", "07:00"]),
        (NEW_YORK, "*/20 * * * * *", "2025-11-02T05:59:20Z", ["05:59:20", "05:59:40", "06:00:00"]),
        (NEW_YORK, "*/20 * * * * *", "2025-03-09T06:59:20Z", ["06:59:20", "06:59:40", "07:00:00"]),
        (
            LONDON,
            "*/30 * * * *",
            "2025-10-25T23:30Z",
            ["23:30", "00:00", "00:30", "01:00", "01:30"],
        ),
        (LONDON, "0 * * * *", "2025-03-30T00:00Z", ["00:00", "01:00", "02:00"]),
        # 01:00 AEDT, 02:00 AEDT, 02:00 AEST, 03:00 AEST
        (SYDNEY, "0 * * * *", "2025-04-05T14:00Z", ["14:00", "15:00", "16:00", "17:00"]),
        # 01:00 AEST, 03:00 AEDT, 04:00 AEDT
        (SYDNEY, "0 * * * *", "2025-10-04T15:00Z", ["15:00", "16:00", "17:00"]),
    ],
)
def test_dst_every_hour_follows_real_time(
    zone: ZoneInfo, text: str, after: str, expected: list[str]
) -> None:
    fires = preview(parse(text), zone, at(after) - US, len(expected))
    assert [
        f.strftime("%H:%M:%S")[: len(e)] for f, e in zip(fires, expected, strict=True)
    ] == expected


@pytest.mark.parametrize(
    ("zone", "after"),
    [
        (NEW_YORK, "2025-03-09T06:00Z"),
        (NEW_YORK, "2025-11-02T05:00Z"),
        (LONDON, "2025-03-30T00:30Z"),
        (LONDON, "2025-10-26T00:30Z"),
        (SYDNEY, "2025-10-04T15:30Z"),
        (SYDNEY, "2025-04-05T15:30Z"),
    ],
)
def test_dst_six_field_every_hour_is_uniform_in_real_time(zone: ZoneInfo, after: str) -> None:
    fires = preview(parse("*/5 * * * * *"), zone, at(after), 2 * 3600 // 5)
    assert {b - a for a, b in itertools.pairwise(fires)} == {timedelta(seconds=5)}


@pytest.mark.parametrize(
    ("zone", "text", "after", "expected"),
    [
        (NEW_YORK, "@every 1h", "2025-11-02T04:30Z", ["11-02T05:30", "11-02T06:30", "11-02T07:30"]),
        (NEW_YORK, "@every 1h", "2025-03-09T05:30Z", ["03-09T06:30", "03-09T07:30", "03-09T08:30"]),
        # 12:00 EST, then 13:00 EDT: a day of elapsed time, not of wall clock
        (NEW_YORK, "@every 1d", "2025-03-08T17:00Z", ["03-09T17:00", "03-10T17:00"]),
        (LONDON, "@every 30m", "2025-10-26T00:45Z", ["10-26T01:15", "10-26T01:45"]),
        (SYDNEY, "@every 1d", "2025-04-05T01:00Z", ["04-06T01:00", "04-07T01:00"]),
    ],
)
def test_dst_every_is_elapsed_time(
    zone: ZoneInfo, text: str, after: str, expected: list[str]
) -> None:
    fires = preview(parse(text), zone, at(after), len(expected))
    assert iso(fires) == [f"2025-{e}:00Z" for e in expected]


# --- min interval ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "minimum", "message"),
    [
        ("@every 30s", 60, "can fire 30 seconds apart, more often than the minimum interval of 60"),
        ("@every 1m", 60, None),
        ("* * * * *", 120, "60 seconds apart"),
        ("* * * * *", 60, None),
        ("*/5 * * * * *", 10, "5 seconds apart"),
        ("0 * * * *", 3600, None),
        ("0 9,17 * * *", 8 * 3600, None),
        ("0 9,10 * * *", 8 * 3600, "3600 seconds apart"),
        ("0,1 0 29 2 *", 120, "60 seconds apart"),
        ("@yearly", 86400, None),
        ("@at 2025-01-01T00:00:00Z", 1e9, None),
        ("@every 1s", 0.5, None),
        ("@every 1s", 1.5, "1 second apart, more often than the minimum interval of 1.5 s"),
    ],
)
def test_check_min_interval(text: str, minimum: float, message: str | None) -> None:
    if message is None:
        check_min_interval(parse(text), NEW_YORK, minimum)
    else:
        with pytest.raises(ScheduleError) as caught:
            check_min_interval(parse(text), NEW_YORK, minimum)
        assert message in str(caught.value)


# --- due ticks -----------------------------------------------------------------------

LAST_THREE = ["10:08", "10:09", "10:10"]


@pytest.mark.parametrize(
    ("text", "next_run_at", "now", "policy", "grace", "limit", "ticks", "next_run", "missed"),
    [
        # on time
        ("*/5 * * * *", "10:00", "10:00:02", "run_once", 60, 100, ["10:00"], "10:05", 0),
        ("*/5 * * * *", "10:00", "10:05:30", "skip", 600, 100, ["10:00", "10:05"], "10:10", 0),
        # 10:00 .. 10:25 missed (before 10:29:10), 10:30 on time
        ("*/5 * * * *", "10:00", "10:30:10", "run_all", 60, 100,
         ["10:00", "10:05", "10:10", "10:15", "10:20", "10:25", "10:30"], "10:35", 0),
        ("*/5 * * * *", "10:00", "10:30:10", "run_once", 60, 100, ["10:25", "10:30"], "10:35", 5),
        ("*/5 * * * *", "10:00", "10:30:10", "skip", 60, 100, ["10:30"], "10:35", 6),
        # everything missed
        ("*/5 * * * *", "10:00", "10:07", "run_once", 60, 100, ["10:05"], "10:10", 1),
        ("*/5 * * * *", "10:00", "10:07", "skip", 60, 100, [], "10:10", 2),
        ("*/5 * * * *", "10:00", "10:07", "run_all", 60, 100, ["10:00", "10:05"], "10:10", 0),
        # the cap keeps the latest ticks
        ("* * * * *", "10:00", "12:00", "run_all", 0, 100, None, "12:01", 21),
        ("* * * * *", "10:00", "10:10:30", "run_all", 0, 3, LAST_THREE, "10:11", 8),
        ("* * * * *", "10:00", "10:10:30", "run_once", 600, 3, LAST_THREE, "10:11", 8),
        ("* * * * *", "10:00", "10:10:30", "run_once", 120, 3, LAST_THREE, "10:11", 8),
        ("* * * * *", "10:00", "10:10:30", "run_all", 120, 5,
         ["10:06", "10:07", "10:08", "10:09", "10:10"], "10:11", 6),
        # @at completes
        ("@at 2025-01-01T10:00:00Z", "10:00", "10:00:30", "skip", 60, 100, ["10:00"], None, 0),
        ("@at 2025-01-01T10:00:00Z", "10:00", "11:00", "run_once", 60, 100, ["10:00"], None, 0),
        ("@at 2025-01-01T10:00:00Z", "10:00", "11:00", "run_all", 60, 100, ["10:00"], None, 0),
        ("@at 2025-01-01T10:00:00Z", "10:00", "11:00", "skip", 60, 100, [], None, 1),
        # @every stays on the grid anchored at next_run_at (not now + every)
        ("@every 7m", "10:00", "10:30", "run_once", 0, 100, ["10:28"], "10:35", 4),
        ("@every 7m", "10:00", "10:30", "run_all", 600, 100,
         ["10:00", "10:07", "10:14", "10:21", "10:28"], "10:35", 0),
        ("@every 7m", "10:00", "10:30", "skip", 600, 100, ["10:21", "10:28"], "10:35", 3),
        ("@every 7m", "10:00", "10:30", "run_once", 600, 1, ["10:28"], "10:35", 4),
        ("@every 7m", "10:00", "10:00", "skip", 0, 100, ["10:00"], "10:07", 0),
        # nothing due yet
        ("@every 7m", "10:00", "09:59", "run_all", 0, 100, [], "10:00", 0),
    ],
)  # fmt: skip
def test_due_ticks_table(
    text: str,
    next_run_at: str,
    now: str,
    policy: MisfirePolicy,
    grace: float,
    limit: int,
    ticks: list[str] | None,
    next_run: str | None,
    missed: int,
) -> None:
    def clock(hhmm: str) -> datetime:
        return at(f"2025-01-01T{hhmm}{':00' if hhmm.count(':') == 1 else ''}Z")

    result = due_ticks(parse(text), NEW_YORK, clock(next_run_at), clock(now), policy, grace, limit)
    expected_ticks = (
        ticks
        if ticks is not None
        else [(clock("10:21") + timedelta(minutes=i)).strftime("%H:%M") for i in range(100)]
    )
    assert result == DueTicks(
        [clock(t) for t in expected_ticks], None if next_run is None else clock(next_run), missed
    )


def test_due_ticks_across_fall_back_runs_both_repeated_hours() -> None:
    result = due_ticks(
        parse("0 * * * *"), NEW_YORK, at("2025-11-02T05:00Z"), at("2025-11-02T07:00Z"), "run_all", 0
    )
    assert iso(result.ticks) == [
        "2025-11-02T05:00:00Z",
        "2025-11-02T06:00:00Z",
        "2025-11-02T07:00:00Z",
    ]
    assert result.next_run_at == at("2025-11-02T08:00Z")


@pytest.mark.parametrize("text", ["* * * * * *", "@every 1s"])
@pytest.mark.parametrize(
    ("policy", "count", "missed"),
    [("run_all", 100, 86_301), ("run_once", 12, 86_389), ("skip", 11, 86_390)],
)
def test_due_ticks_one_second_job_after_a_day_down(
    text: str, policy: MisfirePolicy, count: int, missed: int
) -> None:
    first = at("2025-11-01T12:00:00Z")
    now = first + timedelta(days=1)
    started = time.perf_counter()
    result = due_ticks(parse(text), NEW_YORK, first, now, policy, grace_s=10)
    assert time.perf_counter() - started < 1
    assert result.ticks == [now - timedelta(seconds=count - 1 - i) for i in range(count)]
    assert result.next_run_at == now + timedelta(seconds=1)
    assert result.missed == missed


def test_due_ticks_after_months_down_finds_the_last_burst() -> None:
    # every minute of January (New York), down from January 1st to December 1st
    first, now = at("2025-01-01T05:00Z"), at("2025-12-01T00:00Z")
    started = time.perf_counter()
    result = due_ticks(parse("* * * 1 *"), NEW_YORK, first, now, "run_all", grace_s=60)
    assert time.perf_counter() - started < 1
    last_of_january = at("2025-02-01T04:59Z")
    assert result.ticks == [last_of_january - timedelta(minutes=99 - i) for i in range(100)]
    assert result.next_run_at == at("2026-01-01T05:00Z")
    assert abs(result.missed - (31 * 24 * 60 - 100)) <= 31 * 24 * 60 // 20


def test_due_ticks_rejects_bad_arguments() -> None:
    schedule, now = parse("* * * * *"), at("2025-01-01T10:00Z")
    with pytest.raises(ValueError, match="limit"):
        due_ticks(schedule, NEW_YORK, now, now, "run_all", 0, limit=0)
    with pytest.raises(ValueError, match="grace_s"):
        due_ticks(schedule, NEW_YORK, now, now, "run_all", -1)
    with pytest.raises(ValueError, match="timezone-aware"):
        due_ticks(schedule, NEW_YORK, datetime(2025, 1, 1), now, "run_all", 0)


# --- properties ------------------------------------------------------------------------

ZONES = sorted(available_timezones())


def _range(low: int, high: int) -> st.SearchStrategy[str]:
    return st.tuples(st.integers(low, high - 1), st.integers(1, high - low)).map(
        lambda p: f"{p[0]}-{min(high, p[0] + p[1])}"
    )


def _field(low: int, high: int, hot: tuple[int, ...] = ()) -> st.SearchStrategy[str]:
    single = st.one_of(st.integers(low, high), st.sampled_from(hot or (low,))).map(str)
    return st.one_of(
        st.just("*"),
        st.integers(1, max(1, (high - low) // 2)).map(lambda n: f"*/{n}"),
        single,
        _range(low, high),
        st.tuples(_range(low, high), st.integers(1, 5)).map(lambda p: f"{p[0]}/{p[1]}"),
        st.lists(single, min_size=2, max_size=4, unique=True).map(",".join),
    )


# The hours DST transitions happen around, so the interesting cases come up often.
HOURS = (0, 1, 2, 3, 4)
CRONS = st.tuples(
    _field(0, 59, (0, 30, 59)),
    st.one_of(st.just("*"), _field(0, 23, HOURS)),
    st.one_of(st.just("*"), st.just("*"), _field(1, 31)),
    st.one_of(st.just("*"), st.just("*"), _field(1, 12)),
    st.one_of(st.just("*"), _field(0, 6)),
).map(" ".join)


def _parse_or_reject(expr: str) -> Schedule:
    """Parse a generated cron; generated day/month combinations may never match (e.g. 31 April)."""
    try:
        return parse(expr)
    except ScheduleError as exc:
        message = str(exc)
    assert "never matches" in message
    assume(False)
    raise AssertionError(message)


@functools.cache
def _transitions(zone: str, year: int) -> tuple[datetime, ...]:
    """The instants in `year` at which `zone` changes its UTC offset."""
    tz = ZoneInfo(zone)
    found = []
    probe = datetime(year, 1, 1, tzinfo=UTC)
    while probe.year == year:
        step = probe + timedelta(days=1)
        if probe.astimezone(tz).utcoffset() != step.astimezone(tz).utcoffset():
            low, high = probe, step
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                if middle.astimezone(tz).utcoffset() == low.astimezone(tz).utcoffset():
                    low = middle
                else:
                    high = middle
            found.append(high.replace(microsecond=0))
        probe = step
    return tuple(found)


@st.composite
def starts(draw: st.DrawFn) -> tuple[ZoneInfo, datetime]:
    """A zone and an instant, usually a few hours before or after one of its transitions."""
    zone = draw(st.sampled_from(ZONES))
    year = draw(st.integers(2000, 2037))
    transitions = _transitions(zone, year)
    near_transition = draw(st.booleans())
    if transitions and near_transition:
        base = draw(st.sampled_from(transitions))
        start = base + timedelta(seconds=draw(st.integers(-5 * 3600, 2 * 3600)))
    else:
        start = datetime(year, 1, 1, tzinfo=UTC) + timedelta(
            seconds=draw(st.integers(0, 364 * 86400))
        )
    return ZoneInfo(zone), start + timedelta(microseconds=draw(st.sampled_from([0, 1, 999_999])))


class Oracle:
    """Which instants should fire, decided instant by instant from the rules."""

    def __init__(self, expr: str) -> None:
        fields, _ = croniter.expand(expr)
        self.minutes, self.hours, self.days, self.months, self.weekdays = (
            None if f == ["*"] else set(f) for f in fields
        )

    def matches(self, wall: datetime) -> bool:
        if self.minutes is not None and wall.minute not in self.minutes:
            return False
        if self.hours is not None and wall.hour not in self.hours:
            return False
        if self.months is not None and wall.month not in self.months:
            return False
        day_ok = self.days is None or wall.day in self.days
        weekday_ok = self.weekdays is None or wall.isoweekday() % 7 in self.weekdays
        if self.days is not None and self.weekdays is not None:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def fires(self, tz: ZoneInfo, instant: datetime) -> bool:
        """Whether the whole-minute `instant` is a fire time."""
        local = instant.astimezone(tz)
        every_hour = self.hours is None
        if self.matches(local.replace(tzinfo=None)) and (every_hour or local.fold == 0):
            return True
        before = (instant - timedelta(minutes=1)).astimezone(tz).utcoffset()
        after = local.utcoffset()
        assert before is not None
        assert after is not None
        if every_hour or after <= before:
            return False
        skipped = (instant + before).replace(tzinfo=None)
        return any(
            self.matches(skipped + timedelta(minutes=m))
            for m in range((after - before) // timedelta(minutes=1))
        )


@given(CRONS, starts())
@PROPERTY
def test_no_valid_instant_is_skipped(expr: str, start: tuple[ZoneInfo, datetime]) -> None:
    tz, after = start
    schedule = _parse_or_reject(expr)
    end = after + timedelta(hours=6)
    oracle = Oracle(expr)
    first_minute = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    expected = [
        instant
        for instant in (first_minute + timedelta(minutes=m) for m in range(6 * 60))
        if instant <= end and oracle.fires(tz, instant)
    ]
    actual = []
    fire = next_fire(schedule, tz, after)
    while fire is not None and fire <= end:
        actual.append(fire)
        fire = next_fire(schedule, tz, fire)
    assert iso(actual) == iso(expected)


@given(
    st.one_of(
        CRONS,
        st.tuples(_field(0, 59, (0, 30)), CRONS).map(" ".join),
        st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly", "@yearly"]),
    ),
    starts(),
)
@PROPERTY
def test_fire_times_increase_and_match_the_wall_clock(
    expr: str, start: tuple[ZoneInfo, datetime]
) -> None:
    tz, after = start
    schedule = _parse_or_reject(expr)
    assert schedule.cron is not None
    matches = Oracle(" ".join(schedule.cron.split()[-5:])).fires
    fires = preview(schedule, tz, after, 20)
    assert len(fires) == 20
    assert after < fires[0]
    assert all(a < b for a, b in itertools.pairwise(fires))
    for fire in fires:
        # the seconds field (if any) is checked by matching the 5-field rest at the minute
        assert matches(tz, fire.replace(second=0))
        if not schedule.has_seconds:
            assert fire.second == 0


@given(st.sampled_from(["@every 1s", "@every 45m", "@every 1d", "@every 1h30m"]), starts())
@PROPERTY
def test_every_is_elapsed_time(text: str, start: tuple[ZoneInfo, datetime]) -> None:
    tz, after = start
    schedule = parse(text)
    assert schedule.every is not None
    assert next_fire(schedule, tz, after) == after + schedule.every


def _reference_due(
    fires: list[datetime], now: datetime, cutoff: datetime, policy: MisfirePolicy, limit: int
) -> tuple[list[datetime], int]:
    due = [t for t in fires if t <= now]
    missed = [t for t in due if t < cutoff]
    on_time = [t for t in due if t >= cutoff]
    chosen = {"run_all": missed, "run_once": missed[-1:], "skip": []}[policy] + on_time
    return chosen[-limit:], len(due) - len(chosen[-limit:])


@given(
    st.sampled_from(["* * * * * *", "*/7 * * * * *", "*/3 * * * *", "0 */2 * * *", "@every 13s"]),
    starts(),
    st.integers(0, 2000),
    st.integers(0, 1500),
    st.sampled_from(["run_all", "run_once", "skip"]),
    st.integers(1, 150),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_due_ticks_matches_enumeration(
    text: str,
    start: tuple[ZoneInfo, datetime],
    steps: int,
    grace: int,
    policy: MisfirePolicy,
    limit: int,
) -> None:
    tz, after = start
    schedule = parse(text)
    first = next_fire(schedule, tz, after)
    assert first is not None
    resolution = 1 if schedule.has_seconds or schedule.kind == "every" else 60
    now = first + timedelta(seconds=steps * resolution, microseconds=500)
    fires = [first]
    while fires[-1] <= now:
        fires += preview(schedule, tz, fires[-1], 200)
    ticks, skipped = _reference_due(fires, now, now - timedelta(seconds=grace), policy, limit)
    result = due_ticks(schedule, tz, first, now, policy, grace, limit)
    assert result.ticks == ticks
    assert result.next_run_at == next(t for t in fires if t > now)
    # an estimate past a few hundred cron ticks, exact below
    assert abs(result.missed - skipped) <= skipped // 20


# --- rare schedules and the end of the calendar -------------------------------------------

RARE_CRONS = [
    "0 0 29 2 *",
    "30 2 29 2 *",
    "0 * 29 2 *",
    "0 0 29 2 1#5",
    "30 2 L 2 *",
    "0 2 31 * *",
    "0 2 * 3 0#5",
    "30 1 1 1 *",
    "59 23 31 12 *",
]


@given(st.sampled_from(RARE_CRONS), starts())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_leaping_over_years_finds_what_probing_finds(
    text: str, start: tuple[ZoneInfo, datetime]
) -> None:
    tz, after = start
    schedule = parse(text)
    leaping = preview(schedule, tz, after, 2)
    with mock.patch.object(fires, "_LEAP", timedelta.max):  # probe every stretch
        probing = preview(schedule, tz, after, 2)
    assert iso(leaping) == iso(probing)


def test_preview_looks_a_hundred_years_ahead_at_most() -> None:
    started = time.perf_counter()
    after = at("2025-01-01T00:00:00Z")
    rare = preview(parse("0 0 29 2 1#5"), UTC_ZONE, after, 100)
    assert [fire.year for fire in rare] == [2044, 2072, 2112]
    leap_days = preview(parse("0 0 29 2 *"), UTC_ZONE, after, 100)
    assert len(leap_days) == 24 and leap_days[-1] - after <= PREVIEW_HORIZON
    assert len(preview(parse("@every 366d"), UTC_ZONE, after, 200)) == 99
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(
    "text", ["0 0 29 2 *", "0 0 29 2 1#5", "* * * * * *", "@hourly", "@every 1s", "@every 366d"]
)
@pytest.mark.parametrize(
    "after", ["9999-12-31T23:59:59Z", "9999-12-25T00:00:00Z", "9990-01-01T00:00:00Z"]
)
def test_fire_times_end_with_the_calendar(text: str, after: str) -> None:
    fires = preview(parse(text), NEW_YORK, at(after), 100)
    assert fires == sorted(set(fires)) and all(fire > at(after) for fire in fires)
    if after.startswith("9999-12-31"):
        assert fires == []
