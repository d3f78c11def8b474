"""Pure scheduling logic for periodic tasks: when occurrences fall, which are due, which are missed.

Nothing here reads a clock, touches a database or does I/O: every instant is passed in, and
every instant in or out is a timezone-aware datetime (results are always in UTC).

* ``cron`` schedules are evaluated with cronsim in the schedule's IANA time zone, with Debian
  cron's DST behaviour: a time that falls in a spring-forward gap runs once right after the gap,
  a time in the repeated fall-back hour runs once (the first time); expressions with a wildcard
  hour or minute (``*/30 * * * *``) simply follow the wall clock.
* ``every`` schedules are aligned to the Unix epoch in UTC (occurrences are ``epoch + k*every``),
  so every replica computes the same instants without shared state.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal, cast, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = ["CRON_FIELDS", "CatchUp", "Due", "Schedule", "ScheduleError"]
__all__ += ["cron_field_values", "format_cron_field", "format_duration", "parse_duration"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ZERO = timedelta(0)
CatchUp = Literal["skip", "latest", "all"]

_ONE_US = timedelta(microseconds=1)
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_RE = re.compile(r"(?:\d+[smhd])+")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_HOST_DEPENDENT_ZONES = {"localtime", "posixrules"}
_DOW = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
#: (lowest, highest, names) for minute, hour, day-of-month, month, day-of-week
CRON_FIELDS: list[tuple[int, int, list[str]]] = [(0, 59, []), (0, 23, []), (1, 31, [])]
CRON_FIELDS += [(1, 12, _MONTHS), (0, 7, _DOW)]


class ScheduleError(ValueError):
    """A schedule, duration or datetime was not acceptable; the message says what to pass."""


def parse_duration(name: str, value: str | timedelta) -> timedelta:
    """Parse ``'90s'``, ``'5m'``, ``'1h30m'``, ``'2d'`` or a timedelta; it must be > 0."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, str) and _DURATION_RE.fullmatch(value.strip().lower()):
        parts = re.findall(r"(\d+)([smhd])", value.strip().lower())
        result = timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))
    else:
        raise ScheduleError(
            f"{name}={value!r}: use a number with s, m, h or d, e.g. '5m' or '1h30m' "
            "(or a datetime.timedelta)"
        )
    if result <= timedelta(0):
        raise ScheduleError(f"{name}={value!r}: must be greater than zero, e.g. '5m'")
    return result


def format_duration(value: timedelta) -> str:
    """Inverse of :func:`parse_duration` for whole seconds: 5400 seconds -> ``'1h30m'``."""
    seconds = int(value.total_seconds())
    out = ""
    for unit, size in _UNITS.items():
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


def _utc(name: str, value: datetime) -> datetime:
    if not isinstance(value, datetime):
        raise ScheduleError(f"{name}={value!r}: pass a timezone-aware datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{name}={value!r} is naive; pass a timezone-aware datetime such as "
            "datetime.now(timezone.utc) (oncely never assumes a time zone)"
        )
    return value.astimezone(UTC)


def _zone(tz: str) -> tzinfo:
    if tz == "UTC":
        return UTC  # lets cronsim skip its DST handling entirely
    if not isinstance(tz, str) or tz in _HOST_DEPENDENT_ZONES:
        raise ScheduleError(f"tz={tz!r}: use an IANA time zone name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ScheduleError(
            f"tz={tz!r} is not a known IANA time zone: use a name such as 'UTC', "
            "'Europe/Berlin' or 'America/New_York' (case matters)"
        ) from exc


def cron_field_values(field: str, index: int) -> set[int] | None:
    """The values cron field ``index`` selects (weekdays as 0-6), or None for L, W and #."""
    lo, hi, names = CRON_FIELDS[index]
    values: set[int] = set()
    for part in field.upper().split(","):
        match = re.fullmatch(r"(\*|\w+)(?:-(\w+))?(?:/(\d+))?", part)
        if not match or re.search(r"[LW#]", re.sub(r"[A-Z]{3}", "", part)):
            return None
        start, end, step = match.groups()

        def number(text: str) -> int:
            return names.index(text) + (1 if index == 3 else 0) if text in names else int(text)

        first = lo if start == "*" else number(start)
        last = hi if start == "*" or (step and not end) else number(end or start)
        values.update(range(first, last + 1, int(step or 1)))
    return {v % 7 for v in values} if index == 4 else values


