"""Tests for oncely.export: every output is parsed back (YAML, shell words) and checked."""

from __future__ import annotations

import re
import shlex
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from oncely.export import PLATFORMS, ExportError, ExportOptions, aws_cron, export
from oncely.schedule import Schedule

TARGET = "https://app.example.com"
BERLIN_5M = ("sync", Schedule.parse("*/5 * * * *", tz="Europe/Berlin"))
NIGHTLY = ("nightly_report", Schedule.parse("30 2 * * *", tz="Europe/Berlin"))
WEEKDAYS = ("digest", Schedule.parse("0 9 * * 1-5", tz="Asia/Tokyo", catch_up="skip"))


def per_task(**kw: Any) -> ExportOptions:
    return ExportOptions(target=TARGET, mode="per-task", **kw)


def resources(text: str, kind: str) -> dict[str, dict[str, Any]]:
    template = yaml.safe_load(text)
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def aws_weekdays(field: str) -> set[int]:
    out: set[int] = set()
    for part in field.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def flags(words: list[str]) -> dict[str, str]:
    return dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)


# -- EventBridge ----------------------------------------------------------------------------------


def test_eventbridge_runs_every_5_minutes_in_berlin_as_aws_cron_with_its_time_zone() -> None:
    text = export("eventbridge", [BERLIN_5M], per_task())
    schedule = resources(text, "AWS::Scheduler::Schedule")["ScheduleSync"]["Properties"]
    assert schedule["ScheduleExpression"] == "cron(0/5 * * * ? *)"
    assert schedule["ScheduleExpressionTimezone"] == "Europe/Berlin"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}  # the string, not YAML's false
    target = schedule["Target"]
    assert target["Arn"] == {"Fn::GetAtt": ["Bus", "Arn"]}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600}
    assert target["EventBridgeParameters"]["DetailType"] == "oncely.trigger"
    assert yaml.safe_load(target["Input"]) == {"task": "sync"}


