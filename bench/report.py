"""Renders ``bench/RESULTS.md`` and the plots from the raw figures of ``bench/run.py``."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

Reports = list[dict[str, Any]]


def _rate(reports: Reports) -> float:
    return statistics.median(r["jobs"] / r["seconds"] for r in reports)


def _paired(a: Reports, b: Reports) -> float:
    return statistics.median((x["jobs"] / x["seconds"]) / (y["jobs"] / y["seconds"])
                             for x, y in zip(a, b, strict=False))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def _best_peer(rows: dict[str, Reports]) -> str:
    peers = [k for k in rows if k.startswith(("pgqueuer", "procrastinate"))]
    return max(peers, key=lambda k: _rate(rows[k]))


def render(raw: dict[str, Any]) -> str:
    m, args = raw["machine"], raw["args"]
    settings = {w["name"]: w["settings"] for w in raw["workloads"]}
    sizes = sorted(int(n) for n in raw["rates"])
    out = [
        "# Benchmark results (issue 7)",
        "",
        "Written by `bench/run.py` (`make bench-all`); `bench/README.md` says how to read it.",
        "Every figure is a median over rounds; every ratio is the median of per-round ratios "
        "of two workloads measured in the same round, minutes apart at most.",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} cores ({m['cpu']}), {m['platform']}, Python {m['python']}",
        f"- {m['postgres'].split(' on ')[0]} on the same box, fsync={m['fsync']}, "
        f"synchronous_commit={m['synchronous_commit']}, shared_buffers={m['shared_buffers']}, "
        f"psycopg {m['psycopg']}",
        f"- loopback round trip {m['round_trip_ms']:.3f} ms, one-row write commit "
        f"{m['write_commit_ms']:.3f} ms (medians)",
        f"- oncely {m['oncely_code']}; started {m.get('started', '?')}, whole run "
        f"{raw['wall_seconds'] / 60:.1f} min; load average before "
        f"{m.get('load_before', ['?'])[0]:.2f}, after {m.get('load_after', ['?'])[0]:.2f}",
        f"- rounds: {args['runs']} for N <= 10,000, {args['top_runs']} for larger N; "
        "Procrastinate and the one-job loop stop at N = 10,000 (they take minutes per round "
        "beyond that)",
        "- Other engineers may use this machine and this PostgreSQL server at the same time: "
        "absolute rates move ±30% between rounds; the ratios are the figures to quote.",
        "",
        "## Workloads and settings",
        "",
        "| workload | settings |",
        "| --- | --- |",
        *(f"| {name} | {s} |" for name, s in settings.items()),
        "",
        "Every job is a no-op `async` handler unless it says sleep. Each drain starts on a "
        "fresh schema/database/file, filled in bulk, then `VACUUM ANALYZE`d (PostgreSQL, "
        "every workload alike), and "
        "is timed from the first claim until the queue is empty. Enqueueing is timed apart. "
        "CPU is the driving process's own CPU (client) plus every PostgreSQL process's CPU "
        "(server) during the drain, from /proc.",
        "",
    ]
    for n in sizes:
        rows = raw["rates"][str(n)] if str(n) in raw["rates"] else raw["rates"][n]
        best = _best_peer(rows)
        out += [f"## Processing rate, N = {n:,}", "",
                f"Best peer in this run: **{best}**.", "",
                f"| workload | jobs/s (median) | min-max | x {best} | x plain-b100 | "
                "x plain-lease-b100 | CPU s / 1000 jobs (client + server) |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name, reports in rows.items():
            rates = [r["jobs"] / r["seconds"] for r in reports]
            client = statistics.median(r["cpu_client"] / r["jobs"] * 1000 for r in reports)
            server = statistics.median(r["cpu_server"] / r["jobs"] * 1000 for r in reports)
            vs_plain, vs_lease = (f"{_paired(reports, rows[p]):.2f}" if p in rows else "-"
                                  for p in ("plain-b100", "plain-lease-b100"))
            out.append(f"| {name} | {_rate(reports):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} "
                       f"| {_paired(reports, rows[best]):.2f} | {vs_plain} | {vs_lease} | "
                       f"{client:.3f} + {server:.3f} = {client + server:.3f} |")
        out.append("")
    out += _enqueue(raw, sizes), _latency(raw), _targets(raw, sizes), _extras(raw)
    out += ["## Plots", "", "![rate vs N](rate_vs_n.png)", "",
            "![latency](latency.png)", ""]
    return "\n".join(out) + "\n"


def _enqueue(raw: dict[str, Any], sizes: list[int]) -> str:
    n = max(s for s in sizes if s <= 10000) if any(s <= 10000 for s in sizes) else sizes[0]
    rows = raw["rates"][str(n)]
    lines = [f"## Enqueue rate, N = {n:,}", "", "| workload | bulk jobs/s | single jobs/s |",
             "| --- | ---: | ---: |"]
    for name, reports in rows.items():
        bulk = statistics.median(r.get("enqueue_bulk_jobs", r["jobs"]) / r["enqueue_seconds"]
                                 for r in reports)
        single = [r["enqueue_single_jobs"] / r["enqueue_single_seconds"]
                  for r in reports if "enqueue_single_seconds" in r]
        lines.append(f"| {name} | {bulk:,.0f} | "
                     f"{statistics.median(single):,.0f} |" if single else
                     f"| {name} | {bulk:,.0f} | - |")
    lines += ["", "Single = `enqueue()` one job per call for the first 1,000 jobs (oncely "
              "only). Bulk = one `enqueue_many` (oncely), `enqueue` with lists (PgQueuer), "
              "`batch_defer_async` (Procrastinate), or one INSERT..SELECT (plain), in "
              "chunks of at most 10,000.", ""]
    return "\n".join(lines)


def _latency(raw: dict[str, Any]) -> str:
    lat = raw["latency"]
    names = {
        "healthz": "GET /healthz (HTTP and uvicorn alone, no store)",
        "trigger_empty": "POST /jobs/process, nothing due: the trigger's fixed overhead "
                         "(auth, trigger record begin/finish, rescue, claim, count, summary)",
        "http_trigger_to_done": "POST /jobs/process with one job just enqueued, until the "
                                "answer (job done)",
        "http_enqueue_to_done": "enqueue() + that POST: enqueue to done, HTTP path",
        "lib_enqueue_to_done": "enqueue() + process(): enqueue to done, library",
    }
    lines = ["## Latency (ms), idle system, PostgreSQL store", "",
             "| what | p50 | p99 | samples |", "| --- | ---: | ---: | ---: |"]
    for key, what in names.items():
        if lat.get(key):
            lines.append(f"| {what} | {_pct(lat[key], 50):.2f} | {_pct(lat[key], 99):.2f} | "
                         f"{len(lat[key])} |")
    return "\n".join([*lines, ""])


def _targets(raw: dict[str, Any], sizes: list[int]) -> str:
    lines = ["## Targets", "", "| target | N | measured | met? |", "| --- | ---: | --- | --- |"]
    for n in sizes:
        rows = raw["rates"][str(n)]
        best = _best_peer(rows)
        r1 = _paired(rows["oncely-pg"], rows[best])
        r2 = _paired(rows["oncely-pg"], rows["plain-b100"])
        r3 = _paired(rows["oncely-sqlite"], rows["oncely-pg"])
        lines += [
            f"| PostgreSQL rate ≥ 1.5 x best peer ({best}) | {n:,} | {r1:.2f} x | "
            f"{'yes' if r1 >= 1.5 else 'no'} |",
            f"| PostgreSQL rate ≥ 0.6 x plain loop, same batch (100) | {n:,} | {r2:.2f} x | "
            f"{'yes' if r2 >= 0.6 else 'no'} |",
            f"| (the same against the plain loop with oncely's lease and fence, not a target) "
            f"| {n:,} | {_paired(rows['oncely-pg'], rows['plain-lease-b100']):.2f} x | - |",
            f"| SQLite rate ≥ PostgreSQL rate | {n:,} | {r3:.2f} x | "
            f"{'yes' if r3 >= 1 else 'no'} |",
        ]
    empty = raw["latency"].get("trigger_empty")
    if empty:
        p50 = _pct(empty, 50)
        lines.append(f"| trigger fixed overhead < 5 ms p50 | - | {p50:.2f} ms | "
                     f"{'yes' if p50 < 5 else 'no'} |")
    scale = raw.get("scale")
    if scale:
        lines.append(f"| rate with 1M finished + 100k pending ≥ 0.8 x empty table | 100,000 | "
                     f"{scale['ratio']:.2f} x | {'yes' if scale['ratio'] >= 0.8 else 'no'} |")
    soak = raw.get("soak")
    if soak and soak["samples"]:
        first, last = soak["samples"][0][1], soak["samples"][-1][1]
        lines.append(f"| server memory flat over {soak['seconds'] / 60:.0f} min | - | RSS "
                     f"{sum(first) / 1024:.0f} → {sum(last) / 1024:.0f} MiB (all workers) | "
                     f"{'yes' if sum(last) <= sum(first) * 1.1 else 'no'} |")
    return "\n".join([*lines, ""])


def _extras(raw: dict[str, Any]) -> str:
    lines = []
    scale = raw.get("scale")
    if scale:
        e, f = scale["empty"], scale["full"]
        lines += ["## Scale", "",
                  f"process() draining {scale['pending']:,} jobs: empty table "
                  f"{e['jobs'] / e['seconds']:,.0f} jobs/s; with {scale['finished']:,} "
                  f"finished jobs in the table {f['jobs'] / f['seconds']:,.0f} jobs/s "
                  f"(ratio {scale['ratio']:.2f}, one run each).", ""]
    else:
        lines += ["## Scale", "", "Not run in this run (`--scale`).", ""]
    soak = raw.get("soak")
    if soak:
        lines += ["## Soak", "", f"{soak['jobs']:,} jobs through the HTTP trigger in "
                  f"{soak['seconds']:.0f} s; RSS (KiB) of each server process:", "",
                  "| t (s) | RSS per worker (KiB) |", "| ---: | --- |",
                  *(f"| {t:.0f} | {', '.join(map(str, rss))} |" for t, rss in soak["samples"]),
                  ""]
    else:
        lines += ["## Soak", "", "Not run in this run (`--soak 600`).", ""]
    return "\n".join(lines)


def plots(raw: dict[str, Any], where: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    names = [w["name"] for w in raw["workloads"]]
    colors = plt.get_cmap("tab20").colors  # one colour per workload (the default has 10)
    for i, name in enumerate(names):
        points = sorted((int(n), _rate(rows[name])) for n, rows in raw["rates"].items()
                        if name in rows)
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name,
                    color=colors[(2 * i) % 20 + (2 * i) // 20 % 2],
                    linestyle="--" if not name.startswith("oncely") else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("jobs per drain (N)")
    ax.set_ylabel("jobs/s (median)")
    ax.set_title(f"Processing rate vs N ({raw['machine']['nproc']} cores, same run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(where / "rate_vs_n.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for key, values in raw["latency"].items():
        if values:
            ordered = sorted(values)
            ax.plot(ordered, [i / len(ordered) for i in range(1, len(ordered) + 1)], label=key)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of samples ≤ x")
    ax.set_title("Latency distribution (idle system, PostgreSQL)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(where / "latency.png", dpi=110)
    plt.close(fig)
