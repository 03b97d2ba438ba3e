"""hours.py: parsing BUSINESS_HOURS / TIMEZONE / HOLIDAYS (and every error message kind), is_open / next_open /
closed_period on weekdays, weekends, holidays, around midnight, across DST changes and in the DST-free
America/Sao_Paulo, and describe_when in pt-BR. Fixed moments only: 2026-12-04 is a Friday.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from hours import (
    WEEKDAYS,
    BusinessHours,
    describe_when,
    parse_holidays,
    parse_timezone,
    parse_weekly_windows,
)

SP = ZoneInfo("America/Sao_Paulo")
NY = ZoneInfo("America/New_York")
LISBON = ZoneInfo("Europe/Lisbon")
UTC = ZoneInfo("UTC")

EXAMPLE = "mon-fri 08:00-12:00,13:00-18:00; sat 08:00-12:00"
WEEKDAY = ((480, 720), (780, 1080))  # 08:00-12:00, 13:00-18:00
SATURDAY = ((480, 720),)
STORE = BusinessHours.parse(EXAMPLE)  # São Paulo, no holidays

TIME_HINT = "(HH:MM, 00:00-23:59, or 24:00 as an end)"
EXAMPLE_HINT = "(write e.g. 'mon-fri 08:00-12:00,13:00-18:00; sat 08:00-12:00')"


def at(*args: int, tz: ZoneInfo = SP) -> float:
    """Unix seconds of a local wall-clock moment: at(2026, 12, 4, 18, 30)."""
    return datetime(*args, tzinfo=tz).timestamp()


def local(*args: int, tz: ZoneInfo = SP) -> datetime:
    return datetime(*args, tzinfo=tz)


# ----- parse_weekly_windows ---------------------------------------------------------------------------------


def test_weekdays_are_monday_first() -> None:
    assert WEEKDAYS == ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def test_example_spec() -> None:
    assert parse_weekly_windows(EXAMPLE) == (WEEKDAY, WEEKDAY, WEEKDAY, WEEKDAY, WEEKDAY, SATURDAY, ())


@pytest.mark.parametrize("spec", ["", "   ", "\n\t"])
def test_blank_spec_is_seven_empty_days(spec: str) -> None:
    assert parse_weekly_windows(spec) == ((), (), (), (), (), (), ())


@pytest.mark.parametrize(
    "spec",
    [
        "mon-fri  08:00-12:00 , 13:00-18:00 ;sat 08:00-12:00",
        "  mon - fri 08:00 - 12:00,13:00 -18:00 ;  sat\t08:00-12:00  ",
        "MON-Fri 08:00-12:00,13:00-18:00; SAT 08:00-12:00",
        "mon,tue,wed,thu,fri 08:00-12:00,13:00-18:00; sat 08:00-12:00",
        "mon,tue-thu,fri 08:00-12:00,13:00-18:00; sat 8:00-12:00",
        "sat 08:00-12:00; mon-fri 13:00-18:00,08:00-12:00",
    ],
)
def test_spellings_of_the_example(spec: str) -> None:
    assert parse_weekly_windows(spec) == parse_weekly_windows(EXAMPLE)


def test_single_day() -> None:
    assert parse_weekly_windows("wed 09:00-10:30") == ((), (), ((540, 630),), (), (), (), ())


def test_comma_list_of_days() -> None:
    assert parse_weekly_windows("sat,sun 10:00-14:00") == ((), (), (), (), (), ((600, 840),), ((600, 840),))


@pytest.mark.parametrize(
    ("days", "open_days"),
    [
        ("sat-sun", {"sat", "sun"}),
        ("fri-mon", {"fri", "sat", "sun", "mon"}),
        ("sun-mon", {"sun", "mon"}),
        ("thu-tue", {"thu", "fri", "sat", "sun", "mon", "tue"}),
        ("mon-sun", set(WEEKDAYS)),
        ("mon-mon", {"mon"}),
    ],
)
def test_day_ranges_run_forward_and_may_wrap(days: str, open_days: set[str]) -> None:
    weekly = parse_weekly_windows(f"{days} 09:00-10:00")
    assert {name for name, windows in zip(WEEKDAYS, weekly, strict=True) if windows} == open_days
    assert all(windows in ((), ((540, 600),)) for windows in weekly)


def test_day_in_two_groups_gets_the_union() -> None:
    weekly = parse_weekly_windows("mon-fri 08:00-12:00; mon 11:00-14:00, 16:00-17:00; sat,mon 07:00-07:30")
    assert weekly[0] == ((420, 450), (480, 840), (960, 1020))
    assert weekly[1] == ((480, 720),)
    assert weekly[5] == ((420, 450),)


@pytest.mark.parametrize(
    ("windows", "merged"),
    [
        ("13:00-18:00,08:00-12:00", ((480, 720), (780, 1080))),  # sorted
        ("08:00-12:00,11:00-13:00", ((480, 780),)),  # overlapping
        ("08:00-12:00,12:00-13:00", ((480, 780),)),  # touching: one continuous opening
        ("08:00-18:00,09:00-10:00", ((480, 1080),)),  # contained
        ("08:00-12:00,08:00-12:00", ((480, 720),)),  # repeated
        ("14:00-15:00,08:00-09:00,08:30-14:00", ((480, 900),)),  # a chain
    ],
)
def test_windows_are_sorted_and_merged(windows: str, merged: tuple[tuple[int, int], ...]) -> None:
    assert parse_weekly_windows(f"tue {windows}")[1] == merged


def test_24_00_is_an_end() -> None:
    assert parse_weekly_windows("mon-fri 00:00-24:00")[:5] == (((0, 1440),),) * 5
    assert parse_weekly_windows("fri 22:00-24:00; sat 00:00-02:00")[4:6] == (((1320, 1440),), ((0, 120),))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "seg-sex 08:00-18:00",
            "unknown day 'seg' in 'seg-sex 08:00-18:00' (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            "mon-sex 08:00-18:00",
            "unknown day 'sex' in 'mon-sex 08:00-18:00' (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            "mon 08:00-12:00; Segunda 08:00-12:00",
            "unknown day 'Segunda' in 'Segunda 08:00-12:00' (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            "mon-fri 18:00-08:00",
            "window '18:00-08:00' ends before it starts (a window cannot cross midnight: "
            "write e.g. 'fri 22:00-24:00; sat 00:00-02:00')",
        ),
        ("mon 08:00-08:00", "window '08:00-08:00' is empty (it starts and ends at 08:00)"),
        ("mon 08:00-25:00", f"'25:00' is not a time {TIME_HINT}"),
        ("mon 25:00-26:00", f"'25:00' is not a time {TIME_HINT}"),
        ("mon 08:60-12:00", f"'08:60' is not a time {TIME_HINT}"),
        ("mon 08:00-24:01", f"'24:01' is not a time {TIME_HINT}"),
        ("mon 08h00-12h00", f"'08h00' is not a time {TIME_HINT}"),
        ("mon 8-12", f"'8' is not a time {TIME_HINT}"),
        ("mon 08:0-12:00", f"'08:0' is not a time {TIME_HINT}"),
        ("mon 24:00-24:00", "window '24:00-24:00' starts at 24:00 (24:00 is only an end; start at 00:00)"),
        ("mon 08:00", "window '08:00' is not HH:MM-HH:MM (e.g. 08:00-18:00)"),
        ("mon 08:00 12:00", "window '08:00 12:00' is not HH:MM-HH:MM (e.g. 08:00-18:00)"),
        ("mon 08:00-12:00-13:00", "window '08:00-12:00-13:00' is not HH:MM-HH:MM (e.g. 08:00-18:00)"),
        ("mon 08:00-12:00,", "empty window in 'mon 08:00-12:00,' (windows are HH:MM-HH:MM separated by ',')"),
        (
            "mon 08:00-12:00,,13:00-14:00",
            "empty window in 'mon 08:00-12:00,,13:00-14:00' (windows are HH:MM-HH:MM separated by ',')",
        ),
        ("mon-fri", f"no opening window after 'mon-fri' {EXAMPLE_HINT}"),
        ("mon 08:00-12:00; sat", f"no opening window after 'sat' {EXAMPLE_HINT}"),
        ("08:00-12:00", f"no days before '08:00-12:00' {EXAMPLE_HINT}"),
        (
            "mon 08:00-12:00;;sat 08:00-12:00",
            "empty group in 'mon 08:00-12:00;;sat 08:00-12:00' (groups are 'days windows' separated by ';')",
        ),
        ("mon 08:00-12:00;", "empty group in 'mon 08:00-12:00;' (groups are 'days windows' separated by ';')"),
        ("; mon 08:00-12:00", "empty group in '; mon 08:00-12:00' (groups are 'days windows' separated by ';')"),
        ("sat,,sun 08:00-12:00", "empty day in 'sat,,sun 08:00-12:00' (days are e.g. 'mon-fri' or 'sat,sun')"),
        (",sat 08:00-12:00", "empty day in ',sat 08:00-12:00' (days are e.g. 'mon-fri' or 'sat,sun')"),
        (
            "mon-wed-fri 08:00-12:00",
            "'mon-wed-fri' is not a day range in 'mon-wed-fri 08:00-12:00' (write e.g. 'mon-fri')",
        ),
        ("mon- 08:00-12:00", "'mon-' is not a day range in 'mon- 08:00-12:00' (write e.g. 'mon-fri')"),
    ],
)
def test_bad_weekly_windows_name_the_bad_piece(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_weekly_windows(spec)
    assert str(excinfo.value) == message


# ----- parse_timezone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["America/Sao_Paulo", "  America/Sao_Paulo\n", "America/New_York", "UTC"])
def test_known_time_zones(name: str) -> None:
    assert parse_timezone(name) == ZoneInfo(name.strip())


@pytest.mark.parametrize(
    "name",
    ["America/Sao Paulo", "america/sao_paulo", "Mars/Olympus_Mons", "America", "America/", "../etc/passwd", "/etc/x"],
)
def test_unknown_time_zones(name: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_timezone(name)
    assert str(excinfo.value) == f"unknown time zone '{name}'"


@pytest.mark.parametrize("name", ["", "   "])
def test_blank_time_zone(name: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_timezone(name)
    assert str(excinfo.value) == "time zone is empty (use an IANA name such as 'America/Sao_Paulo')"


# ----- parse_holidays ---------------------------------------------------------------------------------------


def test_holidays() -> None:
    assert parse_holidays("2026-12-25, 2027-01-01 ,2026-12-25") == frozenset({date(2026, 12, 25), date(2027, 1, 1)})
    assert parse_holidays("2028-02-29") == frozenset({date(2028, 2, 29)})


@pytest.mark.parametrize("spec", ["", "  "])
def test_no_holidays(spec: str) -> None:
    assert parse_holidays(spec) == frozenset()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("2026-13-01", "'2026-13-01' is not a date (YYYY-MM-DD)"),
        ("2026-12-25, 2026-02-30", "'2026-02-30' is not a date (YYYY-MM-DD)"),
        ("2027-02-29", "'2027-02-29' is not a date (YYYY-MM-DD)"),
        ("25/12/2026", "'25/12/2026' is not a date (YYYY-MM-DD)"),
        ("20261225", "'20261225' is not a date (YYYY-MM-DD)"),
        ("2026-12-5", "'2026-12-5' is not a date (YYYY-MM-DD)"),
        ("natal", "'natal' is not a date (YYYY-MM-DD)"),
        ("2026-12-25 2027-01-01", "'2026-12-25 2027-01-01' is not a date (YYYY-MM-DD)"),
        ("2026-12-25,,2027-01-01", "empty date in '2026-12-25,,2027-01-01' (dates are YYYY-MM-DD separated by ',')"),
        ("2026-12-25,", "empty date in '2026-12-25,' (dates are YYYY-MM-DD separated by ',')"),
    ],
)
def test_bad_holidays_name_the_bad_piece(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        parse_holidays(spec)
    assert str(excinfo.value) == message


# ----- BusinessHours.parse ----------------------------------------------------------------------------------


def test_parse_defaults_to_sao_paulo_without_holidays() -> None:
    hours = BusinessHours.parse(EXAMPLE)
    assert hours == BusinessHours(weekly=parse_weekly_windows(EXAMPLE), timezone=SP, holidays=frozenset())
    assert hours.timezone.key == "America/Sao_Paulo"
    assert not hours.always_open


def test_parse_takes_all_three_texts() -> None:
    hours = BusinessHours.parse("sat 09:00-10:00", " Europe/Lisbon ", "2026-12-26")
    assert hours.weekly[5] == ((540, 600),)
    assert hours.timezone == LISBON
    assert hours.holidays == frozenset({date(2026, 12, 26)})


@pytest.mark.parametrize(
    ("hours", "timezone", "holidays", "message"),
    [
        ("seg 08:00-12:00", "America/Sao_Paulo", "", "unknown day 'seg'"),
        (EXAMPLE, "America/Sao Paulo", "", "unknown time zone 'America/Sao Paulo'"),
        (EXAMPLE, "America/Sao_Paulo", "2026-13-01", "'2026-13-01' is not a date"),
    ],
)
def test_parse_raises_for_any_bad_text(hours: str, timezone: str, holidays: str, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        BusinessHours.parse(hours, timezone, holidays)
    assert str(excinfo.value).startswith(message)


def test_business_hours_is_immutable() -> None:
    with pytest.raises(AttributeError):
        STORE.holidays = frozenset({date(2026, 12, 25)})  # type: ignore[misc]


# ----- is_open / next_open / closed_period on an ordinary week ----------------------------------------------


@pytest.mark.parametrize(
    ("moment", "is_open"),
    [
        ((2026, 12, 4, 7, 59, 59), False),  # Friday before opening
        ((2026, 12, 4, 8, 0), True),  # the start is inside
        ((2026, 12, 4, 11, 59, 59), True),
        ((2026, 12, 4, 12, 0), False),  # the end is outside: lunch
        ((2026, 12, 4, 12, 30), False),
        ((2026, 12, 4, 13, 0), True),
        ((2026, 12, 4, 17, 59, 59), True),
        ((2026, 12, 4, 18, 0), False),
        ((2026, 12, 4, 18, 30), False),
        ((2026, 12, 5, 8, 0), True),  # Saturday morning
        ((2026, 12, 5, 13, 0), False),  # Saturday has no afternoon
        ((2026, 12, 6, 10, 0), False),  # Sunday
        ((2026, 12, 7, 8, 0), True),  # Monday
        ((2026, 12, 9, 15, 0), True),  # Wednesday
    ],
)
def test_is_open_on_an_ordinary_week(moment: tuple[int, ...], is_open: bool) -> None:
    assert STORE.is_open(at(*moment)) is is_open


@pytest.mark.parametrize(
    ("moment", "opening"),
    [
        ((2026, 12, 4, 6, 0), (2026, 12, 4, 8, 0)),  # early Friday -> today
        ((2026, 12, 4, 12, 30), (2026, 12, 4, 13, 0)),  # lunch -> after lunch
        ((2026, 12, 4, 18, 0), (2026, 12, 5, 8, 0)),  # Friday closing -> Saturday
        ((2026, 12, 4, 18, 30), (2026, 12, 5, 8, 0)),
        ((2026, 12, 4, 23, 59, 59), (2026, 12, 5, 8, 0)),
        ((2026, 12, 5, 12, 0), (2026, 12, 7, 8, 0)),  # Saturday closing -> Monday
        ((2026, 12, 6, 10, 0), (2026, 12, 7, 8, 0)),  # Sunday -> Monday
        ((2026, 12, 7, 7, 59), (2026, 12, 7, 8, 0)),
    ],
)
def test_next_open_when_closed(moment: tuple[int, ...], opening: tuple[int, ...]) -> None:
    assert STORE.next_open(at(*moment)) == local(*opening)


def test_next_open_is_an_aware_datetime_in_the_zone() -> None:
    opening = STORE.next_open(at(2026, 12, 4, 18, 30))
    assert opening is not None
    assert opening.tzinfo is SP
    assert opening.isoformat() == "2026-12-05T08:00:00-03:00"


def test_next_open_when_open_is_the_moment_itself() -> None:
    moment = at(2026, 12, 4, 10, 15) + 0.25
    opening = STORE.next_open(moment)
    assert opening is not None
    assert opening.timestamp() == moment
    assert opening.tzinfo is SP
    assert STORE.next_open(at(2026, 12, 4, 8, 0)) == local(2026, 12, 4, 8, 0)


def test_closed_period_is_empty_when_open() -> None:
    assert STORE.closed_period(at(2026, 12, 4, 10, 0)) == ""
    assert STORE.closed_period(at(2026, 12, 5, 8, 0)) == ""


def test_closed_period_is_the_same_from_closing_to_opening() -> None:
    moments = [(2026, 12, 4, 18, 0), (2026, 12, 4, 21, 0), (2026, 12, 5, 0, 0), (2026, 12, 5, 7, 59, 59)]
    assert {STORE.closed_period(at(*moment)) for moment in moments} == {"2026-12-05T08:00:00-03:00"}


def test_each_closed_period_has_its_own_id() -> None:
    lunch = STORE.closed_period(at(2026, 12, 4, 12, 30))
    friday_night = STORE.closed_period(at(2026, 12, 4, 19, 0))
    weekend = STORE.closed_period(at(2026, 12, 5, 12, 0))
    assert lunch == "2026-12-04T13:00:00-03:00"
    assert friday_night == "2026-12-05T08:00:00-03:00"
    assert weekend == "2026-12-07T08:00:00-03:00"
    assert STORE.closed_period(at(2026, 12, 6, 23, 0)) == weekend


# ----- holidays ---------------------------------------------------------------------------------------------


def test_holiday_on_monday_after_a_weekend() -> None:
    hours = BusinessHours.parse(EXAMPLE, holidays="2026-12-07")
    assert not hours.is_open(at(2026, 12, 7, 10, 0))
    assert hours.is_open(at(2026, 12, 8, 8, 0))
    assert hours.next_open(at(2026, 12, 5, 12, 0)) == local(2026, 12, 8, 8, 0)
    assert hours.next_open(at(2026, 12, 7, 10, 0)) == local(2026, 12, 8, 8, 0)
    ids = {hours.closed_period(at(*moment)) for moment in [(2026, 12, 5, 12, 0), (2026, 12, 6, 9), (2026, 12, 7, 15)]}
    assert ids == {"2026-12-08T08:00:00-03:00"}


def test_holiday_on_a_saturday() -> None:
    hours = BusinessHours.parse(EXAMPLE, holidays="2026-12-05")
    assert not hours.is_open(at(2026, 12, 5, 9, 0))
    assert hours.next_open(at(2026, 12, 4, 18, 30)) == local(2026, 12, 7, 8, 0)


def test_run_of_holidays_with_a_weekend_inside() -> None:
    # Thursday 24 to Monday 28 closed: Christmas Eve, Christmas, Saturday 26 and the bridge Monday.
    hours = BusinessHours.parse(EXAMPLE, holidays="2026-12-24,2026-12-25,2026-12-26,2026-12-28")
    for day in (24, 25, 26, 27, 28):
        assert not hours.is_open(at(2026, 12, day, 9, 0))
    assert hours.is_open(at(2026, 12, 23, 17, 0))
    assert hours.next_open(at(2026, 12, 23, 18, 0)) == local(2026, 12, 29, 8, 0)
    assert hours.closed_period(at(2026, 12, 23, 18, 0)) == hours.closed_period(at(2026, 12, 27, 12, 0))
    assert hours.closed_period(at(2026, 12, 27, 12, 0)) == "2026-12-29T08:00:00-03:00"


def test_holiday_across_the_year_end() -> None:
    hours = BusinessHours.parse(EXAMPLE, holidays="2026-12-31, 2027-01-01")
    assert hours.next_open(at(2026, 12, 30, 18, 0)) == local(2027, 1, 2, 8, 0)  # Saturday morning


def test_holidays_are_local_dates_of_the_zone() -> None:
    hours = BusinessHours.parse("mon-sun 00:00-24:00", holidays="2026-12-25")
    christmas_eve_late = datetime(2026, 12, 25, 2, 59, tzinfo=UTC).timestamp()  # 24th, 23:59 in São Paulo
    christmas_late = datetime(2026, 12, 26, 2, 59, tzinfo=UTC).timestamp()  # 25th, 23:59 in São Paulo
    assert hours.is_open(christmas_eve_late)
    assert not hours.is_open(christmas_eve_late + 60)
    assert not hours.is_open(christmas_late)
    assert hours.is_open(christmas_late + 60)
    assert hours.next_open(christmas_eve_late + 60) == local(2026, 12, 26, 0, 0)


def test_holidays_do_not_matter_when_always_open() -> None:
    hours = BusinessHours.parse("", holidays="2026-12-25")
    assert hours.always_open
    assert hours.is_open(at(2026, 12, 25, 10, 0))


def test_nothing_opens_within_400_days() -> None:
    # Open on Mondays only, and every Monday for 60 weeks is a holiday.
    mondays = [date(2026, 12, 7) + timedelta(weeks=week) for week in range(60)]
    hours = BusinessHours.parse("mon 08:00-12:00", holidays=",".join(day.isoformat() for day in mondays))
    assert not hours.always_open
    assert hours.next_open(at(2026, 12, 4, 10, 0)) is None
    assert hours.closed_period(at(2026, 12, 4, 10, 0)) == "never"
    # With 56 holiday Mondays, the next one (395 days ahead) is still found; with 57 it is 402 days ahead.
    near = BusinessHours.parse("mon 08:00-12:00", holidays=",".join(day.isoformat() for day in mondays[:56]))
    assert near.next_open(at(2026, 12, 4, 10, 0)) == local(2028, 1, 3, 8, 0)
    far = BusinessHours.parse("mon 08:00-12:00", holidays=",".join(day.isoformat() for day in mondays[:57]))
    assert far.next_open(at(2026, 12, 4, 10, 0)) is None


# ----- around midnight --------------------------------------------------------------------------------------


def test_whole_days() -> None:
    hours = BusinessHours.parse("mon-fri 00:00-24:00")
    assert not hours.always_open
    assert hours.is_open(at(2026, 12, 4, 0, 0))
    assert hours.is_open(at(2026, 12, 4, 23, 59))
    assert hours.is_open(at(2026, 12, 4, 23, 59, 59) + 0.999)
    assert not hours.is_open(at(2026, 12, 5, 0, 0))
    assert not hours.is_open(at(2026, 12, 6, 23, 59, 59))
    assert hours.is_open(at(2026, 12, 7, 0, 0))
    assert hours.next_open(at(2026, 12, 5, 0, 0)) == local(2026, 12, 7, 0, 0)
    assert hours.closed_period(at(2026, 12, 5, 0, 0)) == "2026-12-07T00:00:00-03:00"


def test_every_day_whole_is_open_but_not_always_open() -> None:
    hours = BusinessHours.parse("mon-sun 00:00-24:00")
    assert not hours.always_open
    assert all(hours.is_open(at(2026, 12, day, hour)) for day in range(1, 15) for hour in (0, 12, 23))
    assert hours.next_open(at(2026, 12, 6, 0, 0)) == local(2026, 12, 6, 0, 0)
    assert hours.closed_period(at(2026, 12, 6, 0, 0)) == ""


def test_window_continued_after_midnight() -> None:
    hours = BusinessHours.parse("fri 22:00-24:00; sat 00:00-02:00")
    assert not hours.is_open(at(2026, 12, 4, 21, 59, 59))
    assert hours.is_open(at(2026, 12, 4, 22, 0))
    assert hours.is_open(at(2026, 12, 4, 23, 59, 59))
    assert hours.is_open(at(2026, 12, 5, 0, 0))
    assert hours.is_open(at(2026, 12, 5, 0, 30))
    assert hours.is_open(at(2026, 12, 5, 1, 59, 59))
    assert not hours.is_open(at(2026, 12, 5, 2, 0))
    assert hours.next_open(at(2026, 12, 5, 3, 0)) == local(2026, 12, 11, 22, 0)
    assert hours.closed_period(at(2026, 12, 5, 2, 0)) == "2026-12-11T22:00:00-03:00"
    assert hours.closed_period(at(2026, 12, 11, 21, 59)) == "2026-12-11T22:00:00-03:00"
    assert hours.closed_period(at(2026, 12, 5, 0, 30)) == ""


def test_next_open_at_midnight_start_of_the_next_day() -> None:
    hours = BusinessHours.parse("sat 00:00-02:00")
    assert hours.next_open(at(2026, 12, 4, 23, 0)) == local(2026, 12, 5, 0, 0)


# ----- time zones -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("day", [date(2026, 12, 7), date(2026, 11, 2), date(2026, 7, 6), date(2027, 2, 22)])
def test_sao_paulo_has_no_dst_so_8_is_11_utc(day: date) -> None:
    # 2026-11-02 and 2027-02-22 fall in what used to be Brazil's summer time (abolished in 2019).
    hours = BusinessHours.parse("mon 08:00-12:00")
    opening = hours.next_open(at(day.year, day.month, day.day, 0, 0))
    assert opening == datetime(day.year, day.month, day.day, 11, 0, tzinfo=UTC)
    assert opening is not None and opening.utcoffset() == timedelta(hours=-3)
    assert hours.is_open(datetime(day.year, day.month, day.day, 11, 0, tzinfo=UTC).timestamp())
    assert not hours.is_open(datetime(day.year, day.month, day.day, 10, 59, tzinfo=UTC).timestamp())


def test_new_york_spring_forward_keeps_8_local() -> None:
    # 2026-03-08 (Sunday) 02:00 EST -> 03:00 EDT.
    hours = BusinessHours.parse("mon-fri 08:00-17:00; sun 08:00-12:00", "America/New_York")
    friday, sunday, monday = (datetime(2026, 3, day, 8, 0, tzinfo=NY) for day in (6, 8, 9))
    assert friday == datetime(2026, 3, 6, 13, 0, tzinfo=UTC)  # EST, UTC-5
    assert sunday == datetime(2026, 3, 8, 12, 0, tzinfo=UTC)  # EDT, UTC-4
    assert hours.is_open(datetime(2026, 3, 6, 13, 0, tzinfo=UTC).timestamp())
    assert not hours.is_open(datetime(2026, 3, 6, 12, 30, tzinfo=UTC).timestamp())
    assert hours.is_open(datetime(2026, 3, 8, 12, 0, tzinfo=UTC).timestamp())
    assert not hours.is_open(datetime(2026, 3, 8, 11, 59, tzinfo=UTC).timestamp())
    assert hours.next_open(at(2026, 3, 7, 20, 0, tz=NY)) == sunday
    opening = hours.next_open(at(2026, 3, 8, 12, 0, tz=NY))  # Sunday closing -> Monday
    assert opening == monday == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    assert opening is not None and opening.utcoffset() == timedelta(hours=-4)
    assert opening.isoformat() == "2026-03-09T08:00:00-04:00"


def test_new_york_saturday_evening_to_monday_across_spring_forward() -> None:
    hours = BusinessHours.parse("mon-fri 08:00-17:00", "America/New_York")
    saturday_evening = at(2026, 3, 7, 20, 0, tz=NY)
    assert hours.next_open(saturday_evening) == datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    assert hours.closed_period(saturday_evening) == "2026-03-09T08:00:00-04:00"
    assert hours.closed_period(at(2026, 3, 6, 17, 0, tz=NY)) == "2026-03-09T08:00:00-04:00"


def test_boundary_in_the_spring_forward_gap_lands_after_the_jump() -> None:
    # 02:30 does not exist on 2026-03-08 in New York; read with EST it is 07:30 UTC, i.e. 03:30 EDT.
    hours = BusinessHours.parse("sun 02:30-04:00", "America/New_York")
    assert hours.next_open(at(2026, 3, 7, 12, 0, tz=NY)) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    assert hours.next_open(at(2026, 3, 7, 12, 0, tz=NY)) == datetime(2026, 3, 8, 3, 30, tzinfo=NY)
    assert not hours.is_open(datetime(2026, 3, 8, 7, 29, tzinfo=UTC).timestamp())
    assert hours.is_open(datetime(2026, 3, 8, 7, 30, tzinfo=UTC).timestamp())
    assert not hours.is_open(datetime(2026, 3, 8, 8, 0, tzinfo=UTC).timestamp())  # 04:00 EDT
    assert hours.is_open(at(2026, 3, 15, 2, 30, tz=NY))  # an ordinary Sunday


def test_window_wholly_in_the_spring_forward_gap_does_not_open_that_day() -> None:
    hours = BusinessHours.parse("sun 02:00-03:00", "America/New_York")
    assert hours.is_open(at(2026, 3, 1, 2, 30, tz=NY))
    assert not any(hours.is_open(datetime(2026, 3, 8, 7, minute, tzinfo=UTC).timestamp()) for minute in (0, 30, 59))
    assert hours.next_open(at(2026, 3, 7, 12, 0, tz=NY)) == datetime(2026, 3, 15, 2, 0, tzinfo=NY)


def test_new_york_fall_back_keeps_8_local() -> None:
    # 2026-11-01 (Sunday) 02:00 EDT -> 01:00 EST.
    hours = BusinessHours.parse("mon-fri 08:00-17:00", "America/New_York")
    assert hours.is_open(datetime(2026, 10, 30, 12, 0, tzinfo=UTC).timestamp())  # Friday 08:00 EDT
    assert not hours.is_open(datetime(2026, 11, 2, 12, 30, tzinfo=UTC).timestamp())  # Monday 07:30 EST
    opening = hours.next_open(at(2026, 10, 31, 20, 0, tz=NY))
    assert opening == datetime(2026, 11, 2, 13, 0, tzinfo=UTC)
    assert opening is not None and opening.isoformat() == "2026-11-02T08:00:00-05:00"


def test_new_york_fall_back_day_window_lasts_the_extra_hour() -> None:
    hours = BusinessHours.parse("sun 00:00-03:00", "America/New_York")
    assert hours.next_open(at(2026, 10, 31, 20, 0, tz=NY)) == datetime(2026, 11, 1, 4, 0, tzinfo=UTC)
    assert hours.is_open(datetime(2026, 11, 1, 5, 30, tzinfo=UTC).timestamp())  # 01:30 EDT
    assert hours.is_open(datetime(2026, 11, 1, 6, 30, tzinfo=UTC).timestamp())  # 01:30 EST
    assert hours.is_open(datetime(2026, 11, 1, 7, 59, tzinfo=UTC).timestamp())  # 02:59 EST
    assert not hours.is_open(datetime(2026, 11, 1, 8, 0, tzinfo=UTC).timestamp())  # 03:00 EST


def test_repeated_boundary_means_its_first_occurrence() -> None:
    hours = BusinessHours.parse("sun 01:00-01:30", "America/New_York")
    assert hours.is_open(datetime(2026, 11, 1, 5, 15, tzinfo=UTC).timestamp())  # 01:15 EDT
    assert not hours.is_open(datetime(2026, 11, 1, 6, 15, tzinfo=UTC).timestamp())  # 01:15 EST, the second time


def test_lisbon_spring_forward() -> None:
    # 2026-03-29 (Sunday) 01:00 WET -> 02:00 WEST.
    hours = BusinessHours.parse("sat-sun 08:00-12:00", "Europe/Lisbon")
    assert hours.next_open(at(2026, 3, 27, 20, 0, tz=LISBON)) == datetime(2026, 3, 28, 8, 0, tzinfo=UTC)
    assert hours.next_open(at(2026, 3, 28, 13, 0, tz=LISBON)) == datetime(2026, 3, 29, 7, 0, tzinfo=UTC)
    assert hours.is_open(datetime(2026, 3, 29, 7, 0, tzinfo=UTC).timestamp())
    assert not hours.is_open(datetime(2026, 3, 29, 11, 0, tzinfo=UTC).timestamp())  # 12:00 WEST


def test_the_same_text_is_read_in_the_configured_zone() -> None:
    moment = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()  # 09:00 in São Paulo, 07:00 in New York
    assert BusinessHours.parse("fri 08:00-12:00").is_open(moment)
    assert not BusinessHours.parse("fri 08:00-12:00", "America/New_York").is_open(moment)


def test_window_of_a_skipped_day_opens_when_the_clock_lands() -> None:
    # Samoa skipped Friday 2011-12-30 (Thursday 23:59:59 -10:00 -> Saturday 00:00 +14:00). A Friday window is read
    # with Thursday's offset, so it opens on Saturday's local date; is_open must agree with next_open.
    hours = BusinessHours.parse("fri 10:00-12:00", "Pacific/Apia")
    opening = hours.next_open(at(2011, 12, 29, 20, 0, tz=ZoneInfo("Pacific/Apia")))
    assert opening is not None
    assert opening.isoformat() == "2011-12-31T10:00:00+14:00"
    assert hours.is_open(opening.timestamp())
    assert not hours.is_open(opening.timestamp() - 1)


@pytest.mark.parametrize(
    ("hours", "start"),
    [
        (STORE, at(2026, 12, 1, 0, 0)),
        (BusinessHours.parse("fri 22:00-24:00; sat 00:00-02:00", holidays="2026-12-12"), at(2026, 12, 1, 0, 0)),
        (BusinessHours.parse("mon-fri 08:00-17:00; sun 00:30-03:00", "America/New_York"), at(2026, 3, 4, tz=NY)),
        (BusinessHours.parse("mon-fri 08:00-17:00; sun 00:30-03:00", "America/New_York"), at(2026, 10, 28, tz=NY)),
    ],
)
def test_next_open_agrees_with_is_open(hours: BusinessHours, start: float) -> None:
    # Every 17 minutes for 10 days: the opening is open, not before the moment, and a real start when closed.
    for step in range(10 * 24 * 60 // 17):
        moment = start + step * 17 * 60
        opening = hours.next_open(moment)
        assert opening is not None
        assert opening.timestamp() >= moment
        assert hours.is_open(opening.timestamp())
        if hours.is_open(moment):
            assert opening.timestamp() == moment
            assert hours.closed_period(moment) == ""
        else:
            assert not hours.is_open(opening.timestamp() - 1)
            assert hours.closed_period(moment) == opening.isoformat()


# ----- always open ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["", "  "])
def test_always_open(spec: str) -> None:
    hours = BusinessHours.parse(spec)
    assert hours.always_open
    for moment in (at(2026, 12, 4, 3, 0), at(2026, 12, 6, 12, 0), at(2026, 12, 31, 23, 59)):
        assert hours.is_open(moment)
        assert hours.next_open(moment) is None
        assert hours.closed_period(moment) == ""


# ----- describe_when ----------------------------------------------------------------------------------------


NOW = local(2026, 12, 4, 18, 30)  # Friday


@pytest.mark.parametrize(
    ("moment", "now", "text"),
    [
        (local(2026, 12, 4, 19, 0), NOW, "hoje às 19:00"),
        (local(2026, 12, 4, 13, 0), local(2026, 12, 4, 12, 30), "hoje às 13:00"),
        (local(2026, 12, 5, 8, 0), NOW, "amanhã às 08:00"),
        (local(2026, 12, 5, 0, 0), NOW, "amanhã às 00:00"),
        (local(2026, 12, 6, 8, 0), NOW, "domingo às 08:00"),
        (local(2026, 12, 7, 8, 0), NOW, "segunda-feira às 08:00"),
        (local(2026, 12, 8, 8, 0), NOW, "terça-feira às 08:00"),
        (local(2026, 12, 9, 8, 0), NOW, "quarta-feira às 08:00"),
        (local(2026, 12, 10, 8, 0), NOW, "quinta-feira às 08:00"),  # 6 days ahead
        (local(2026, 12, 11, 8, 0), local(2026, 12, 7, 9, 0), "sexta-feira às 08:00"),
        (local(2026, 12, 12, 8, 0), local(2026, 12, 7, 9, 0), "sábado às 08:00"),
        (local(2026, 12, 11, 8, 0), NOW, "sexta-feira, 11/12, às 08:00"),  # 7 days ahead: the same weekday
        (local(2026, 12, 29, 8, 0), NOW, "terça-feira, 29/12, às 08:00"),
        (local(2026, 1, 5, 8, 0), local(2025, 12, 20, 10, 0), "segunda-feira, 05/01, às 08:00"),
        (local(2026, 12, 3, 8, 0), NOW, "quinta-feira, 03/12, às 08:00"),  # already past
    ],
)
def test_describe_when(moment: datetime, now: datetime, text: str) -> None:
    assert describe_when(moment, now) == text


@pytest.mark.parametrize(
    ("moment", "now", "text"),
    [
        (local(2026, 12, 1, 8, 0), local(2026, 11, 30, 20, 0), "amanhã às 08:00"),
        (local(2027, 1, 1, 8, 0), local(2026, 12, 31, 20, 0), "amanhã às 08:00"),
        (local(2027, 1, 1, 8, 0), local(2026, 12, 30, 20, 0), "sexta-feira às 08:00"),
        (local(2027, 1, 4, 8, 0), local(2026, 12, 30, 20, 0), "segunda-feira às 08:00"),
        (local(2027, 1, 6, 8, 0), local(2026, 12, 30, 20, 0), "quarta-feira, 06/01, às 08:00"),
        (local(2027, 3, 1, 8, 0), local(2027, 2, 28, 9, 0), "amanhã às 08:00"),
        (local(2027, 3, 1, 8, 0), local(2027, 2, 26, 9, 0), "segunda-feira às 08:00"),
    ],
)
def test_describe_when_across_month_and_year_ends(moment: datetime, now: datetime, text: str) -> None:
    assert describe_when(moment, now) == text


def test_describe_when_compares_dates_in_the_moments_zone() -> None:
    # 01:00 UTC on Saturday is still Friday 22:00 in São Paulo, so Saturday 08:00 there is "amanhã".
    now = datetime(2026, 12, 5, 1, 0, tzinfo=UTC)
    assert describe_when(local(2026, 12, 5, 8, 0), now) == "amanhã às 08:00"
    assert describe_when(local(2026, 12, 4, 23, 0), now) == "hoje às 23:00"
    # The clock shown is the moment's own, not the now's.
    assert describe_when(datetime(2026, 12, 5, 11, 0, tzinfo=UTC).astimezone(SP), now) == "amanhã às 08:00"


def test_describe_when_of_next_open() -> None:
    moment = at(2026, 12, 5, 12, 0)  # Saturday closing
    opening = STORE.next_open(moment)
    assert opening is not None
    assert describe_when(opening, datetime.fromtimestamp(moment, SP)) == "segunda-feira às 08:00"