def test_eventbridge_routes_the_event_through_a_rule_to_an_authenticated_api_destination() -> None:
    text = export("eventbridge", [BERLIN_5M, NIGHTLY], per_task())
    template = yaml.safe_load(text)
    res = template["Resources"]
    assert template["Parameters"]["OncelyToken"]["NoEcho"] is True
    auth = res["Connection"]["Properties"]["AuthParameters"]["ApiKeyAuthParameters"]
    assert auth == {
        "ApiKeyName": "Authorization",
        "ApiKeyValue": {"Fn::Sub": "Bearer ${OncelyToken}"},
    }
    destination = res["Destination"]["Properties"]
    assert destination["InvocationEndpoint"] == f"{TARGET}/jobs/run/*"
    assert destination["HttpMethod"] == "POST"
    assert destination["ConnectionArn"] == {"Fn::GetAtt": ["Connection", "Arn"]}
    rules = resources(text, "AWS::Events::Rule")
    by_task = {r["Properties"]["EventPattern"]["detail"]["task"][0]: r for r in rules.values()}
    assert set(by_task) == {"sync", "nightly_report"}
    (call,) = by_task["nightly_report"]["Properties"]["Targets"]
    assert call["Arn"] == {"Fn::GetAtt": ["Destination", "Arn"]}
    assert call["HttpParameters"] == {"PathParameterValues": ["nightly_report"]}
    assert by_task["nightly_report"]["Properties"]["EventBusName"] == {"Ref": "Bus"}
    trust = res["SchedulerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"Service": "scheduler.amazonaws.com"}
    policy = res["RuleRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]
    assert policy["Action"] == "events:InvokeApiDestination"
    assert "cannot target API destinations" in text  # the comment that explains the design


def test_eventbridge_heartbeat_posts_the_tick_every_minute_in_utc() -> None:
    text = export("eventbridge", [NIGHTLY], ExportOptions(target=TARGET))
    (schedule,) = resources(text, "AWS::Scheduler::Schedule").values()
    assert schedule["Properties"]["ScheduleExpression"] == "cron(* * * * ? *)"
    assert schedule["Properties"]["ScheduleExpressionTimezone"] == "UTC"
    destination = yaml.safe_load(text)["Resources"]["Destination"]["Properties"]
    assert destination["InvocationEndpoint"] == f"{TARGET}/jobs/tick"
    (rule,) = resources(text, "AWS::Events::Rule").values()
    assert "HttpParameters" not in rule["Properties"]["Targets"][0]


def test_eventbridge_keeps_odd_task_names_intact_and_logical_ids_distinct() -> None:
    odd = 'report: "Q1" #1 ü'
    tasks = [(odd, Schedule.parse("@daily")), ("Report", Schedule.parse("@daily"))]
    tasks.append(("report", Schedule.parse("@hourly")))
    text = export("eventbridge", tasks, per_task())
    rules = resources(text, "AWS::Events::Rule")
    assert len(rules) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9]+", key) for key in rules)
    patterns = sorted(r["Properties"]["EventPattern"]["detail"]["task"][0] for r in rules.values())
    assert patterns == sorted([odd, "Report", "report"])
    paths = [
        r["Properties"]["Targets"][0]["HttpParameters"]["PathParameterValues"][0]
        for r in rules.values()
    ]
    assert "report%3A%20%22Q1%22%20%231%20%C3%BC" in paths


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("*/5 * * * *", "cron(0/5 * * * ? *)"),
        ("0 9 * * 1-5", "cron(0 9 ? * 2-6 *)"),
        ("0 9 * * MON-FRI", "cron(0 9 ? * 2-6 *)"),
        ("0 0 * * 0", "cron(0 0 ? * 1 *)"),
        ("0 0 * * 7", "cron(0 0 ? * 1 *)"),
        ("0 0 * * SUN", "cron(0 0 ? * 1 *)"),
        ("0 0 * * 6,0", "cron(0 0 ? * 1,7 *)"),
        ("0 0 * * 5-7", "cron(0 0 ? * 1,6,7 *)"),
        ("0 0 * * */2", "cron(0 0 ? * 1,3,5,7 *)"),  # AWS has no / in day-of-week
        ("30 2 1 * *", "cron(30 2 1 * ? *)"),
        ("0 */6 * * *", "cron(0 0/6 * * ? *)"),
        ("10-30/10 * * * *", "cron(10,20,30 * * * ? *)"),
        ("0 0 L * *", "cron(0 0 L * ? *)"),
        ("0 0 * * 5L", "cron(0 0 ? * 6L *)"),
        ("0 0 * * MON#2", "cron(0 0 ? * 2#2 *)"),
        ("0 0 1-31 * 1", "cron(0 0 * * ? *)"),  # cron ORs the two day fields: every day
        ("0 12 * JAN,JUL *", "cron(0 12 * JAN,JUL ? *)"),
    ],
)
def test_aws_cron_converts_five_field_cron(cron: str, expected: str) -> None:
    assert aws_cron(cron) == expected


@pytest.mark.parametrize("dow", ["1-5", "0", "6,0", "5-7", "*/2", "TUE,THU"])
def test_aws_day_of_week_numbers_select_the_same_days_cron_does(dow: str) -> None:
    runs = Schedule.parse(f"0 12 * * {dow}").occurrences(
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC)
    )
    sunday_is_one = {r.isoweekday() % 7 + 1 for r in runs}
    field = aws_cron(f"0 12 * * {dow}").split()[4]
    assert aws_weekdays(field.replace("TUE", "3").replace("THU", "5")) == sunday_is_one


def test_aws_cron_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ExportError, match="both day-of-month and day-of-week"):
        aws_cron("0 0 1 * 1")
    with pytest.raises(ExportError, match="LW"):
        aws_cron("0 0 LW * *")


