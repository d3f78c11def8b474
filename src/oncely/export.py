"""Render periodic schedules as ready-to-apply definitions for external schedulers.

``export(platform, tasks, options)`` returns the text printed by ``oncely export PLATFORM``: a
shell script for Google Cloud Scheduler, a CloudFormation template for EventBridge, Kubernetes
CronJobs, a crontab or a GitHub Actions workflow. In ``heartbeat`` mode one trigger POSTs
``/jobs/tick`` (every minute by default) and oncely works out what is due; in ``per-task`` mode
every periodic task gets a trigger that POSTs ``/jobs/run/{task}`` on its own cron and time zone.

Pure functions: no I/O and no clock. YAML is written by a small emitter (every string quoted), so
oncely needs no YAML library at run time.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import Literal, get_args
from urllib.parse import quote, urlsplit

from oncely.schedule import (
    CRON_FIELDS,
    Schedule,
    ScheduleError,
    cron_field_values,
    format_cron_field,
)

__all__ = ["PLATFORMS", "ExportError", "ExportOptions", "aws_cron", "export"]

Platform = Literal["gcloud", "eventbridge", "k8s-cronjob", "crontab", "github-actions"]
Mode = Literal["heartbeat", "per-task"]
PLATFORMS: tuple[str, ...] = get_args(Platform)
MINUTE = timedelta(minutes=1)
_DOW_NAMES = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


class ExportError(ValueError):
    """A schedule or option cannot be expressed on the chosen platform; the message says why."""


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``target`` is the app's base URL, e.g. ``https://app.example.com``."""

    target: str
    mode: Mode = "heartbeat"
    app: str = "oncely"
    heartbeat_cron: str | None = None  # None: every minute (every 5 minutes on GitHub Actions)
    retries: int = 3
    location: str | None = None  # gcloud region; None reads $LOCATION when the script runs
    namespace: str | None = None  # Kubernetes namespace; None uses kubectl's current one
    curl_image: str = "curlimages/curl:8.10.1"
    token_file: str = "/etc/oncely/auth-header"  # crontab: holds "Authorization: Bearer ..."

    def __post_init__(self) -> None:
        url = urlsplit(self.target)
        if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
            raise ExportError(
                f"target={self.target!r}: pass the app's base URL, e.g. https://app.example.com"
            )
        if self.mode not in get_args(Mode):
            raise ExportError(f"mode={self.mode!r}: use 'heartbeat' or 'per-task'")
        if not 0 <= self.retries <= 5:
            raise ExportError(f"retries={self.retries!r}: use a number from 0 to 5")


@dataclass(frozen=True)
class _Job:
    task: str | None  # None for the heartbeat
    url: str
    cron: str
    tz: str
    deadline: int  # seconds after the scheduled time that a late trigger is still worth sending

    @property
    def label(self) -> str:
        return "heartbeat" if self.task is None else f"task {self.task!r}"


def export(platform: str, tasks: Sequence[tuple[str, Schedule]], options: ExportOptions) -> str:
    """Render ``(task name, schedule)`` pairs for ``platform``, one of :data:`PLATFORMS`."""
    renderers: dict[str, Callable[[list[_Job], ExportOptions], str]] = {
        "gcloud": _gcloud,
        "eventbridge": _eventbridge,
        "k8s-cronjob": _k8s,
        "crontab": _crontab,
        "github-actions": _github,
    }
    if platform not in renderers:
        raise ExportError(f"platform={platform!r}: use one of {', '.join(PLATFORMS)}")
    return renderers[platform](_jobs(platform, tasks, options), options)


def _jobs(platform: str, tasks: Sequence[tuple[str, Schedule]], opts: ExportOptions) -> list[_Job]:
    base = opts.target.rstrip("/")
    if opts.mode == "heartbeat":
        every = "*/5 * * * *" if platform == "github-actions" else "* * * * *"
        try:
            heartbeat = Schedule.parse(opts.heartbeat_cron or every)
        except ScheduleError as exc:
            raise ExportError(f"heartbeat_cron: {exc}") from exc
        return [_Job(None, f"{base}/jobs/tick", heartbeat.cron or every, "UTC", 60)]
    if not tasks:
        raise ExportError("there are no periodic tasks to export: declare some or use heartbeat")
    jobs: dict[str, _Job] = {}
    for name, schedule in tasks:
        if name in jobs:
            raise ExportError(f"task {name!r} is listed twice: give each periodic task one name")
        cron = schedule.cron_equivalent()
        if cron is None:
            raise ExportError(
                f"task {name!r}: {schedule} cannot be written as cron, so {platform} cannot "
                "trigger it on time; use an every= that divides an hour or a day (e.g. '5m', "
                "'2h', '1d'), a cron= schedule, or heartbeat mode"
            )
        window = int(schedule.catch_up_window.total_seconds())
        deadline = 60 if schedule.catch_up == "skip" else min(max(window, 60), 86400)
        url = f"{base}/jobs/run/{quote(name, safe='')}"
        jobs[name] = _Job(name, url, cron, schedule.tz, deadline)
    return list(jobs.values())


