"""Business hours: BUSINESS_HOURS / TIMEZONE / HOLIDAYS text -> `BusinessHours`, and questions about time.

Owns parsing the three texts (with ValueError messages that name the bad piece), "is someone there at this
moment", "when do they open next", a stable id per closed period, and saying a moment in pt-BR ("amanhã às
08:00"). Pure: no I/O, no settings, no logging; every moment comes in as unix seconds or an aware datetime.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MINUTES_PER_DAY = 24 * 60
_LOOKAHEAD_DAYS = 400  # more than a year, so a yearly run of holidays or a seasonal gap still finds the opening

WEEKDAYS_PT = ("segunda-feira", "terça-feira", "quarta-feira", "quinta-feira", "sexta-feira", "sábado", "domingo")
_DIGIT = re.compile(r"[0-9]")  # not \d: it also matches Arabic-Indic and other digits
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # date.fromisoformat alone would also take "20261225"
_EXAMPLE_GROUP = "'mon-fri 08:00-12:00,13:00-18:00; sat 08:00-12:00'"


# ----- parsing ----------------------------------------------------------------------------------------------


def parse_weekly_windows(spec: str) -> tuple[tuple[tuple[int, int], ...], ...]:
    """BUSINESS_HOURS text -> 7 tuples (Monday first) of (start, end) minutes since local midnight.

    Each day's windows are sorted, with overlapping or touching ones merged (also across groups that name the
    same day); an end may be 1440 (24:00). A blank spec gives 7 empty tuples, which means "always open".

    Raises:
        ValueError: naming the bad group, day, window or time.
    """
    if not spec.strip():
        return ((),) * 7
    by_day: list[list[tuple[int, int]]] = [[] for _ in WEEKDAYS]
    for group in spec.split(";"):
        days, windows = _parse_group(group.strip(), spec)
        for day in days:
            by_day[day].extend(windows)
    return tuple(_merge(windows) for windows in by_day)


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone name ("America/Sao_Paulo") -> ZoneInfo; ValueError when blank or unknown."""
    key = name.strip()
    if not key:
        raise ValueError("time zone is empty (use an IANA name such as 'America/Sao_Paulo')")
    try:
        return ZoneInfo(key)
    # zoneinfo raises ZoneInfoNotFoundError for missing keys, ValueError for malformed ones ("America/",
    # "../x", a data file that is not a zone) and OSError for folders ("America") or overlong names.
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone '{key}'") from None


def parse_holidays(spec: str) -> frozenset[date]:
    """HOLIDAYS text ("2026-12-25, 2027-01-01") -> local dates closed all day; blank -> empty set.

    Raises:
        ValueError: naming the piece that is not a YYYY-MM-DD date (an empty piece between commas included).
    """
    if not spec.strip():
        return frozenset()
    holidays: set[date] = set()
    for piece in (piece.strip() for piece in spec.split(",")):
        if not piece:
            raise ValueError(f"empty date in '{spec.strip()}' (dates are YYYY-MM-DD separated by ',')")
        holidays.add(_parse_date(piece))
    return frozenset(holidays)


def _parse_date(text: str) -> date:
    if _DATE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass  # the shape is right but the month or day is not (2026-13-01, 2026-02-30)
    raise ValueError(f"'{text}' is not a date (YYYY-MM-DD)")


def _parse_group(group: str, spec: str) -> tuple[list[int], list[tuple[int, int]]]:
    """One `days windows` group -> (weekday indexes, windows).

    Days are letters and windows start with a digit, so the first digit splits the two whatever spaces the
    owner typed.
    """
    if not group:
        raise ValueError(f"empty group in '{spec.strip()}' (groups are 'days windows' separated by ';')")
    match = _DIGIT.search(group)
    if match is None:
        raise ValueError(f"no opening window after '{group}' (write e.g. {_EXAMPLE_GROUP})")
    days_text, windows_text = group[: match.start()].strip(), group[match.start() :].strip()
    if not days_text:
        raise ValueError(f"no days before '{group}' (write e.g. {_EXAMPLE_GROUP})")
    return _parse_days(days_text, group), _parse_windows(windows_text, group)