def format_cron_field(values: set[int], lo: int, hi: int, *, steps: bool = True) -> str:
    """Write values as a cron field: ``*``, ``*/n`` (if ``steps``) or ranges and lists."""
    ordered = sorted(values)
    if ordered == list(range(lo, hi + 1)):
        return "*"
    if steps and len(ordered) > 2 and ordered[0] == lo:
        step = ordered[1] - lo
        if ordered == list(range(lo, hi + 1, step)):
            return f"*/{step}"
    runs: list[list[int]] = []
    for v in ordered:
        if runs and runs[-1][-1] == v - 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ",".join(map(str, r)) for r in runs)


def _check_grace(grace: timedelta) -> None:
    if not isinstance(grace, timedelta) or grace < timedelta(0):
        raise ScheduleError(f"grace={grace!r}: pass a timedelta >= 0, e.g. timedelta(minutes=1)")


@dataclass(frozen=True)
class Due:
    """What to do at ``now``: occurrences to ``fire`` and occurrences ``missed`` (both ascending).

    ``missed`` holds at most ``max_missed`` of the most recent missed occurrences;
    ``missed_truncated`` says that older ones were left out.
    """

    fire: list[datetime] = field(default_factory=list)
    missed: list[datetime] = field(default_factory=list)
    missed_truncated: bool = False