# -- cron fields ------------------------------------------------------------------------------


def _standard_only(job: _Job, platform: str) -> None:
    if any(cron_field_values(f, i) is None for i, f in enumerate(job.cron.split())):
        raise ExportError(
            f"{job.label}: cron {job.cron!r} uses L, W or #, which {platform} does not support; "
            "use numbers, names, ranges, lists and steps (or export to eventbridge)"
        )


def aws_cron(cron: str) -> str:
    """Convert a 5-field cron to EventBridge's ``cron(minutes hours dom month dow year)``.

    Day-of-week is renumbered (cron 0-6 from Sunday -> AWS 1-7 from Sunday) and one of
    day-of-month and day-of-week becomes ``?``, as AWS requires.
    """
    minute, hour, dom, month, dow = cron.split()
    days, weekdays = cron_field_values(dom, 2), cron_field_values(dow, 4)
    all_days, all_weekdays = days == set(range(1, 32)), weekdays == set(range(7))
    anded = dom.startswith("*") or dow.startswith("*")  # else cron ORs the two fields
    if not anded and (all_days or all_weekdays):
        dom, dow = "*", "?"
    elif anded and all_weekdays:
        dow = "?"
    elif anded and all_days:
        dom = "?"
        if weekdays is not None:
            dow = format_cron_field({d + 1 for d in weekdays}, 1, 7, steps=False)
        else:  # 5L (last Friday), MON#2 / 1#2 (second Monday)
            head, mark, tail = re.split(r"([L#])", dow.upper(), maxsplit=1)
            day = _DOW_NAMES.index(head) if head in _DOW_NAMES else int(head) % 7
            dow = f"{day + 1}{mark}{tail}"
    else:
        raise ExportError(
            f"cron {cron!r} restricts both day-of-month and day-of-week, which AWS cron cannot "
            "express; keep one of them '*' (or split the task in two)"
        )
    if dom.upper() == "LW":
        raise ExportError(f"cron {cron!r}: AWS has no 'LW'; use 'L' or a weekday range")

    def aws_field(field: str, index: int) -> str:
        lo = CRON_FIELDS[index][0]
        if field in ("*", "?", "L") or not re.search(r"-\w+/", field):
            return re.sub(r"(^|,)\*/", rf"\g<1>{lo}/", field)  # AWS writes */5 as 0/5
        expanded = cron_field_values(field, index)  # AWS documents no range/step: list the values
        assert expanded is not None
        return format_cron_field(expanded, lo, CRON_FIELDS[index][1]).replace("*/", f"{lo}/")

    fields = (aws_field(minute, 0), aws_field(hour, 1), aws_field(dom, 2), aws_field(month, 3))
    return f"cron({' '.join(fields)} {dow} *)"


# -- text helpers -----------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _yaml(value: object, indent: str = "") -> list[str]:
    """YAML lines for dicts, lists, strings, ints and bools; strings are JSON-quoted."""
    out: list[str] = []
    if isinstance(value, dict) and value:
        for key, item in value.items():
            plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML11_WORDS
            lines = _yaml(item, indent + "  ")
            name = key if plain else json.dumps(key)
            if isinstance(item, dict | list) and item:
                out += [f"{indent}{name}:", *lines]
            else:
                out.append(f"{indent}{name}: {lines[0].strip()}")
        return out
    if isinstance(value, list) and value:
        for item in value:
            lines = _yaml(item, indent + "  ")
            out += [f"{indent}- {lines[0][len(indent) + 2 :]}", *lines[1:]]
        return out
    if isinstance(value, dict | list):
        return [indent + ("{}" if isinstance(value, dict) else "[]")]
    if isinstance(value, bool):
        return [indent + str(value).lower()]
    return [indent + json.dumps(value, ensure_ascii=False)]


def _document(header: list[str], docs: list[object]) -> str:
    body = "\n---\n".join("\n".join(_yaml(doc)) for doc in docs)
    return "".join(f"# {line}\n" for line in header) + body + "\n"


