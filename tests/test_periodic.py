"""Periodic tasks: one job per occurrence, however many ticks arrive; catch-up policies;
DST; missed occurrences noticed. On both stores, with a fake clock."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import FakeClock
from oncely import ConfigError, Job, JobState, Oncely
from oncely.cli import main as cli

sys.path.insert(0, str(Path(__file__).parent / "apps"))
import periodic_app

T0 = datetime(2026, 11, 29, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def jobs(store_url: str, clock: FakeClock) -> Iterator[Oncely]:
    app = Oncely(store_url, clock=clock, environ={}, schedule_grace=timedelta(minutes=2))
    yield app
    app.close()


def occurrences(app: Oncely, task: str) -> list[datetime]:
    found = [j.scheduled_for for j in app.list(task=task, limit=1000)]
    assert all(f is not None for f in found)
    return sorted(f for f in found if f is not None)


def test_a_tick_enqueues_each_due_occurrence_once_and_the_job_knows_its_tick(
    jobs: Oncely, clock: FakeClock
) -> None:
    seen: list[datetime | None] = []

    @jobs.periodic("*/5 * * * *")
    def cleanup(*, job: Job) -> None:
        seen.append(job.scheduled_for)

    first = jobs.tick()
    assert [e["scheduled_for"] for e in first.enqueued] == ["2026-11-29T12:00:00+00:00"]
    assert jobs.tick().enqueued == []  # the same tick again: nothing new
    clock.advance(5 * 60)
    assert len(jobs.tick().enqueued) == 1
    jobs.process(budget=5)
    assert seen == [datetime(2026, 11, 29, 12, 0, tzinfo=UTC),
                    datetime(2026, 11, 29, 12, 5, tzinfo=UTC)]
    job = jobs.list(task="cleanup")[0]
    assert job.key == "periodic:cleanup@2026-11-29T12:05:00+00:00"


@pytest.mark.parametrize(("policy", "fired", "missed"), [
    ("latest", ["12:20"], ["12:05", "12:10", "12:15"]),
    ("skip", [], ["12:05", "12:10", "12:15", "12:20"]),
    ("all", ["12:05", "12:10", "12:15", "12:20"], []),
])
def test_missed_occurrences_follow_the_catch_up_policy_and_are_recorded(
    jobs: Oncely, clock: FakeClock, policy: str, fired: list[str], missed: list[str]
) -> None:
    @jobs.periodic("*/5 * * * *", catch_up=policy, window="1h")
    def cleanup() -> None: ...

    jobs.tick()  # fires 12:00
    clock.advance(23 * 60)  # the scheduler was down: 12:05 .. 12:20 went by without a tick
    report = jobs.tick()
    assert [e["scheduled_for"][11:16] for e in report.enqueued] == fired
    assert [m["scheduled_for"][11:16] for m in report.missed] == missed
    assert [o.strftime("%H:%M") for o in occurrences(jobs, "cleanup")] == ["12:00", *fired]
    assert jobs.tick().enqueued == [] and jobs.tick().missed == []


@pytest.mark.parametrize(("day", "hours", "half_hours"), [
    # Europe/Berlin falls back on 2026-10-25 at 03:00 CEST -> 02:00 CET: 02:00-03:00
    # happens twice, the local day has 25 hours.
    (datetime(2026, 10, 24, 22, 0, tzinfo=UTC), 25, 50),
    # ... and springs forward on 2026-03-29 at 02:00 CET -> 03:00 CEST: 23 hours, and
    # 02:30 does not exist (cron runs it once, right after the gap).
    (datetime(2026, 3, 28, 23, 0, tzinfo=UTC), 23, 46),
], ids=["fall-back", "spring-forward"])
def test_ticks_across_a_dst_change_fire_every_occurrence_once(
    store_url: str, day: datetime, hours: int, half_hours: int
) -> None:
    clock = FakeClock(day)
    app = Oncely(store_url, clock=clock, environ={}, schedule_grace=timedelta(minutes=20))

    @app.periodic("*/30 * * * *", tz="Europe/Berlin", catch_up="all")
    def half_hourly() -> None: ...

    @app.periodic("30 2 * * *", tz="Europe/Berlin", catch_up="all")
    def nightly() -> None: ...

    for _ in range(hours * 4 + 4):  # a tick every 15 minutes for the local day and a bit
        app.tick()
        clock.advance(15 * 60)
    fired = occurrences(app, "half_hourly")
    assert len(fired) == len(set(fired))
    assert len([o for o in fired if day <= o < day + timedelta(hours=hours)]) == half_hours
    assert len(occurrences(app, "nightly")) == 1
    app.close()


def test_a_clock_running_backwards_fires_nothing_again(jobs: Oncely, clock: FakeClock) -> None:
    @jobs.periodic("*/5 * * * *")
    def cleanup() -> None: ...

    clock.advance(10 * 60)
    assert len(jobs.tick().enqueued) == 1  # 12:10
    clock.advance(-10 * 60)  # a replica whose clock is 10 minutes behind
    assert jobs.tick().enqueued == []
    assert [o.strftime("%H:%M") for o in occurrences(jobs, "cleanup")] == ["12:10"]


def test_run_occurrence_runs_the_named_occurrence_once(jobs: Oncely, clock: FakeClock) -> None:
    @jobs.periodic("0 * * * *")
    def hourly() -> None: ...

    at = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    first = jobs._portal.run(jobs.arun_occurrence("hourly", at))
    again = jobs._portal.run(jobs.arun_occurrence("hourly", at + timedelta(minutes=30)))
    assert len(first.enqueued) == 1 and again.enqueued == []  # 11:30 means the 11:00 run
    latest = jobs._portal.run(jobs.arun_occurrence("hourly"))
    assert [e["scheduled_for"] for e in latest.enqueued] == ["2026-11-29T12:00:00+00:00"]


def test_paused_tasks_record_occurrences_without_jobs_and_run_now_adds_one(
    jobs: Oncely, clock: FakeClock
) -> None:
    @jobs.periodic("*/5 * * * *")
    def cleanup() -> None: ...

    jobs._portal.run(jobs.aset_paused("cleanup", True))
    report = jobs.tick()
    assert report.paused == ["cleanup"] and report.enqueued == []
    [row] = jobs.schedules()
    assert row["paused"] and row["missed"] == []
    jobs._portal.run(jobs.aset_paused("cleanup", False))
    clock.advance(5 * 60)
    assert len(jobs.tick().enqueued) == 1
    extra = jobs._portal.run(jobs.arun_now("cleanup"))
    assert extra.state is JobState.PENDING and extra.scheduled_for == clock.now


def test_the_schedules_report_notices_when_ticks_stop(jobs: Oncely, clock: FakeClock) -> None:
    @jobs.periodic("*/5 * * * *")
    def cleanup() -> None: ...

    jobs.tick()
    [row] = jobs.schedules()
    assert row["missed"] == [] and row["last_occurrence"] == "2026-11-29T12:00:00+00:00"
    assert row["next_occurrence"] == "2026-11-29T12:05:00+00:00"
    clock.advance(6 * 60)  # 12:05 is due, but within the 2-minute grace
    assert jobs.schedules()[0]["missed"] == []
    clock.advance(2 * 60)  # 12:08:30: 12:05 is past its grace and no tick came
    assert jobs.schedules()[0]["missed"] == ["2026-11-29T12:05:00+00:00"]
    jobs.tick()
    assert jobs.schedules()[0]["missed"] == []


def test_bad_periodic_declarations_are_refused(jobs: Oncely) -> None:
    with pytest.raises(ConfigError, match="every"):
        jobs.periodic(every="5x")
    with pytest.raises(ConfigError, match="must take no arguments"):

        @jobs.periodic("* * * * *")
        def needs_args(user_id: int) -> None: ...

    assert "needs_args" not in jobs.tasks


def test_the_cli_shows_last_run_next_run_and_misses_and_pauses(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    periodic_app.clock.now = T0
    argv = ["--app", "periodic_app:jobs", "--store", store_url]
    assert cli(["tick", *argv]) == 0
    capsys.readouterr()
    periodic_app.clock.now = T0 + timedelta(minutes=18)
    assert cli(["schedules", *argv]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["TASK", "SCHEDULE", "CATCH-UP", "STATE", "LAST", "RUN", "NEXT",
                              "RUN", "MISSED"]
    cleanup = next(line for line in out if line.startswith("cleanup_expired_sessions"))
    assert "2026-11-29 12:00:00" in cleanup and "2026-11-29 12:20:00" in cleanup
    assert "3 (last 2026-11-29 12:15:00)" in cleanup
    assert cli(["schedules", "pause", "hourly_report", *argv]) == 0
    assert cli(["schedules", "--json", *argv]) == 0
    rows = {r["task"]: r for r in json.loads(capsys.readouterr().out.splitlines()[-1])}
    assert rows["hourly_report"]["paused"] is True
    assert cli(["schedules", "run-now", "cleanup_expired_sessions", *argv]) == 0
    assert "enqueued job" in capsys.readouterr().out
    assert cli(["schedules", "pause", "nope", *argv]) == 1
    assert "unknown task 'nope'" in capsys.readouterr().err


def test_oncely_export_prints_the_declared_schedules_for_a_platform(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    argv = ["--app", "periodic_app:jobs", "--store", f"sqlite:///{tmp_path}/x.db"]
    assert cli(["export", "k8s-cronjob", "--mode", "per-task", "--target",
                "https://app.example", *argv]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    crons = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "CronJob"}
    assert len(crons) == 2
    berlin = next(s for n, s in crons.items() if "cleanup" in n)
    assert berlin["schedule"] == "*/5 * * * *" and berlin["timeZone"] == "Europe/Berlin"
    assert berlin["concurrencyPolicy"] == "Forbid"
    assert cli(["export", "gcloud", "--target", "https://app.example", *argv]) == 0
    script = capsys.readouterr().out
    assert "gcloud scheduler jobs create http" in script and "/jobs/tick" in script
    assert cli(["export", "github-actions", "--mode", "per-task", "--target",
                "https://app.example", *argv]) == 0
    workflow = yaml.safe_load(capsys.readouterr().out)
    # GitHub's schedule is UTC: "*/5" in Berlin is the same instants in UTC
    triggers = workflow.get("on") or workflow[True]  # YAML 1.1 reads a bare on as True
    assert {c["cron"] for c in triggers["schedule"]} == {"*/5 * * * *", "0 * * * *"}