def test_eventbridge_needs_an_https_target() -> None:
    with pytest.raises(ExportError, match="https"):
        export("eventbridge", [NIGHTLY], ExportOptions(target="http://app.internal"))


# -- Kubernetes -----------------------------------------------------------------------------------


def test_k8s_cronjobs_run_curl_with_the_token_from_the_secret() -> None:
    docs = list(
        yaml.safe_load_all(export("k8s-cronjob", [NIGHTLY, WEEKDAYS], per_task(namespace="prod")))
    )
    secret, *cronjobs = docs
    assert (secret["kind"], secret["type"], secret["metadata"]["namespace"]) == (
        "Secret",
        "Opaque",
        "prod",
    )
    assert set(secret["stringData"]) == {"token"}
    assert [c["kind"] for c in cronjobs] == ["CronJob", "CronJob"]
    nightly, digest = (c["spec"] for c in cronjobs)
    assert cronjobs[0]["apiVersion"] == "batch/v1"
    assert (nightly["schedule"], nightly["timeZone"]) == ("30 2 * * *", "Europe/Berlin")
    assert (digest["schedule"], digest["timeZone"]) == ("0 9 * * 1-5", "Asia/Tokyo")
    assert nightly["concurrencyPolicy"] == "Forbid"
    assert nightly["startingDeadlineSeconds"] == 3600  # catch_up latest: the 1h window
    assert digest["startingDeadlineSeconds"] == 60  # catch_up skip
    pod = nightly["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"].startswith("curlimages/curl:")
    assert container["command"] == ["curl"]
    args = container["args"]
    assert {"--fail", "--retry", "-X", "POST"} <= set(args)
    assert args[args.index("-H") + 1] == "Authorization: Bearer $(ONCELY_TOKEN)"
    assert args[-1] == f"{TARGET}/jobs/run/nightly_report"
    (env,) = container["env"]
    assert env["name"] == "ONCELY_TOKEN"
    assert env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "token"}
    for doc in docs:
        name = doc["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 52, name


def test_k8s_heartbeat_is_one_cronjob_posting_the_tick_every_minute() -> None:
    docs = list(yaml.safe_load_all(export("k8s-cronjob", [NIGHTLY], ExportOptions(target=TARGET))))
    assert [d["kind"] for d in docs] == ["Secret", "CronJob"]
    spec = docs[1]["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("* * * * *", "UTC")
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-1] == f"{TARGET}/jobs/tick"
    assert "namespace" not in docs[1]["metadata"]


def test_k8s_names_of_long_or_odd_tasks_are_valid_and_distinct() -> None:
    names = ["A" * 80, "a" * 80, "x_y", "x-y"]
    docs = list(
        yaml.safe_load_all(
            export("k8s-cronjob", [(n, Schedule.parse("@daily")) for n in names], per_task())
        )
    )
    cron_names = [d["metadata"]["name"] for d in docs[1:]]
    assert len(set(cron_names)) == 4
    assert all(len(n) <= 52 and re.fullmatch(r"[a-z0-9][-a-z0-9]*[a-z0-9]", n) for n in cron_names)


# -- gcloud ---------------------------------------------------------------------------------------


def test_gcloud_script_creates_one_http_job_per_task_with_oidc_and_retries() -> None:
    text = export(
        "gcloud", [NIGHTLY, ("weekly digest's", Schedule.parse("0 9 * * MON"))], per_task()
    )
    jobs = [shlex.split(line) for line in text.splitlines() if line.startswith("gcloud ")]
    assert len(jobs) == 2
    first = jobs[0]
    assert first[:5] == ["gcloud", "scheduler", "jobs", "create", "http"]
    assert first[5] == "oncely-nightly_report"
    f = flags(first)
    assert f["schedule"] == "30 2 * * *"
    assert f["time-zone"] == "Europe/Berlin"
    assert f["uri"] == f"{TARGET}/jobs/run/nightly_report"
    assert f["http-method"] == "POST"
    assert f["oidc-service-account-email"] == "$SA"
    assert f["oidc-token-audience"] == TARGET
    assert f["max-retry-attempts"] == "3"
    assert {"min-backoff", "max-backoff", "attempt-deadline", "location"} <= set(f)
    second = flags(jobs[1])
    assert second["uri"] == f"{TARGET}/jobs/run/weekly%20digest%27s"
    assert second["description"] == "oncely weekly digest's"
    assert re.fullmatch(r"[A-Za-z0-9_-]+", jobs[1][5])


def test_gcloud_script_is_valid_bash_and_asks_for_sa_and_location() -> None:
    text = export("gcloud", [NIGHTLY], ExportOptions(target=TARGET))
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)
    assert ': "${SA:?' in text and ': "${LOCATION:?' in text
    with_location = export(
        "gcloud", [NIGHTLY], ExportOptions(target=TARGET, location="europe-west1")
    )
    assert "--location=europe-west1" in with_location and "${LOCATION" not in with_location
    (job,) = [shlex.split(line) for line in text.splitlines() if line.startswith("gcloud ")]
    assert flags(job)["uri"] == f"{TARGET}/jobs/tick"
    assert flags(job)["schedule"] == "* * * * *"