def _slug(text: str, max_len: int, allowed: str = "a-z0-9-", lower: bool = True) -> str:
    """A name the platform accepts; a short hash keeps altered names distinct."""
    slug = re.sub(f"[^{allowed}]+", "-", text.lower() if lower else text).strip("-")
    if slug != text or len(slug) > max_len:
        slug = f"{slug[: max_len - 7].rstrip('-')}-{_digest(text)}".lstrip("-")
    return slug


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def _name(job: _Job, opts: ExportOptions, max_len: int, allowed: str = "a-z0-9-") -> str:
    app = _slug(opts.app, 20)
    return f"{app}-{_slug(job.task or 'tick', max_len - len(app) - 1, allowed)}"


def _curl(opts: ExportOptions) -> list[str]:
    retry = ["--retry", str(opts.retries), "--retry-connrefused", "--max-time", "60"]
    return ["--fail", "--silent", "--show-error", *retry, "-X", "POST"]


# -- platforms --------------------------------------------------------------------------------


def _gcloud(jobs: list[_Job], opts: ExportOptions) -> str:
    q = shlex.quote
    location = q(opts.location) if opts.location else '"$LOCATION"'
    lines = [
        "#!/usr/bin/env bash",
        f"# oncely schedules for {opts.app} on Google Cloud Scheduler ({opts.mode} mode). Requests",
        "# carry a Google-signed OIDC token for $SA whose audience is the app's URL. 'create'",
        "# fails for jobs that exist: delete those first, or run the lines with 'update'.",
        "set -euo pipefail",
        ': "${SA:?set SA to the service account email Cloud Scheduler signs tokens as}"',
    ]
    if not opts.location:
        lines.append(': "${LOCATION:?set LOCATION to a Cloud Scheduler region, e.g. europe-west1}"')
    for job in jobs:
        _standard_only(job, "Cloud Scheduler")
        args = [
            f"gcloud scheduler jobs create http {q(_name(job, opts, 500, 'A-Za-z0-9_-'))}",
            f"--location={location} --schedule={q(job.cron)} --time-zone={q(job.tz)}",
            f'--uri={q(job.url)} --http-method=POST --oidc-service-account-email="$SA"',
            f"--oidc-token-audience={q(opts.target.rstrip('/'))}",
            f"--max-retry-attempts={opts.retries} --min-backoff=5s --max-backoff=60s",
            f"--attempt-deadline=180s --description={q('oncely ' + (job.task or 'heartbeat'))}",
        ]
        lines.append(" ".join(args))
    return "\n".join(lines) + "\n"


def _arn(resource: str) -> dict[str, object]:
    return {"Fn::GetAtt": [resource, "Arn"]}


def _role(service: str, action: str, resource: str) -> dict[str, object]:
    def policy(**statement: object) -> dict[str, object]:
        return dict(Version="2012-10-17", Statement=[dict(Effect="Allow", **statement)])

    trust = policy(Principal=dict(Service=service), Action="sts:AssumeRole")
    inline = dict(
        PolicyName="oncely", PolicyDocument=policy(Action=action, Resource=[_arn(resource)])
    )
    properties = dict(AssumeRolePolicyDocument=trust, Policies=[inline])
    return dict(Type="AWS::IAM::Role", Properties=properties)


