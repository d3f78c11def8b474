"""``oncely demo``: the example app's replicas behind one port, judged by the SMTP server.

The runs are real: replica processes, the kernel's SO_REUSEPORT as load balancer, the
built-in scheduler, aiosmtpd. Each run is a subprocess whose last stdout lines are the
JSON verdicts, counted from what the SMTP server received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from oncely.demo import Mail, judge, nginx_config, parse_options


def run_demo(tmp_path: Path, *args: str, timeout: float = 150) -> tuple[int, list[dict[str, Any]]]:
    """Run the demo with warnings as errors (they reach the replicas too, by the
    environment); returns its exit code and its JSON verdicts."""
    done = subprocess.run(
        [sys.executable, "-m", "oncely.demo", "--json", *args], cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "error"}, capture_output=True, text=True,
        timeout=timeout,
    )
    verdicts = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert verdicts, done.stderr[-3000:]
    for verdict in verdicts:
        assert_cleaned_up(verdict["pids"])
    return done.returncode, verdicts


def assert_cleaned_up(pids: list[int]) -> None:
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone
        assert b"replica_main" not in cmdline, f"replica {pid} outlived the demo"


def assert_exactly_once(verdict: dict[str, Any]) -> None:
    assert verdict["mode"] == "oncely"
    assert verdict["signups"] > 0 and verdict["signups"] == verdict["confirmed"]
    assert verdict["signups"] == verdict["distinct_emails"] == verdict["recipients"]
    assert verdict["distinct_emails"] == verdict["emails"] - verdict["resent_copies"]
    assert verdict["lost"] == verdict["duplicates"] == verdict["unexpected"] == 0
    assert verdict["dead_jobs"] == verdict["undrained"] == 0
    assert verdict["ok"] and verdict["verdict"] == "every signup got exactly one email, none lost"


def test_chaos_on_sqlite_every_signup_gets_exactly_one_email(tmp_path: Path) -> None:
    code, [verdict] = run_demo(tmp_path, "--chaos", "--duration", "25", "--rate", "10",
                               "--seed", "1")
    assert code == 0
    assert_exactly_once(verdict)
    assert verdict["kills"] >= 1 and verdict["store"] == "sqlite"


def test_chaos_on_postgres_kills_replicas_and_connections(tmp_path: Path, pg_url: str) -> None:
    code, [verdict] = run_demo(tmp_path, "--chaos", "--duration", "25", "--rate", "10",
                               "--seed", "2", "--store", pg_url)
    assert code == 0
    assert_exactly_once(verdict)
    assert verdict["kills"] >= 1 and verdict["pg_terminated"] > 0
    assert verdict["store"] == "postgres"


def test_naive_timers_send_duplicates_and_oncely_does_not(tmp_path: Path) -> None:
    code, [naive, oncely] = run_demo(tmp_path, "--naive", "--duration", "5", "--rate", "10")
    assert naive["mode"] == "naive" and not naive["ok"]
    assert naive["emails"] > naive["signups"] > 0 and naive["duplicates"] > 0
    assert naive["lost"] == 0
    assert_exactly_once(oncely)
    assert code == 0  # the exit code is oncely's verdict


# -- the judging itself --------------------------------------------------------------------


def mail(to: str, message_id: str) -> Mail:
    return Mail(to, message_id, "Welcome!", "host:1")


def test_a_copy_with_the_same_message_id_is_a_resent_copy_not_a_duplicate() -> None:
    verdict = judge("oncely", ["a@x", "b@x"], ["a@x", "b@x"],
                    [mail("a@x", "<welcome:1@x>"), mail("a@x", "<welcome:1@x>"),
                     mail("b@x", "<welcome:2@x>")])
    assert verdict.ok and verdict.sentence() == "every signup got exactly one email, none lost"
    assert (verdict.emails, verdict.distinct_emails, verdict.resent_copies) == (3, 2, 1)
    assert verdict.duplicates == 0


def test_another_message_id_to_the_same_recipient_is_a_duplicate() -> None:
    verdict = judge("naive", ["a@x"], ["a@x"], [mail("a@x", "<1@x>"), mail("a@x", "<2@x>")])
    assert not verdict.ok
    assert (verdict.duplicates, verdict.recipients_with_duplicates, verdict.resent_copies) == (
        1, 1, 0)
    assert verdict.sentence() == "1 signup(s) got more than one email (1 duplicate(s))"


def test_a_signup_without_an_email_is_lost_and_strangers_are_unexpected() -> None:
    verdict = judge("oncely", ["a@x"], ["a@x", "b@x"], [mail("a@x", "<1@x>"),
                                                        mail("c@x", "<3@x>")])
    assert (verdict.signups, verdict.lost, verdict.unexpected) == (2, 1, 1)
    assert not verdict.ok
    assert "1 signup(s) got no email (lost)" in verdict.sentence()


def test_dead_or_undrained_jobs_and_interruptions_fail_the_verdict() -> None:
    mails = [mail("a@x", "<1@x>")]
    assert judge("oncely", ["a@x"], [], mails).ok
    assert not judge("oncely", ["a@x"], [], mails, dead_jobs=1).ok
    assert not judge("oncely", ["a@x"], [], mails, undrained=1).ok
    assert not judge("oncely", ["a@x"], [], mails, interrupted=True).ok
    assert not judge("oncely", [], [], []).ok  # nobody signed up: nothing was shown


def test_nginx_config_retries_the_next_replica_on_errors() -> None:
    conf = nginx_config(Path("/tmp/p"), 8080, [9001, 9002])
    assert "listen 127.0.0.1:8080;" in conf
    assert "server 127.0.0.1:9001" in conf and "server 127.0.0.1:9002" in conf
    assert "proxy_next_upstream error timeout;" in conf


def test_options_are_checked() -> None:
    opts = parse_options(["--replicas", "5", "--lb", "nginx", "--chaos"])
    assert (opts.replicas, opts.lb, opts.chaos, opts.naive) == (5, "nginx", True, False)