# -- crontab --------------------------------------------------------------------------------------


def crontab_entries(text: str) -> list[tuple[str, str, list[str]]]:
    """(CRON_TZ in force, schedule, argv) for each entry, undoing cron's \\% escape."""
    tz, out = "", []
    for line in text.splitlines():
        if line.startswith("CRON_TZ="):
            tz = line.split("=", 1)[1]
        elif line and not line.startswith("#"):
            fields = line.split(maxsplit=5)
            out.append((tz, " ".join(fields[:5]), shlex.split(fields[5].replace("\\%", "%"))))
    return out


def test_crontab_sets_cron_tz_per_zone_and_reads_the_token_from_a_file() -> None:
    tasks = [NIGHTLY, ("every_hour", Schedule.parse(every="1h")), ("a b", Schedule.parse("@daily"))]
    text = export("crontab", tasks, per_task(token_file="/run/secrets/oncely"))
    entries = crontab_entries(text)
    assert [(tz, cron) for tz, cron, _ in entries] == [
        ("", "0 * * * *"),  # UTC entries come before any CRON_TZ= line
        ("", "0 0 * * *"),
        ("Europe/Berlin", "30 2 * * *"),
    ]
    for _, _, argv in entries:
        assert argv[0] == "curl" and "--fail" in argv and "--retry" in argv
        assert argv[argv.index("-H") + 1] == "@/run/secrets/oncely"
        assert argv[-1] == ">/dev/null"
    assert [argv[-2] for _, _, argv in entries] == [
        f"{TARGET}/jobs/run/every_hour",
        f"{TARGET}/jobs/run/a%20b",
        f"{TARGET}/jobs/run/nightly_report",
    ]
    assert "\\%20" in text  # cron would turn a bare % into a newline
    assert not [line for line in text.splitlines() if "Bearer" in line and not line.startswith("#")]


# -- GitHub Actions -------------------------------------------------------------------------------


def workflow(tasks: list[tuple[str, Schedule]], options: ExportOptions) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(export("github-actions", tasks, options))
    return loaded


def test_github_heartbeat_runs_every_5_minutes_with_the_token_secret() -> None:
    wf = workflow([], ExportOptions(target=TARGET))
    assert wf["on"] == {"schedule": [{"cron": "*/5 * * * *"}]}  # "on" stays a string key
    assert wf["permissions"] == {}
    (step,) = wf["jobs"]["tick"]["steps"]
    assert step["env"] == {
        "ONCELY_TOKEN": "${{ secrets.ONCELY_TOKEN }}",
        "URL": f"{TARGET}/jobs/tick",
    }
    argv = shlex.split(step["run"])
    assert argv[0] == "curl" and "--fail" in argv and "POST" in argv
    assert argv[argv.index("-H") + 1] == "Authorization: Bearer ${ONCELY_TOKEN}"