def _eventbridge(jobs: list[_Job], opts: ExportOptions) -> str:
    if urlsplit(opts.target).scheme != "https":
        raise ExportError(f"target={opts.target!r}: EventBridge API destinations need https://")
    source, kind = f"oncely.{_slug(opts.app, 40)}", "oncely.trigger"
    endpoint = jobs[0].url if jobs[0].task is None else f"{opts.target.rstrip('/')}/jobs/run/*"
    auth = dict(ApiKeyName="Authorization", ApiKeyValue={"Fn::Sub": "Bearer ${OncelyToken}"})
    # fmt: off
    resources: dict[str, object] = dict(
        Bus=dict(Type="AWS::Events::EventBus",
                 Properties=dict(Name={"Fn::Sub": "${AWS::StackName}-oncely"})),
        Connection=dict(Type="AWS::Events::Connection", Properties=dict(
            AuthorizationType="API_KEY", AuthParameters=dict(ApiKeyAuthParameters=auth))),
        Destination=dict(Type="AWS::Events::ApiDestination", Properties=dict(
            ConnectionArn=_arn("Connection"), HttpMethod="POST", InvocationEndpoint=endpoint,
            InvocationRateLimitPerSecond=10)),
        SchedulerRole=_role("scheduler.amazonaws.com", "events:PutEvents", "Bus"),
        RuleRole=_role("events.amazonaws.com", "events:InvokeApiDestination", "Destination"),
    )
    for job in jobs:
        task = job.task or "tick"
        key = "".join(word[:1].upper() + word[1:] for word in re.split(r"[^A-Za-z0-9]+", task))
        key += _digest(task) if f"Schedule{key}" in resources else ""  # "a_b" and "a-b"
        retry = dict(MaximumRetryAttempts=opts.retries, MaximumEventAgeInSeconds=job.deadline)
        call = dict(Id="oncely", Arn=_arn("Destination"), RoleArn=_arn("RuleRole"),
                    RetryPolicy=retry)
        if job.task is not None:
            call["HttpParameters"] = dict(PathParameterValues=[quote(task, safe="")])
        resources[f"Schedule{key}"] = dict(Type="AWS::Scheduler::Schedule", Properties=dict(
            Description=f"oncely {job.label}", State="ENABLED",
            ScheduleExpression=aws_cron(job.cron), ScheduleExpressionTimezone=job.tz,
            FlexibleTimeWindow=dict(Mode="OFF"),
            Target=dict(Arn=_arn("Bus"), RoleArn=_arn("SchedulerRole"), RetryPolicy=retry,
                        EventBridgeParameters=dict(Source=source, DetailType=kind),
                        Input=json.dumps({"task": task}))))
        pattern = {"source": [source], "detail-type": [kind], "detail": {"task": [task]}}
        resources[f"Rule{key}"] = dict(Type="AWS::Events::Rule", Properties=dict(
            EventBusName={"Ref": "Bus"}, EventPattern=pattern, State="ENABLED", Targets=[call]))
    token = dict(Type="String", NoEcho=True, Description="the bearer token oncely accepts")
    template = dict(AWSTemplateFormatVersion="2010-09-09",
                    Description=f"oncely schedules for {opts.app} ({opts.mode} mode)",
                    Parameters=dict(OncelyToken=token), Resources=resources)
    # fmt: on
    header = [
        f"oncely schedules for {opts.app} on AWS ({opts.mode} mode), as a CloudFormation template.",
        "Why EventBridge Scheduler -> event bus -> rule -> API destination: Scheduler has time",
        "zones and retries but cannot target API destinations (they are targets of event-bus",
        "rules), and a rule's own ScheduleExpression runs in UTC only. Each schedule puts an",
        "event on a dedicated bus; a rule sends it to the API destination, whose Connection",
        "adds 'Authorization: Bearer <OncelyToken>'. Deploy with:",
        "  aws cloudformation deploy --template-file oncely.yaml --stack-name oncely \\",
        '    --capabilities CAPABILITY_IAM --parameter-overrides OncelyToken="$ONCELY_TOKEN"',
        "EventBridge Scheduler skips a run that falls into a spring-forward DST gap.",
    ]
    return _document(header, [template])


def _k8s(jobs: list[_Job], opts: ExportOptions) -> str:
    secret = f"{_slug(opts.app, 40)}-oncely-token"
    labels = {"app.kubernetes.io/name": "oncely", "app.kubernetes.io/part-of": _slug(opts.app, 63)}
    where = dict(namespace=opts.namespace) if opts.namespace else {}
    # fmt: off
    docs: list[object] = [dict(apiVersion="v1", kind="Secret",
                               metadata=dict(name=secret, **where, labels=labels), type="Opaque",
                               stringData=dict(token="REPLACE_WITH_ONCELY_TOKEN"))]
    token = dict(name="ONCELY_TOKEN", valueFrom=dict(secretKeyRef=dict(name=secret, key="token")))
    # curlimages/curl names its user (USER curl_user); runAsNonRoot needs a numeric uid
    locked = dict(runAsNonRoot=True, runAsUser=100, allowPrivilegeEscalation=False,
                  readOnlyRootFilesystem=True, capabilities=dict(drop=["ALL"]))
    for job in jobs:
        _standard_only(job, "Kubernetes")
        args = [*_curl(opts), "-H", "Authorization: Bearer $(ONCELY_TOKEN)", job.url]
        container = dict(name="trigger", image=opts.curl_image, command=["curl"], args=args,
                         env=[token], securityContext=locked)
        run = dict(backoffLimit=1, activeDeadlineSeconds=300, ttlSecondsAfterFinished=3600,
                   template=dict(spec=dict(restartPolicy="Never", containers=[container])))
        docs.append(dict(apiVersion="batch/v1", kind="CronJob",
                         metadata=dict(name=_name(job, opts, 52), **where, labels=labels),
                         spec=dict(schedule=job.cron, timeZone=job.tz, concurrencyPolicy="Forbid",
                                   startingDeadlineSeconds=job.deadline,
                                   successfulJobsHistoryLimit=1, failedJobsHistoryLimit=3,
                                   jobTemplate=dict(spec=run))))
    # fmt: on
    header = [
        f"oncely schedules for {opts.app} on Kubernetes ({opts.mode} mode); timeZone needs 1.27+.",
        "Rather than committing the token, create the Secret with: kubectl create secret",
        f'  generic {secret} --from-literal=token="$ONCELY_TOKEN" (and drop it from below).',
    ]
    return _document(header, docs)


