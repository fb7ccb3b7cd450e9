"""Schedules in plain English: a table of shapes and fallbacks, and properties that
hold the words to the fire times croniter computes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta

import pytest
from croniter import croniter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scheduler_svc.console.describe import describe
from scheduler_svc.schedule import ScheduleError, parse

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NY = "America/New_York"


@pytest.mark.parametrize(
    ("schedule", "zone", "words"),
    [
        # times of day, every day
        ("30 9 * * *", "UTC", "every day at 09:30 (UTC)"),
        ("0 9,17 * * *", "UTC", "every day at 09:00 and 17:00 (UTC)"),
        ("0,30 9 * * *", "UTC", "every day at 09:00 and 09:30 (UTC)"),
        ("0 8,12,18 * * *", NY, "every day at 08:00, 12:00 and 18:00 (America/New_York)"),
        ("0 7,8,12,18 * * *", "UTC", "every day at 07:00, 08:00, 12:00 and 18:00 (UTC)"),
        ("0 0 9 * * *", "UTC", "every day at 09:00 (UTC)"),
        ("@daily", "Europe/London", "every day at 00:00 (Europe/London)"),
        ("@midnight", "UTC", "every day at 00:00 (UTC)"),
        # weekdays
        ("30 9 * * 1-5", NY, "every weekday at 09:30 (America/New_York)"),
        ("30 9 * * MON-FRI", NY, "every weekday at 09:30 (America/New_York)"),
        ("0 9 * * 1", "UTC", "every Monday at 09:00 (UTC)"),
        ("0 9 * * 1,3,5", "UTC", "every Monday, Wednesday and Friday at 09:00 (UTC)"),
        ("0 10 * * 6,0", "UTC", "every Saturday and Sunday at 10:00 (UTC)"),
        ("0 10 * * 7", "UTC", "every Sunday at 10:00 (UTC)"),
        ("0 9 * * 1-3", "UTC", "every Monday, Tuesday and Wednesday at 09:00 (UTC)"),
        ("@weekly", "UTC", "every Sunday at 00:00 (UTC)"),
        ("0 9 * 12 mon-fri", "UTC", "every weekday at 09:00 in December (UTC)"),
        ("0 9 * * 0-6", "UTC", "every day at 09:00 (UTC)"),
        # days of the month, months
        ("0 0 1 * *", "UTC", "at 00:00 on day 1 of every month (UTC)"),
        ("@monthly", "UTC", "at 00:00 on day 1 of every month (UTC)"),
        ("@yearly", "UTC", "at 00:00 on day 1 of January (UTC)"),
        ("@annually", "UTC", "at 00:00 on day 1 of January (UTC)"),
        ("0 9 1,15 jan,jul *", "UTC", "at 09:00 on days 1 and 15 of January and July (UTC)"),
        ("0 9 1-7 * *", "UTC", "at 09:00 on days 1 to 7 of every month (UTC)"),
        ("0 9 31 1 *", "UTC", "at 09:00 on day 31 of January (UTC)"),
        ("0 9 * 3 *", "UTC", "every day at 09:00 in March (UTC)"),
        ("0 9 1-31 * *", "UTC", "every day at 09:00 (UTC)"),
        # periods
        ("* * * * *", "UTC", "every minute (UTC)"),
        ("*/5 * * * *", "UTC", "every 5 minutes (UTC)"),
        ("0,15,30,45 * * * *", "UTC", "every 15 minutes (UTC)"),
        ("0 * * * *", "UTC", "every hour at minute 0 (UTC)"),
        ("@hourly", "UTC", "every hour at minute 0 (UTC)"),
        ("15 * * * *", "UTC", "every hour at minute 15 (UTC)"),
        ("0,20,45 * * * *", "UTC", "every hour at minutes 0, 20 and 45 (UTC)"),
        ("5/15 * * * *", "UTC", "every 15 minutes from 00:05 to 23:50 (UTC)"),
        ("0 9-17 * * 1-5", NY, "every hour from 09:00 to 17:00 on weekdays (America/New_York)"),
        ("*/15 9-17 * * *", "UTC", "every 15 minutes from 09:00 to 17:45 (UTC)"),
        ("* 9 * * *", "UTC", "every minute from 09:00 to 09:59 (UTC)"),
        ("0 */2 * * *", "UTC", "every 2 hours from 00:00 to 22:00 (UTC)"),
        ("30 1-23/2 * * *", "UTC", "every 2 hours from 01:30 to 23:30 (UTC)"),
        ("*/10 * * * 6", "UTC", "every 10 minutes on Saturdays (UTC)"),
        ("*/10 * 1 * *", "UTC", "every 10 minutes on day 1 of every month (UTC)"),
        ("*/10 * * 2 *", "UTC", "every 10 minutes in February (UTC)"),
        ("* * * * * *", "UTC", "every second (UTC)"),
        ("*/30 * * * * *", "UTC", "every 30 seconds (UTC)"),
        # @every and @at carry no zone: elapsed time, and an instant
        ("@every 90s", "UTC", "every 1 minute 30 seconds"),
        ("@every 5m", NY, "every 5 minutes"),
        ("@every 1h", "UTC", "every hour"),
        ("@every 1h30m", "UTC", "every 1 hour 30 minutes"),
        ("@every 2d", "UTC", "every 2 days"),
        ("@every 3600s", "UTC", "every hour"),
        ("@at 2027-01-01T00:00:00Z", NY, "once, at 2027-01-01 00:00:00 UTC"),
        ("@at 2027-01-01T01:00:00+01:00", "UTC", "once, at 2027-01-01 00:00:00 UTC"),
        ("@at 2027-01-01T00:00:00.25Z", "UTC", "once, at 2027-01-01 00:00:00.250000 UTC"),
        # fallbacks: the expression itself
        ("0 9 1 * 1", "UTC", "cron 0 9 1 * 1 (UTC)"),  # cron ORs the day fields
        ("0 9 1-15 * 1-5", "UTC", "cron 0 9 1-15 * 1-5 (UTC)"),
        ("0 9 1-31 * 1", "UTC", "cron 0 9 1-31 * 1 (UTC)"),  # ORed with every day
        ("0 9 L * *", "UTC", "cron 0 9 L * * (UTC)"),
        ("0 9 1W * *", "UTC", "cron 0 9 1W * * (UTC)"),
        ("0 9 * * 5#2", "UTC", "cron 0 9 * * 5#2 (UTC)"),
        ("*/7 * * * *", "UTC", "cron */7 * * * * (UTC)"),  # 56 to 0 is not 7 minutes
        ("0-30/10 * * * *", "UTC", "every hour at minutes 0, 10, 20 and 30 (UTC)"),
        ("0-50/5 * * * *", "UTC", "cron 0-50/5 * * * * (UTC)"),
        ("*/15 */2 * * *", "UTC", "cron */15 */2 * * * (UTC)"),
        ("30 0 9 * * *", "UTC", "cron 30 0 9 * * * (UTC)"),
        ("*/45 * * * * *", "UTC", "cron */45 * * * * * (UTC)"),
        ("0 9 30 * *", "UTC", "cron 0 9 30 * * (UTC)"),  # no day 30 in February
        ("0 9 29 2 *", "UTC", "cron 0 9 29 2 * (UTC)"),
        ("0 9 */2 * *", "UTC", "cron 0 9 */2 * * (UTC)"),
        ("0 0,3,7,8,12,18,22 * * *", "UTC", "cron 0 0,3,7,8,12,18,22 * * * (UTC)"),
        # malformed: the text unchanged
        ("bogus", "UTC", "bogus"),
        ("61 * * * *", "UTC", "61 * * * *"),
        ("", "UTC", ""),
        ("@every", "UTC", "@every"),
        ("@at tomorrow", "UTC", "@at tomorrow"),
        ("H 9 * * *", "UTC", "H 9 * * *"),
    ],
)
def test_describe(schedule: str, zone: str, words: str) -> None:
    assert describe(schedule, zone) == words


# --- properties -----------------------------------------------------------------------


@given(st.text(max_size=40), st.text(max_size=20))
@PROPERTY
def test_describe_never_raises(schedule: str, zone: str) -> None:
    assert isinstance(describe(schedule, zone), str)


@given(st.integers(min_value=1, max_value=366 * 86400))
@PROPERTY
def test_every_words_add_up_to_the_duration(seconds: int) -> None:
    words = describe(f"@every {seconds}s", "UTC")
    sizes = {"day": 86400, "hour": 3600, "minute": 60, "second": 1}
    bare = re.fullmatch(r"every (day|hour|minute|second)", words)
    if bare:
        assert sizes[bare[1]] == seconds
        return
    parts = re.findall(r"(\d+) (day|hour|minute|second)s?", words.removeprefix("every "))
    assert sum(int(n) * sizes[unit] for n, unit in parts) == seconds


_MONTH_NAMES = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_DAY_NAMES = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_LIST = r"([\w:]+(?:, [\w:]+)*(?: and [\w:]+)?)"


def _items(text: str) -> list[str]:
    return re.split(r", | and ", text)


def _minute(clock: str) -> int:
    hour, minute = clock.split(":")
    return int(hour) * 60 + int(minute)


def _times(words: str) -> set[int]:
    """Minutes of the day a time phrase claims."""
    if words == "every minute":
        return set(range(1440))
    if m := re.fullmatch(r"every (\d+) minutes", words):
        return {t for t in range(1440) if t % 60 % int(m[1]) == 0}
    if m := re.fullmatch(r"every hour at minutes? " + _LIST, words):
        return {h * 60 + int(x) for h in range(24) for x in _items(m[1])}
    if m := re.fullmatch(r"every (\d+ )?(minute|hour)s? from (\S+) to (\S+)", words):
        step = int(m[1] or 1) * (60 if m[2] == "hour" else 1)
        first, last = _minute(m[3]), _minute(m[4])
        assert (last - first) % step == 0, words
        return set(range(first, last + 1, step))
    if m := re.fullmatch(r"(?:every day )?at " + _LIST, words):
        return {_minute(x) for x in _items(m[1])}
    raise AssertionError(f"unread time phrase {words!r}")


def _claims(words: str) -> tuple[set[int], Callable[[date], bool]]:
    """The minutes of the day and the days the words claim fires on."""
    months = set(range(1, 13))
    if m := re.fullmatch(r"(.*) in " + _LIST, words):
        words, months = m[1], {_MONTH_NAMES.index(x) + 1 for x in _items(m[2])}
    weekdays, days = set(range(7)), set(range(1, 32))
    if m := re.fullmatch(r"(.*) on days? (\d+) to (\d+) of (.*)", words):
        words, days = m[1], set(range(int(m[2]), int(m[3]) + 1))
        if m[4] != "every month":
            months = {_MONTH_NAMES.index(x) + 1 for x in _items(m[4])}
    elif m := re.fullmatch(r"(.*) on days? " + _LIST + " of (.*)", words):
        words, days = m[1], {int(x) for x in _items(m[2])}
        if m[3] != "every month":
            months = {_MONTH_NAMES.index(x) + 1 for x in _items(m[3])}
    elif m := re.fullmatch(r"(.*) on weekdays", words):
        words, weekdays = m[1], {0, 1, 2, 3, 4}
    elif m := re.fullmatch(r"(.*) on " + _LIST, words):
        words, weekdays = m[1], {_DAY_NAMES.index(x.removesuffix("s")) for x in _items(m[2])}
    elif m := re.fullmatch(r"every weekday (at .*)", words):
        words, weekdays = m[1], {0, 1, 2, 3, 4}
    elif (m := re.fullmatch(r"every ([A-Z][\w, ]+) (at .*)", words)) and m[1] != "day":
        words, weekdays = m[2], {_DAY_NAMES.index(x) for x in _items(m[1])}

    def on(day: date) -> bool:
        return day.month in months and day.day in days and day.weekday() in weekdays

    return _times(words), on


def _field(values: st.SearchStrategy[int], low: int, high: int) -> st.SearchStrategy[str]:
    pair = st.tuples(values, values)
    return st.one_of(
        st.just("*"),
        values.map(str),
        st.integers(1, high - low + 1).map(lambda s: f"*/{s}"),
        pair.filter(lambda p: p[0] != p[1]).map(lambda p: f"{min(p)}-{max(p)}"),
        st.lists(values, min_size=2, max_size=5, unique=True).map(lambda v: ",".join(map(str, v))),
        st.tuples(values, values, st.integers(1, 12))
        .filter(lambda t: t[0] != t[1])
        .map(lambda t: f"{min(t[:2])}-{max(t[:2])}/{t[2]}"),
    )


_WEEKDAY_FIELD = st.one_of(st.just("1-5"), st.just("mon-fri"), _field(st.integers(0, 6), 0, 6))
# At most one day field restricted: with both, cron ORs them and the words fall back.
_DAYS = st.one_of(
    st.just("* *"),
    _field(st.integers(1, 31), 1, 31).map(lambda f: f + " *"),
    _WEEKDAY_FIELD.map(lambda f: "* " + f),
)
CRON = st.builds(
    lambda minute, hour, month, days: (
        f"{minute} {hour} {days.split()[0]} {month} {days.split()[1]}"
    ),
    st.one_of(
        st.sampled_from(["0", "30", "*/5", "*/15", "0,30"]), _field(st.integers(0, 59), 0, 59)
    ),
    st.one_of(st.sampled_from(["9", "*", "9-17", "*/2"]), _field(st.integers(0, 23), 0, 23)),
    st.one_of(st.just("*"), _field(st.integers(1, 12), 1, 12)),
    _DAYS,
)


def _first_fire_on_or_after(expr: str, day: date) -> datetime:
    start = datetime.combine(day, datetime.min.time()) - timedelta(minutes=1)
    fire: datetime = croniter(expr, start, ret_type=datetime).get_next(datetime)
    return fire


@given(CRON, st.dates(date(2024, 1, 1), date(2030, 12, 31)))
@PROPERTY
def test_words_name_the_days_and_times_croniter_fires_on(expr: str, start: date) -> None:
    try:
        parse(expr)
    except ScheduleError:
        assume(False)
    words = describe(expr, "UTC")
    assume(not words.startswith("cron "))
    times, on = _claims(words.removesuffix(" (UTC)"))
    day = start
    for index in range(4):
        fire = _first_fire_on_or_after(expr, day)
        claimed = day
        while not on(claimed):
            claimed += timedelta(days=1)
            assert claimed <= fire.date(), (words, day)
        assert fire.date() == claimed, (words, fire)
        if index == 0:  # every minute croniter fires on that day, against the claim
            fired: set[int] = set()
            it = croniter(expr, fire - timedelta(minutes=1), ret_type=datetime)
            while (at := it.get_next(datetime)).date() == fire.date():
                fired.add(at.hour * 60 + at.minute)
            assert fired == times, words
        day = claimed + timedelta(days=1)