def _parse_days(text: str, group: str) -> list[int]:
    """Days ("mon-fri", "sat,sun", "sat" or a mix such as "mon,wed-fri") -> weekday indexes (Monday = 0).

    A range runs forward through the week and may wrap: "fri-mon" is fri, sat, sun, mon; "mon-mon" is mon.
    """
    days: list[int] = []
    for item in (item.strip() for item in text.split(",")):
        if not item:
            raise ValueError(f"empty day in '{group}' (days are e.g. 'mon-fri' or 'sat,sun')")
        ends = [end.strip() for end in item.split("-")]
        if len(ends) > 2 or not all(ends):
            raise ValueError(f"'{item}' is not a day range in '{group}' (write e.g. 'mon-fri')")
        first, last = (_parse_day(end, group) for end in (ends[0], ends[-1]))
        days.extend((first + offset) % 7 for offset in range((last - first) % 7 + 1))
    return days


def _parse_day(text: str, group: str) -> int:
    try:
        return WEEKDAYS.index(text.lower())
    except ValueError:
        raise ValueError(f"unknown day '{text}' in '{group}' (use {', '.join(WEEKDAYS)})") from None


def _parse_windows(text: str, group: str) -> list[tuple[int, int]]:
    """Windows ("08:00-12:00, 13:00-18:00") -> [(480, 720), (780, 1080)]."""
    windows: list[tuple[int, int]] = []
    for item in (item.strip() for item in text.split(",")):
        if not item:
            raise ValueError(f"empty window in '{group}' (windows are HH:MM-HH:MM separated by ',')")
        ends = [end.strip() for end in item.split("-")]
        if len(ends) != 2:
            raise ValueError(f"window '{item}' is not HH:MM-HH:MM (e.g. 08:00-18:00)")
        start, end = _parse_minute(ends[0]), _parse_minute(ends[1])
        if start == _MINUTES_PER_DAY:
            raise ValueError(f"window '{item}' starts at 24:00 (24:00 is only an end; start at 00:00)")
        if end < start:
            raise ValueError(
                f"window '{item}' ends before it starts (a window cannot cross midnight: "
                "write e.g. 'fri 22:00-24:00; sat 00:00-02:00')"
            )
        if end == start:
            raise ValueError(f"window '{item}' is empty (it starts and ends at {ends[0]})")
        windows.append((start, end))
    return windows


def _parse_minute(text: str) -> int:
    """ "HH:MM" (or "H:MM") -> minutes since midnight; "24:00" -> 1440, which only an end may use."""
    match = _TIME.fullmatch(text)
    if match is not None:
        hour, minute = int(match.group(1)), int(match.group(2))
        if (hour < 24 and minute < 60) or (hour == 24 and minute == 0):
            return hour * 60 + minute
    raise ValueError(f"'{text}' is not a time (HH:MM, 00:00-23:59, or 24:00 as an end)")