def _crontab(jobs: list[_Job], opts: ExportOptions) -> str:
    path = opts.token_file
    lines = [
        f"# oncely schedules for {opts.app} ({opts.mode} mode). Install with `crontab FILE`.",
        f"# curl reads the Authorization header from {path} (-H @file, curl 7.55+): the token",
        "# is neither in this file nor in the process list. Create the file with:",
        f"#   umask 077; printf 'Authorization: Bearer %s\\n' \"$ONCELY_TOKEN\" > {path}",
        "# CRON_TZ= needs cronie (Fedora, RHEL, Amazon Linux, Alpine); Debian's cron ignores it.",
        "# Lines before the first CRON_TZ= run in the cron daemon's zone, which must be UTC.",
    ]
    current = "UTC"
    for job in sorted(jobs, key=lambda j: (j.tz != "UTC", j.tz)):
        _standard_only(job, "cron")
        if job.tz != current:
            lines.append(f"CRON_TZ={job.tz}")
            current = job.tz
        argv = ["curl", *_curl(opts), "-H", f"@{path}", job.url]
        command = " ".join(shlex.quote(a) for a in argv).replace("%", "\\%")  # % ends a command
        lines += [f"# {job.label}", f"{job.cron} {command} >/dev/null"]
    return "\n".join(lines) + "\n"


def _github(jobs: list[_Job], opts: ExportOptions) -> str:
    schedules: list[dict[str, str]] = []
    workflow_jobs: dict[str, object] = {}
    week = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 9, tzinfo=UTC))
    for job in jobs:
        _standard_only(job, "GitHub Actions")
        try:
            cron = Schedule(cron=job.cron, tz=job.tz).utc_cron()
        except ScheduleError as exc:
            raise ExportError(
                f"{job.label}: GitHub Actions schedules run in UTC, but {exc}; use tz='UTC' with "
                "the times converted by hand, heartbeat mode, or another platform"
            ) from exc
        runs = list(islice(Schedule.parse(cron).occurrences(*week), 3000))
        if any(b - a < 5 * MINUTE for a, b in pairwise(runs)):
            raise ExportError(
                f"{job.label}: cron {cron!r} runs more often than every 5 minutes, the most GitHub "
                "Actions allows; use '*/5 * * * *' or coarser (heartbeat_cron for the heartbeat) "
                "with a grace of at least 5 minutes, or another platform"
            )
        if {"cron": cron} not in schedules:
            schedules.append({"cron": cron})
        curl = ["curl", *_curl(opts), "-H", '"Authorization: Bearer ${ONCELY_TOKEN}"', '"$URL"']
        env = {"ONCELY_TOKEN": "${{ secrets.ONCELY_TOKEN }}", "URL": job.url}
        steps = [{"name": f"POST {job.url}", "env": env, "run": " ".join(curl)}]
        body: dict[str, object] = {"runs-on": "ubuntu-latest", "timeout-minutes": 5, "steps": steps}
        key = "tick"
        if job.task is not None:
            body = {"if": f"github.event.schedule == '{cron}'", **body}
            key = "run-" + _slug(job.task, 80, "A-Za-z0-9_-", lower=False)
        workflow_jobs[key] = body
    workflow = dict(name=f"oncely schedules for {opts.app}", on=dict(schedule=schedules))
    header = [
        f"oncely schedules for {opts.app} ({opts.mode} mode): save as .github/workflows/oncely.yml",
        "and add the repository secret ONCELY_TOKEN. GitHub runs schedules in UTC (converted",
        "here), at most every 5 minutes and often minutes late, and pauses them in public",
        "repositories after 60 days without activity: rely on oncely's grace and catch-up.",
    ]
    return _document(header, [workflow | dict(permissions={}, jobs=workflow_jobs)])
