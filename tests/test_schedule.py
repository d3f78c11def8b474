"""Tests for oncely.schedule: occurrences, DST, catch-up decisions and input validation.

DST transitions these tests rely on (checked in test_the_dst_dates_these_tests_rely_on_hold):
* Europe/Berlin     2026-03-29 02:00 CET  -> 03:00 CEST (01:00 UTC)
                    2026-10-25 03:00 CEST -> 02:00 CET  (01:00 UTC)
* America/New_York  2026-03-08 02:00 EST  -> 03:00 EDT  (07:00 UTC)
                    2026-11-01 02:00 EDT  -> 01:00 EST  (06:00 UTC)
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from oncely.schedule import Due, Schedule, ScheduleError, format_duration, parse_duration

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


def chain(schedule: Schedule, start: datetime, count: int) -> list[datetime]:
    out, t = [], start
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(t)
    return out


# -- DST ------------------------------------------------------------------------------------------


def test_the_dst_dates_these_tests_rely_on_hold() -> None:
    def offset(zone: ZoneInfo, *args: int) -> timedelta | None:
        return utc(*args).astimezone(zone).utcoffset()

    assert offset(BERLIN, 2026, 3, 29, 0, 59) == timedelta(hours=1)
    assert offset(BERLIN, 2026, 3, 29, 1, 0) == timedelta(hours=2)
    assert offset(BERLIN, 2026, 10, 25, 0, 59) == timedelta(hours=2)
    assert offset(BERLIN, 2026, 10, 25, 1, 0) == timedelta(hours=1)
    assert offset(NEW_YORK, 2026, 3, 8, 6, 59) == timedelta(hours=-5)
    assert offset(NEW_YORK, 2026, 3, 8, 7, 0) == timedelta(hours=-4)
    assert offset(NEW_YORK, 2026, 11, 1, 5, 59) == timedelta(hours=-4)
    assert offset(NEW_YORK, 2026, 11, 1, 6, 0) == timedelta(hours=-5)


def test_every_30_minutes_in_berlin_has_46_runs_on_the_23_hour_spring_day() -> None:
    s = Schedule.parse("*/30 * * * *", tz="Europe/Berlin")
    # local 2026-03-29 00:00 CET .. 2026-03-30 00:00 CEST
    runs = list(s.occurrences(utc(2026, 3, 28, 22, 59), utc(2026, 3, 29, 21, 59)))
    assert len(runs) == 46
    assert len(set(runs)) == 46
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(runs))
    assert not [r for r in runs if r.astimezone(BERLIN).hour == 2]  # 02:xx does not exist
    assert runs[0] == utc(2026, 3, 28, 23, 0)


def test_every_30_minutes_in_berlin_has_50_runs_on_the_25_hour_autumn_day() -> None:
    s = Schedule.parse("*/30 * * * *", tz="Europe/Berlin")
    # local 2026-10-25 00:00 CEST .. 2026-10-26 00:00 CET
    runs = list(s.occurrences(utc(2026, 10, 24, 21, 59), utc(2026, 10, 25, 22, 59)))
    assert len(runs) == 50
    assert len(set(runs)) == 50
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(runs))
    twice = [r for r in runs if r.astimezone(BERLIN).hour == 2]
    assert twice == [
        utc(2026, 10, 25, 0, 0),  # 02:00 CEST
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 0),  # 02:00 CET
        utc(2026, 10, 25, 1, 30),
    ]


def test_a_run_in_the_skipped_spring_hour_runs_once_right_after_the_gap_in_berlin() -> None:
    s = Schedule.parse("30 2 * * *", tz="Europe/Berlin")
    runs = list(s.occurrences(utc(2026, 3, 26), utc(2026, 4, 1)))
    assert runs == [
        utc(2026, 3, 26, 1, 30),  # 02:30 CET
        utc(2026, 3, 27, 1, 30),
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 29, 1, 0),  # 02:30 does not exist: 03:00 CEST, once
        utc(2026, 3, 30, 0, 30),  # 02:30 CEST
        utc(2026, 3, 31, 0, 30),
    ]


def test_a_run_in_the_repeated_autumn_hour_runs_once_in_berlin() -> None:
    s = Schedule.parse("30 2 * * *", tz="Europe/Berlin")
    runs = list(s.occurrences(utc(2026, 10, 23), utc(2026, 10, 28)))
    assert runs == [
        utc(2026, 10, 23, 0, 30),
        utc(2026, 10, 24, 0, 30),
        utc(2026, 10, 25, 0, 30),  # the first 02:30 (CEST) only
        utc(2026, 10, 26, 1, 30),  # 02:30 CET
        utc(2026, 10, 27, 1, 30),
    ]


def test_starting_inside_the_repeated_hour_does_not_go_back_or_repeat() -> None:
    s = Schedule.parse("30 2 * * *", tz="Europe/Berlin")
    # 01:15 UTC is the second 02:15 (CET); today's 02:30 already ran at 00:30 UTC.
    assert s.next_after(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 26, 1, 30)
    assert s.next_after(utc(2026, 10, 25, 0, 15)) == utc(2026, 10, 25, 0, 30)


def test_new_york_daily_runs_across_both_2026_transitions() -> None:
    s = Schedule.parse("30 2 * * *", tz="America/New_York")
    spring = list(s.occurrences(utc(2026, 3, 7), utc(2026, 3, 10)))
    assert spring == [
        utc(2026, 3, 7, 7, 30),  # 02:30 EST
        utc(2026, 3, 8, 7, 0),  # 02:30 does not exist: 03:00 EDT
        utc(2026, 3, 9, 6, 30),  # 02:30 EDT
    ]
    autumn = list(s.occurrences(utc(2026, 10, 31), utc(2026, 11, 3)))
    assert autumn == [utc(2026, 10, 31, 6, 30), utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)]
    ambiguous = Schedule.parse("30 1 * * *", tz="America/New_York")
    assert list(ambiguous.occurrences(utc(2026, 11, 1), utc(2026, 11, 2))) == [
        utc(2026, 11, 1, 5, 30)  # 01:30 EDT; the 01:30 EST an hour later does not run
    ]


def test_every_30_minutes_in_new_york_has_46_and_50_runs_on_transition_days() -> None:
    s = Schedule.parse("*/30 * * * *", tz="America/New_York")
    spring = list(s.occurrences(utc(2026, 3, 8, 4, 59), utc(2026, 3, 9, 3, 59)))
    autumn = list(s.occurrences(utc(2026, 11, 1, 3, 59), utc(2026, 11, 2, 4, 59)))
    assert (len(spring), len(set(spring))) == (46, 46)
    assert (len(autumn), len(set(autumn))) == (50, 50)


@pytest.mark.parametrize(
    ("cron", "tz", "start"),
    [
        ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 27)),
        ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 23)),
        ("*/30 * * * *", "Europe/Berlin", utc(2026, 10, 24, 20)),
        ("0,30 1-3 * * *", "Europe/Berlin", utc(2026, 10, 23)),
        ("0,30 1-3 * * *", "Europe/Berlin", utc(2026, 3, 27)),
        ("30 1 * * *", "America/New_York", utc(2026, 10, 30)),
        ("15 2 * * SUN", "America/New_York", utc(2026, 3, 1)),
    ],
)
def test_next_after_from_any_instant_agrees_with_the_chained_sequence(
    cron: str, tz: str, start: datetime
) -> None:
    s = Schedule.parse(cron, tz=tz)
    seq = chain(s, start, 40)
    assert seq == sorted(set(seq))  # strictly ascending, no duplicates
    t = start
    while t < seq[-1]:
        expected = next(p for p in seq if p > t)
        assert s.next_after(t) == expected, t
        t += timedelta(minutes=7, seconds=13)


def test_occurrences_excludes_after_and_includes_until() -> None:
    s = Schedule.parse("*/15 * * * *")
    runs = list(s.occurrences(utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 10, 45)))
    assert runs == [utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 30), utc(2026, 1, 1, 10, 45)]
    assert list(s.occurrences(utc(2026, 1, 1, 11), utc(2026, 1, 1, 10))) == []


def test_every_occurrence_round_trips_through_next_after_and_matches_local_fields() -> None:
    s = Schedule.parse("5 9 * * MON-FRI", tz="Europe/Berlin")
    runs = list(s.occurrences(utc(2026, 3, 1), utc(2026, 5, 1)))
    assert len(runs) == 44  # weekdays in March (22) and April (22) 2026
    for prev, run in zip([utc(2026, 3, 1), *runs], runs, strict=False):
        assert s.next_after(run - timedelta(microseconds=1)) == run
        assert s.next_after(prev) == run
        local = run.astimezone(BERLIN)
        assert (local.hour, local.minute, local.isoweekday() <= 5) == (9, 5, True)


def test_results_are_utc_even_for_aware_input_in_another_zone() -> None:
    s = Schedule.parse("0 12 * * *", tz="Europe/Berlin")
    nxt = s.next_after(datetime(2026, 6, 1, 8, 0, tzinfo=BERLIN))
    assert nxt == utc(2026, 6, 1, 10, 0)
    assert nxt.tzinfo is UTC


def test_cron_macros_are_accepted_and_normalised() -> None:
    assert Schedule.parse("@daily").cron == "0 0 * * *"
    assert Schedule.parse("  */5   *  * * * ").cron == "*/5 * * * *"
    assert Schedule.parse("@hourly").next_after(utc(2026, 1, 1, 0, 30)) == utc(2026, 1, 1, 1)


# -- every ----------------------------------------------------------------------------------------


def test_every_90s_is_aligned_to_the_unix_epoch() -> None:
    s = Schedule.parse(every="90s")
    assert s.every == timedelta(seconds=90)
    assert s.next_after(utc(1970, 1, 1)) == utc(1970, 1, 1, 0, 1, 30)
    runs = list(s.occurrences(utc(2026, 5, 5, 13, 0, 7), utc(2026, 5, 5, 13, 10)))
    assert all(int(r.timestamp()) % 90 == 0 for r in runs)
    assert runs[0] == utc(2026, 5, 5, 13, 1, 30)  # 1777986090 = 90 * 19755401
    assert runs[1:3] == [utc(2026, 5, 5, 13, 3), utc(2026, 5, 5, 13, 4, 30)]
    assert len(runs) == 6  # ... 13:09:00; 13:10:30 is past until
    assert s.next_after(utc(2026, 5, 5, 12, 59, 59)) == utc(2026, 5, 5, 13, 0)  # 1777986000


def test_two_replicas_starting_at_different_times_agree_on_every_occurrence() -> None:
    a = Schedule.parse(every="7m")
    b = Schedule.parse(every=timedelta(minutes=7))
    first = set(a.occurrences(utc(2026, 2, 1, 9, 0, 1), utc(2026, 2, 1, 12)))
    second = set(b.occurrences(utc(2026, 2, 1, 10, 33, 59), utc(2026, 2, 1, 12)))
    assert second and second <= first
    assert a.next_after(utc(2026, 2, 1, 10, 33, 59, 999999)) == min(second)


def test_every_next_after_is_strictly_after_an_exact_occurrence() -> None:
    s = Schedule.parse(every="5m")
    assert s.next_after(utc(2026, 1, 1, 10, 5)) == utc(2026, 1, 1, 10, 10)
    assert s.next_after(utc(2026, 1, 1, 10, 4, 59, 999999)) == utc(2026, 1, 1, 10, 5)


@pytest.mark.parametrize(
    ("every", "cron"),
    [
        ("1m", "* * * * *"),
        ("15m", "*/15 * * * *"),
        ("1h", "0 * * * *"),
        ("6h", "0 */6 * * *"),
        ("1d", "0 0 * * *"),
        ("7d", "0 0 * * 4"),
        ("90s", None),
        ("7m", None),
        ("2d", None),
    ],
)
def test_every_has_a_cron_equivalent_only_when_it_fires_at_the_same_instants(
    every: str, cron: str | None
) -> None:
    s = Schedule.parse(every=every)
    assert s.cron_equivalent() == cron
    if cron is not None:
        window = (utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 29))
        assert list(Schedule.parse(cron).occurrences(*window)) == list(s.occurrences(*window))


# -- catch-up -------------------------------------------------------------------------------------

T10 = utc(2026, 1, 1, 10, 0)


def at(minute: int, second: int = 0) -> datetime:
    return T10 + timedelta(minutes=minute, seconds=second)


def ten_minutely(catch_up: str, window: str | None = None) -> Schedule:
    return Schedule.parse("*/10 * * * *", catch_up=catch_up, window=window)


GRACE = timedelta(minutes=1)


def test_skip_fires_nothing_when_the_latest_occurrence_is_older_than_grace() -> None:
    due = ten_minutely("skip").due(at(0), at(35, 30), grace=GRACE)
    assert due == Due(fire=[], missed=[at(10), at(20), at(30)])


def test_skip_fires_the_latest_occurrence_within_grace_and_misses_the_rest() -> None:
    due = ten_minutely("skip").due(at(0), at(30, 40), grace=GRACE)
    assert due == Due(fire=[at(30)], missed=[at(10), at(20)])
    assert ten_minutely("skip").due(at(20), at(31), grace=GRACE).fire == [at(30)]  # boundary


def test_latest_fires_the_most_recent_however_late() -> None:
    due = ten_minutely("latest").due(at(0), at(35, 30), grace=GRACE)
    assert due == Due(fire=[at(30)], missed=[at(10), at(20)])


def test_all_fires_everything_inside_the_window_and_misses_older() -> None:
    due = ten_minutely("all", window="25m").due(at(0), at(35, 30), grace=GRACE)
    assert due == Due(fire=[at(20), at(30)], missed=[at(10)])
    due = ten_minutely("all", window="25m").due(at(0), at(35), grace=GRACE)
    assert due == Due(fire=[at(10), at(20), at(30)], missed=[])  # now - window == 10:10
    due = ten_minutely("all").due(at(0), at(35, 30), grace=GRACE)
    assert due == Due(fire=[at(10), at(20), at(30)])


def test_a_task_that_never_ran_fires_only_a_recent_occurrence_and_no_history() -> None:
    for policy in ("skip", "latest", "all"):
        s = ten_minutely(policy)
        assert s.due(None, at(30, 40), grace=GRACE) == Due(fire=[at(30)])
        assert s.due(None, at(35), grace=GRACE) == Due()


def test_a_task_that_never_ran_still_fires_exactly_at_the_grace_boundary() -> None:
    assert ten_minutely("latest").due(None, at(31), grace=GRACE) == Due(fire=[at(30)])
    assert ten_minutely("latest").due(None, at(31, 1), grace=GRACE) == Due()


def test_a_years_long_outage_is_decided_without_walking_every_missed_minute() -> None:
    s = Schedule.parse("* * * * *", catch_up="latest")
    started = time.perf_counter()
    due = s.due(utc(2020, 1, 1), utc(2026, 1, 1, 0, 0, 30), grace=GRACE, max_missed=10)
    missed = s.missed_since(utc(2020, 1, 1), utc(2026, 1, 1), GRACE, limit=10)
    assert time.perf_counter() - started < 2  # walking 3 million minutes takes far longer
    assert due.fire == [utc(2026, 1, 1)] and len(due.missed) == 10 and due.missed_truncated
    assert missed[-1] == utc(2025, 12, 31, 23, 58) and len(missed) == 10


def test_nothing_is_due_when_the_last_run_is_the_latest_occurrence() -> None:
    for policy in ("skip", "latest", "all"):
        assert ten_minutely(policy).due(at(30), at(39), grace=GRACE) == Due()
        assert ten_minutely(policy).due(at(40), at(39), grace=GRACE) == Due()  # clock skew


def test_a_month_long_outage_reports_a_bounded_list_of_missed_runs() -> None:
    s = Schedule.parse("* * * * *", catch_up="latest")
    now = utc(2026, 2, 1, 12, 0, 30)
    due = s.due(utc(2026, 1, 1), now, grace=GRACE, max_missed=3)
    assert due.fire == [utc(2026, 2, 1, 12, 0)]
    assert due.missed == [utc(2026, 2, 1, 11, 57), utc(2026, 2, 1, 11, 58), utc(2026, 2, 1, 11, 59)]
    assert due.missed_truncated
    skipped = Schedule.parse("* * * * *", catch_up="skip").due(
        utc(2026, 2, 1, 11, 56),
        now + timedelta(minutes=5),
        grace=timedelta(seconds=10),
        max_missed=2,
    )
    assert skipped == Due(
        missed=[utc(2026, 2, 1, 12, 4), utc(2026, 2, 1, 12, 5)], missed_truncated=True
    )


def test_due_across_the_berlin_spring_gap_fires_the_shifted_run() -> None:
    s = Schedule.parse("30 2 * * *", tz="Europe/Berlin", catch_up="skip")
    due = s.due(utc(2026, 3, 28, 1, 30), utc(2026, 3, 29, 1, 0, 20), grace=GRACE)
    assert due == Due(fire=[utc(2026, 3, 29, 1, 0)])


def test_missed_since_lists_runs_whose_grace_ran_out_without_a_tick() -> None:
    s = ten_minutely("latest")
    assert s.missed_since(at(0), at(31), timedelta(minutes=2)) == [at(10), at(20)]
    assert s.missed_since(at(0), at(32, 1), timedelta(minutes=2)) == [at(10), at(20), at(30)]
    assert s.missed_since(at(0), at(32, 1), timedelta(minutes=2), limit=1) == [at(30)]
    assert s.missed_since(at(25), at(31), timedelta(minutes=2)) == []
    assert s.missed_since(None, at(31), timedelta(minutes=2)) == []


def test_due_results_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Due().missed_truncated = True  # type: ignore[misc]


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "words"),
    [
        ("61 * * * *", "bad minute"),
        ("* * * *", "5 fields"),
        ("0 0 * * * *", "5 fields"),
        ("0 0 31 2 *", "day-of-month"),
        ("*/0 * * * *", "bad minute"),
        ("@reboot", "5 fields"),
    ],
)
def test_a_bad_cron_is_refused_with_what_is_accepted(cron: str, words: str) -> None:
    with pytest.raises(ScheduleError, match=words) as info:
        Schedule.parse(cron)
    assert repr(cron) in str(info.value)
    assert "'*/5 * * * *'" in str(info.value)


def test_an_unknown_time_zone_is_refused() -> None:
    for tz in ("Mars/Olympus", "europe/berlin", "localtime", "", "../etc/passwd"):
        with pytest.raises(ScheduleError, match="IANA"):
            Schedule.parse("* * * * *", tz=tz)


def test_cron_and_every_together_or_neither_are_refused() -> None:
    with pytest.raises(ScheduleError, match="exactly one"):
        Schedule.parse("* * * * *", every="5m")
    with pytest.raises(ScheduleError, match="exactly one"):
        Schedule.parse()
    with pytest.raises(ScheduleError, match="exactly one"):
        Schedule(cron="* * * * *", every=timedelta(minutes=5))


@pytest.mark.parametrize("every", ["0s", "0m", timedelta(0), timedelta(seconds=-5)])
def test_every_of_zero_or_less_is_refused(every: str | timedelta) -> None:
    with pytest.raises(ScheduleError, match="greater than zero"):
        Schedule.parse(every=every)


def test_bad_every_values_say_what_is_accepted() -> None:
    with pytest.raises(ScheduleError) as info:
        Schedule.parse(every="5x")
    assert str(info.value).startswith("every='5x': use a number with s, m, h or d, e.g. '5m'")
    for bad in ("1.5h", "-5m", "5", "m"):
        with pytest.raises(ScheduleError, match=r"e\.g\. '5m'"):
            Schedule.parse(every=bad)
    with pytest.raises(ScheduleError, match="whole number of seconds"):
        Schedule.parse(every=timedelta(milliseconds=1500))
    with pytest.raises(ScheduleError, match="aligned to the Unix epoch"):
        Schedule.parse(every="1d", tz="Europe/Berlin")


def test_bad_catch_up_window_and_grace_are_refused() -> None:
    with pytest.raises(ScheduleError, match="'skip', 'latest' or 'all'"):
        Schedule.parse("* * * * *", catch_up="sometimes")
    with pytest.raises(ScheduleError, match="window='0m'"):
        Schedule.parse("* * * * *", window="0m")
    with pytest.raises(ScheduleError, match="grace"):
        Schedule.parse("* * * * *").due(None, T10, grace=timedelta(seconds=-1))


def test_naive_datetimes_are_refused_everywhere() -> None:
    s = Schedule.parse("* * * * *")
    naive = datetime(2026, 1, 1, 10, 0)
    calls: list[Callable[[], object]] = [
        lambda: s.next_after(naive),
        lambda: list(s.occurrences(naive, T10)),
        lambda: list(s.occurrences(T10, naive)),
        lambda: s.due(naive, T10, grace=GRACE),
        lambda: s.due(None, naive, grace=GRACE),
        lambda: s.missed_since(naive, T10, GRACE),
    ]
    for call in calls:
        with pytest.raises(ScheduleError, match="naive"):
            call()
    assert issubclass(ScheduleError, ValueError)


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ScheduleError, match="bad hour"):
        Schedule(cron="0 25 * * *")
    assert Schedule(cron="0 3 * * *", tz="Europe/Berlin").catch_up == "latest"


def test_durations_parse_and_format_both_ways() -> None:
    assert parse_duration("every", "1h30m") == timedelta(minutes=90)
    assert parse_duration("every", " 2D ") == timedelta(days=2)
    assert format_duration(timedelta(seconds=90)) == "1m30s"
    assert format_duration(timedelta(days=1, hours=2)) == "1d2h"
    assert str(Schedule.parse(every="90s")) == "every 1m30s"
    assert (
        str(Schedule.parse("0 3 * * *", tz="Europe/Berlin")) == "cron '0 3 * * *' in Europe/Berlin"
    )