@dataclass(frozen=True)
class Schedule:
    """When a periodic task runs; build it with :meth:`parse`, which validates everything once."""

    cron: str | None = None
    every: timedelta | None = None
    tz: str = "UTC"
    catch_up: CatchUp = "latest"
    catch_up_window: timedelta = timedelta(hours=1)

    @classmethod
    def parse(
        cls,
        cron: str | None = None,
        *,
        every: str | timedelta | None = None,
        tz: str = "UTC",
        catch_up: str = "latest",
        window: str | timedelta | None = None,
    ) -> Schedule:
        """Validate and normalise input: ``Schedule.parse("*/5 * * * *", tz="Europe/Berlin")``.

        ``cron`` takes five fields (or @hourly, @daily, @weekly, @monthly, @yearly); ``every`` a
        duration such as ``"90s"`` or ``"5m"``; ``window`` bounds how far back ``catch_up="all"``
        fires missed occurrences (default one hour).
        """
        if cron is not None and every is not None:
            raise ScheduleError(
                f"cron={cron!r} and every={every!r} were both given: pass exactly one of them"
            )
        if isinstance(cron, str):
            cron = " ".join(cron.split())
            cron = _MACROS.get(cron.lower(), cron)
        every_td = None if every is None else parse_duration("every", every)
        window_td = timedelta(hours=1) if window is None else parse_duration("window", window)
        return cls(
            cron=cron,
            every=every_td,
            tz=tz,
            catch_up=cast(CatchUp, catch_up),
            catch_up_window=window_td,
        )

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ScheduleError(
                "pass exactly one of cron (e.g. '*/5 * * * *') or every (e.g. '5m'); "
                f"got cron={self.cron!r}, every={self.every!r}"
            )
        zone = _zone(self.tz)
        if self.cron is not None:
            self._check_cron(self.cron, zone)
        if self.every is not None:
            if not isinstance(self.every, timedelta) or self.every <= timedelta(0):
                raise ScheduleError(f"every={self.every!r}: must be greater than zero, e.g. '5m'")
            if self.every % timedelta(seconds=1):
                raise ScheduleError(
                    f"every={self.every!r}: use a whole number of seconds, e.g. '90s'"
                )
            if self.tz != "UTC":
                raise ScheduleError(
                    f"every={format_duration(self.every)!r} with tz={self.tz!r}: every= schedules "
                    "are aligned to the Unix epoch in UTC, so tz does not apply; drop tz, or use "
                    "a cron such as '0 3 * * *' with tz= to run at a local time"
                )
        if self.catch_up not in get_args(CatchUp):
            raise ScheduleError(f"catch_up={self.catch_up!r}: use 'skip', 'latest' or 'all'")
        if not isinstance(self.catch_up_window, timedelta) or self.catch_up_window <= timedelta(0):
            raise ScheduleError(
                f"window={self.catch_up_window!r}: must be greater than zero, e.g. '1h'"
            )

    @staticmethod
    def _check_cron(cron: str, zone: tzinfo) -> None:
        hint = (
            "use 5 fields 'minute hour day-of-month month day-of-week' such as '*/5 * * * *' "
            "or '30 2 * * MON-FRI' (or @hourly, @daily, @weekly, @monthly, @yearly)"
        )
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise ScheduleError(f"cron={cron!r}: {hint}")
        try:
            CronSim(cron, datetime(2000, 1, 1, tzinfo=zone))
        except (CronSimError, ValueError, IndexError) as exc:
            raise ScheduleError(f"cron={cron!r}: {str(exc).lower() or 'invalid'}; {hint}") from exc

    def __str__(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"cron {self.cron!r} in {self.tz}"

    # -- occurrences -------------------------------------------------------------------------

    def _iter_after(self, after: datetime) -> Iterator[datetime]:
        """Occurrences strictly after ``after`` (aware UTC), ascending, never repeating."""
        if self.every is not None:
            k = (after - EPOCH) // self.every + 1
            while True:
                yield EPOCH + k * self.every
                k += 1
        assert self.cron is not None
        sim = CronSim(self.cron, after.astimezone(_zone(self.tz)))
        previous = after
        while True:
            try:
                candidate = next(sim).astimezone(UTC)
            except StopIteration:  # cronsim gives up after 50 years without a match
                return
            # In the repeated fall-back hour cronsim works on naive local time and may hand back
            # the first pass of a wall time we are already past; never go backwards or repeat.
            if candidate > previous:
                previous = candidate
                yield candidate

    def next_after(self, t: datetime) -> datetime:
        """The first occurrence strictly after ``t``, as an aware UTC datetime."""
        after = _utc("t", t)
        for occurrence in self._iter_after(after):
            return occurrence
        raise ScheduleError(f"{self} has no occurrence within 50 years after {after.isoformat()}")

    def occurrences(self, after: datetime, until: datetime) -> Iterator[datetime]:
        """Occurrences in ``(after, until]``, ascending, as aware UTC datetimes."""
        start, end = _utc("after", after), _utc("until", until)
        return self._between(start, end)

    def latest(self, at: datetime, *, lookback: timedelta = timedelta(days=400)) -> datetime | None:
        """The most recent occurrence at or before ``at`` (within ``lookback``), or None."""
        end = _utc("at", at)
        found, _ = self._tail(end - lookback, end, 1)
        return found[0] if found else None

    def _between(self, after: datetime, until: datetime) -> Iterator[datetime]:
        if until <= after:
            return
        for occurrence in self._iter_after(after):
            if occurrence > until:
                return
            yield occurrence

    def _tail(self, after: datetime, until: datetime, n: int) -> tuple[list[datetime], bool]:
        """The latest ``n`` occurrences in ``(after, until]`` and whether older ones exist.

        Looks back in growing windows, so a long outage costs O(n), not O(outage).
        """
        span = timedelta(hours=1)
        while True:
            whole = until - after <= span
            start = after if whole else until - span
            found = list(self._between(start, until))
            if len(found) > n or whole:
                return found[len(found) - min(n, len(found)) :], len(found) > n
            span *= 4

    # -- decisions -----------------------------------------------------------------------------

    def due(
        self,
        last: datetime | None,
        now: datetime,
        *,
        grace: timedelta,
        max_missed: int = 100,
    ) -> Due:
        """Which occurrences to fire at ``now`` given ``last``, the last occurrence already fired.

        * never ran (``last`` is None): fire the latest occurrence within ``grace`` of ``now``,
          if any; history is neither fired nor reported as missed.
        * ``skip``: fire the latest due occurrence only if within ``grace``; the rest are missed.
        * ``latest``: fire the latest due occurrence however late; older ones are missed.
        * ``all``: fire every due occurrence within ``catch_up_window`` of ``now``; older: missed.
        """
        now_utc = _utc("now", now)
        _check_grace(grace)
        if max_missed < 0:
            raise ScheduleError(f"max_missed={max_missed!r}: pass 0 or more")
        if last is None:
            recent, _ = self._tail(now_utc - grace - _ONE_US, now_utc, 1)
            return Due(fire=recent)
        last_utc = _utc("last", last)
        if self.catch_up == "all":
            edge = max(last_utc, now_utc - self.catch_up_window - _ONE_US)
            fire = list(self._between(edge, now_utc))
            missed, more = self._tail(last_utc, edge, max_missed)
            return Due(fire=fire, missed=missed, missed_truncated=more)
        pending, more = self._tail(last_utc, now_utc, max_missed + 1)
        if not pending:
            return Due()
        newest = pending[-1]
        if self.catch_up == "latest" or now_utc - newest <= grace:
            return Due(fire=[newest], missed=pending[:-1], missed_truncated=more)
        kept = pending[len(pending) - min(max_missed, len(pending)) :]
        return Due(missed=kept, missed_truncated=more or len(kept) < len(pending))

    def missed_since(
        self,
        last_seen_tick: datetime | None,
        now: datetime,
        grace: timedelta,
        *,
        limit: int = 100,
    ) -> list[datetime]:
        """Occurrences after ``last_seen_tick`` whose grace ran out before ``now`` with no tick.

        Used to notice that the external timer stopped: an occurrence ``p`` counts when
        ``last_seen_tick < p`` and ``p + grace < now``. Returns at most ``limit`` of the most
        recent ones, ascending. With no tick ever seen there is no baseline and the result is
        empty: pass the process start time instead to detect a trigger that was never set up.
        """
        now_utc = _utc("now", now)
        _check_grace(grace)
        if last_seen_tick is None or limit <= 0:
            return []
        found, _ = self._tail(
            _utc("last_seen_tick", last_seen_tick), now_utc - grace - _ONE_US, limit
        )
        return found

    # -- conversions used by the exporters ------------------------------------------------------

    def cron_equivalent(self) -> str | None:
        """A 5-field cron (in :attr:`tz`) firing at exactly the same instants, or None.

        Cron schedules return themselves. ``every`` schedules are expressible when the interval
        divides an hour (``*/15 * * * *``) or a day (``0 */6 * * *``), or is one week (the epoch
        was a Thursday, so ``0 0 * * 4``); all in UTC.
        """
        if self.cron is not None:
            return self.cron
        assert self.every is not None
        seconds = int(self.every.total_seconds())
        minutes, rest = divmod(seconds, 60)
        if rest:
            return None
        if minutes < 60 and 60 % minutes == 0:
            return "* * * * *" if minutes == 1 else f"*/{minutes} * * * *"
        if minutes == 24 * 60:
            return "0 0 * * *"
        hours, rest = divmod(minutes, 60)
        if not rest and 24 % hours == 0:
            return "0 * * * *" if hours == 1 else f"0 */{hours} * * *"
        if minutes == 7 * 24 * 60:
            return "0 0 * * 4"
        return None

    def utc_cron(self) -> str:
        """A 5-field cron in UTC that fires at exactly the same instants, or ScheduleError.

        Possible for UTC and ``every`` schedules (see :meth:`cron_equivalent`), for zones with a
        single UTC offset over 2025-2044 per the tz database, and for schedules that follow the
        wall clock when every offset maps them to the same UTC times (``*/5 * * * *`` in Berlin).
        """
        cron = self.cron_equivalent()
        if cron is None:
            raise ScheduleError(f"{self} cannot be written as cron")
        if self.tz == "UTC":
            return cron
        zone = _zone(self.tz)
        minute, hour, dom, month, dow = cron.split()
        start = datetime(2025, 1, 1, tzinfo=UTC)
        samples = (start + timedelta(hours=12 * i) for i in range(20 * 731))
        offsets = {
            (d.astimezone(zone).utcoffset() or ZERO) // timedelta(minutes=1) for d in samples
        }
        minutes, hours, weekdays = (
            cron_field_values(f, i) for i, f in ((0, minute), (1, hour), (4, dow))
        )
        why = "its UTC offset changes with daylight saving time"
        if minutes and hours and (len(offsets) == 1 or "*" in minute[:1] + hour[:1]):
            local = [h * 60 + m for h in hours for m in minutes]
            shifted = {frozenset((t - off) % 1440 for t in local) for off in offsets}
            day_shift = {(t - off) // 1440 for t in local for off in offsets}
            times = next(iter(shifted))
            utc_hours, utc_minutes = {t // 60 for t in times}, {t % 60 for t in times}
            days: tuple[str, ...] | None = (dom, month, dow)
            if (dom, month, dow) != ("*", "*", "*") and day_shift != {0}:
                days = None
                if len(day_shift) == 1 and (dom, month) == ("*", "*") and weekdays is not None:
                    weekdays = {(d + next(iter(day_shift))) % 7 for d in weekdays}
                    days = ("*", "*", format_cron_field(weekdays, 0, 6))
            if len(shifted) != 1 or len(times) != len(utc_hours) * len(utc_minutes):
                why = "its times do not form a single cron in UTC"
            elif days is None:
                why = "its days begin at a different UTC time than its runs"
            else:
                fields = [
                    format_cron_field(utc_minutes, 0, 59),
                    format_cron_field(utc_hours, 0, 23),
                ]
                return " ".join([*fields, *days])
        raise ScheduleError(f"cron {cron!r} in {self.tz} is not one cron in UTC: {why}")