def _merge(windows: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted windows with overlapping or touching ones joined: 08-12 + 11-14 + 14-15 -> 08-15."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


# ----- questions about time ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """When people are there: weekly windows in local wall-clock time of `timezone`, minus whole-day holidays.

    Window boundaries are local times of each date, turned into instants with that date's UTC offset, so a
    08:00 opening stays 08:00 local across DST changes. A boundary that does not exist locally (02:30 on a
    spring-forward day) is read with the offset before the change, so it lands as much later as the clock
    jumped (02:30 -> 03:30 local); a window lying wholly inside the gap never opens that day. A boundary that
    happens twice (01:30 on a fall-back day) means its first occurrence.
    """

    weekly: tuple[tuple[tuple[int, int], ...], ...]  # as parse_weekly_windows returns: 7 days, Monday first
    timezone: ZoneInfo
    holidays: frozenset[date] = frozenset()

    @classmethod
    def parse(cls, hours: str, timezone: str = "America/Sao_Paulo", holidays: str = "") -> BusinessHours:
        """Build from the BUSINESS_HOURS, TIMEZONE and HOLIDAYS texts; ValueError names the bad piece."""
        return cls(
            weekly=parse_weekly_windows(hours),
            timezone=parse_timezone(timezone),
            holidays=parse_holidays(holidays),
        )

    @property
    def always_open(self) -> bool:
        """True when no window is configured at all (empty BUSINESS_HOURS); holidays are then irrelevant."""
        return not any(self.weekly)

    def is_open(self, at: float) -> bool:
        """Whether `at` (unix seconds) lies inside an opening window of a day that is not a holiday."""
        if self.always_open:
            return True
        # The day before and after too: DST can push a boundary past local midnight.
        today = datetime.fromtimestamp(at, self.timezone).date()
        return any(start <= at < end for start, end in self._openings(today - timedelta(days=1), 3))

    def next_open(self, at: float) -> datetime | None:
        """When people are next there, as an aware datetime in `timezone`.

        `at` itself when open at `at`; otherwise the start of the first window after `at`, skipping closed days
        and holidays. None when always open (there is nothing to wait for) or when nothing opens within
        400 days (every day closed); tell the two apart with `always_open`.
        """
        if self.always_open:
            return None
        today = datetime.fromtimestamp(at, self.timezone).date()
        for start, end in self._openings(today - timedelta(days=1), _LOOKAHEAD_DAYS + 2):
            if start <= at < end:
                return datetime.fromtimestamp(at, self.timezone)
            if start > at:
                return datetime.fromtimestamp(start, self.timezone)
        return None

    def closed_period(self, at: float) -> str:
        """'' when open at `at`; otherwise an id shared by every moment from one closing to the next opening.

        The id is the next opening's ISO timestamp ("2026-12-07T08:00:00-03:00"), or 'never' when nothing opens
        within 400 days; used to send the out-of-hours notice at most once per closed period.
        """
        if self.is_open(at):
            return ""
        opening = self.next_open(at)
        return "never" if opening is None else opening.isoformat()

    def _openings(self, first_day: date, days: int) -> Iterator[tuple[float, float]]:
        """(start, end) unix seconds of the windows of `days` local dates from `first_day`, in order.

        Holidays are skipped, and so are windows that DST left empty (wholly inside a spring-forward gap).
        """
        for offset in range(days):
            day = first_day + timedelta(days=offset)
            if day in self.holidays:
                continue
            for start_minute, end_minute in self.weekly[day.weekday()]:
                start, end = self._instant(day, start_minute), self._instant(day, end_minute)
                if start < end:
                    yield start, end

    def _instant(self, day: date, minute: int) -> float:
        """Unix seconds of local wall-clock `minute` on `day`; 1440 (24:00) is the next local midnight."""
        if minute == _MINUTES_PER_DAY:
            day, minute = day + timedelta(days=1), 0
        # fold=0 (the default): the first of a repeated time, the pre-change offset for a skipped one.
        return datetime.combine(day, time(minute // 60, minute % 60), tzinfo=self.timezone).timestamp()


def describe_when(moment: datetime, now: datetime) -> str:
    """When `moment` is, in the customer's words, relative to `now` (both aware; compared in moment's zone).

    "hoje às 13:00", "amanhã às 08:00", "segunda-feira às 08:00" within the next 6 days, and otherwise
    (further, or already past) the date too: "segunda-feira, 05/01, às 08:00".
    """
    days_ahead = (moment.date() - now.astimezone(moment.tzinfo).date()).days
    clock = moment.strftime("%H:%M")
    if days_ahead == 0:
        return f"hoje às {clock}"
    if days_ahead == 1:
        return f"amanhã às {clock}"
    weekday = WEEKDAYS_PT[moment.weekday()]
    if 2 <= days_ahead <= 6:
        return f"{weekday} às {clock}"
    return f"{weekday}, {moment.strftime('%d/%m')}, às {clock}"