def test_github_converts_time_zones_to_utc_when_the_instants_stay_the_same() -> None:
    tasks = [
        ("tokyo_weekdays", Schedule.parse("0 9 * * 1-5", tz="Asia/Tokyo")),
        ("tokyo_monday_3am", Schedule.parse("0 3 * * MON", tz="Asia/Tokyo")),
        ("kolkata_hourly", Schedule.parse("0 * * * *", tz="Asia/Kolkata")),
        ("berlin_quarter", Schedule.parse("*/15 * * * *", tz="Europe/Berlin")),
    ]
    wf = workflow(tasks, per_task())
    crons = {k: v["if"].split("'")[1] for k, v in wf["jobs"].items()}
    assert crons == {
        "run-tokyo_weekdays": "0 0 * * 1-5",
        "run-tokyo_monday_3am": "0 18 * * 0",  # Sunday 18:00 UTC
        "run-kolkata_hourly": "30 * * * *",
        "run-berlin_quarter": "*/15 * * * *",
    }
    assert [s["cron"] for s in wf["on"]["schedule"]] == list(crons.values())
    window = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 5, tzinfo=UTC))  # spans DST
    for (_, schedule), utc in zip(tasks, crons.values(), strict=True):
        assert list(Schedule.parse(utc).occurrences(*window)) == list(schedule.occurrences(*window))
    step = wf["jobs"]["run-tokyo_weekdays"]["steps"][0]
    assert step["env"]["URL"] == f"{TARGET}/jobs/run/tokyo_weekdays"


def test_github_refuses_a_local_time_that_moves_with_daylight_saving() -> None:
    with pytest.raises(ExportError, match=r"task 'nightly_report'.*UTC.*daylight saving"):
        workflow([NIGHTLY], per_task())


def test_github_refuses_schedules_more_frequent_than_every_5_minutes() -> None:
    with pytest.raises(ExportError, match="5 minutes"):
        workflow([], ExportOptions(target=TARGET, heartbeat_cron="* * * * *"))
    with pytest.raises(ExportError, match="task 'fast'"):
        workflow([("fast", Schedule.parse("0,2 * * * *"))], per_task())


# -- shared behaviour and errors ----------------------------------------------------------------


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_platform_refuses_an_every_that_cron_cannot_express(platform: str) -> None:
    with pytest.raises(ExportError, match=r"task 'poll'.*every 1m30s.*heartbeat"):
        export(platform, [("poll", Schedule.parse(every="90s"))], per_task())


@pytest.mark.parametrize("platform", ["gcloud", "k8s-cronjob", "crontab", "github-actions"])
def test_platforms_without_l_and_hash_refuse_them_by_task(platform: str) -> None:
    with pytest.raises(ExportError, match=r"task 'month_end'.*L, W or #"):
        export(platform, [("month_end", Schedule.parse("0 0 L * *"))], per_task())


def test_bad_options_and_task_lists_are_refused() -> None:
    for target in ("app.example.com", "ftp://x", "https://x/?a=1", ""):
        with pytest.raises(ExportError, match="base URL"):
            ExportOptions(target=target)
    with pytest.raises(ExportError, match="'heartbeat' or 'per-task'"):
        ExportOptions(target=TARGET, mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="one of gcloud"):
        export("cron.d", [NIGHTLY], per_task())
    with pytest.raises(ExportError, match="listed twice"):
        export("crontab", [NIGHTLY, NIGHTLY], per_task())
    with pytest.raises(ExportError, match="no periodic tasks"):
        export("crontab", [], per_task())
    with pytest.raises(ExportError, match="heartbeat_cron"):
        export("crontab", [], ExportOptions(target=TARGET, heartbeat_cron="every minute"))
    assert issubclass(ExportError, ValueError)
