"""Turning the results of bench/run.py into targets, a markdown report and a plot."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

SNAKEPIT = "snakepit-trio"
SNAKEPIT_MUX = "snakepit-trio mux16"
FLOOR = "raw trio pipe (floor)"
FLOOR_PIPELINED = "raw trio pipelined"
PPE = "ProcessPoolExecutor"
TRIO_PARALLEL = "trio-parallel"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
}


def _get(results: dict[str, Any], *path: str) -> float:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return math.nan
        value = value[key]
    return float(value)


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, measured in this run, with PASS/MISS (or n/a).

    ``floor`` is the same ratio with the raw trio pipe in snakepit-trio's place: what any
    stdio design could reach in this run (a target the floor misses is out of reach here).
    """
    lat = lambda name: _get(results, "latency", name, "median_us")  # noqa: E731
    rate2 = lambda name: _get(results, "throughput", "2", name, "rate_per_s")  # noqa: E731
    big = lambda name: _get(results, "big", name, "median_us")  # noqa: E731
    startup = results.get("startup", {})
    start = lambda key: startup.get(key, math.nan)  # noqa: E731
    streaming = results.get("streaming", {})
    rates = {r["command"]: r["chunks_per_s"] for r in streaming.get("rates", [])}
    memory = {m["credits"]: m for m in streaming.get("memory", [])}
    stream_mib = memory.get(32, {}).get("bytes", 0) / (1 << 20)
    queued = results.get("queued", {})
    total_queued = queued.get("pool_rss_bytes_per_request", math.nan)
    own_queued = total_queued - queued.get("bare_task_rss_bytes", math.nan)
    one = "1 caller, 1 worker, small request"
    many = "16 callers, 2 workers, small request"
    rows = [
        (f"latency ({one}), median vs raw trio floor", _ratio(lat(SNAKEPIT), lat(FLOOR)),
         "<=", 1.35, "x", math.nan),
        (f"latency ({one}), median vs trio-parallel", _ratio(lat(SNAKEPIT), lat(TRIO_PARALLEL)),
         "<=", 0.5, "x", _ratio(lat(FLOOR), lat(TRIO_PARALLEL))),
        (f"throughput ({many}), 1 in flight/worker, vs ProcessPoolExecutor",
         _ratio(rate2(SNAKEPIT), rate2(PPE)), ">=", 3.0, "x", _ratio(rate2(FLOOR), rate2(PPE))),
        (f"throughput ({many}), max_in_flight=16, vs ProcessPoolExecutor",
         _ratio(rate2(SNAKEPIT_MUX), rate2(PPE)), ">=", 5.0, "x",
         _ratio(rate2(FLOOR_PIPELINED), rate2(PPE))),
        ("1 MiB bytes echo round trip, median vs ProcessPoolExecutor",
         _ratio(big(SNAKEPIT), big(PPE)), "<=", 1.2, "x", _ratio(big(FLOOR), big(PPE))),
        ("start-up of 8 workers, concurrent vs sequential",
         _ratio(start("concurrent_s"), start("sequential_s")), "<=", 0.6, "x", math.nan),
        ("one worker spawn -> first reply vs `python -c 'import msgpack'`",
         _ratio(start("single_s"), start("python_import_msgpack_s")), "<=", 1.5, "x", math.nan),
        ("streaming small chunks over stdio (count_stream)",
         rates.get("count_stream", math.nan), ">=", 50_000.0, "chunks/s", math.nan),
        (f"pool RSS growth streaming {stream_mib:.0f} MiB in 1 MiB chunks to a slow consumer",
         memory.get(32, {}).get("pool_rss_growth_mb", math.nan), "<", 20.0, "MB", math.nan),
        ("RSS per queued request (10,000 queued behind blocked workers), caller's task included",
         total_queued / 1024, "<", 2.0, "KB", math.nan),
        ("RSS per queued request, the pool's own share (minus a bare parked trio task)",
         own_queued / 1024, "<", 2.0, "KB", math.nan),
    ]  # fmt: skip
    targets = []
    for what, value, op, limit, unit, floor in rows:
        verdict = "n/a" if math.isnan(value) else "PASS" if _OPS[op](value, limit) else "MISS"
        targets.append(
            {
                "target": what,
                "value": value,
                "op": op,
                "limit": limit,
                "unit": unit,
                "verdict": verdict,
                "floor": floor,
            }
        )
    return targets


# ---------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _request_table(samples: dict[str, dict[str, Any]], scale: float, unit: str) -> str:
    base = samples.get(SNAKEPIT, {})
    rows = []
    for name, s in samples.items():
        rows.append(
            [
                name,
                s["median_us"] / scale,
                s["p99_us"] / scale,
                s["rate_per_s"],
                s["parent_cpu_us_per_req"] / scale,
                s["worker_cpu_us_per_req"] / scale,
                _ratio(base.get("median_us", math.nan), s["median_us"]),
            ]
        )
    headers = [
        "contender",
        f"median {unit}",
        f"p99 {unit}",
        "req/s",
        f"parent CPU {unit}/req",
        f"worker CPU {unit}/req",
        "snakepit-trio median ÷ this",
    ]
    return _table(headers, rows)


def _throughput_table(by_workers: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = []
    for workers, samples in by_workers.items():
        base = samples.get(SNAKEPIT, {}).get("rate_per_s", math.nan)
        mux = samples.get(SNAKEPIT_MUX, {}).get("rate_per_s", math.nan)
        for name, s in samples.items():
            rows.append(
                [
                    workers,
                    name,
                    s["rate_per_s"],
                    s["median_us"],
                    s["p99_us"],
                    s["parent_cpu_us_per_req"],
                    s["worker_cpu_us_per_req"],
                    _ratio(base, s["rate_per_s"]),
                    _ratio(mux, s["rate_per_s"]),
                    " / ".join(_fmt(r, 0) for r in s.get("round_rates", [])),
                ]
            )
    headers = [
        "workers",
        "contender",
        "req/s",
        "median µs",
        "p99 µs",
        "parent CPU µs/req",
        "worker CPU µs/req",
        "snakepit-trio ÷ this",
        "mux16 ÷ this",
        "req/s per round",
    ]
    return _table(headers, rows)


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    pinned = (
        f"pinned to CPU {machine['pinned_cpu']}"
        if machine["pinned_cpu"] is not None
        else "not pinned"
    )
    out = [
        f"# snakepit-trio benchmark ({results['mode']})",
        "",
        f"{machine['time']}; Python {machine['python']}; {machine['cpu_count']} CPUs, {pinned}; "
        f"load average {machine['loadavg']} at start, {machine.get('loadavg_end')} at the end; "
        f"{results['plan']['rounds']} interleaved rounds per measurement; "
        f"took {results.get('wall_s', 0):.0f} s.",
        "",
        "CPU per request: the parent (this process, all threads) and the workers (every live "
        "descendant), from /proc/<pid>/task/*/schedstat, divided by the requests measured.",
    ]
    if results.get("latency"):
        out += ["", "## (1) Latency: small request (~100 B dict echoed), 1 caller, 1 worker", ""]
        out.append(_request_table(results["latency"], 1.0, "µs"))
    if results.get("throughput"):
        out += [
            "",
            "## (2) + (3) Throughput: 16 concurrent callers, small request",
            "",
            "`snakepit-trio` keeps one request in flight per worker; `mux16` sets "
            "`PoolConfig(max_in_flight=16)` (the bridge announces `multiplex`). The raw floor "
            "runs one loop per pipe (no dispatch); the pipelined floor keeps 16/workers frames "
            "in flight per pipe.",
            "",
            _throughput_table(results["throughput"]),
            "",
            "Requests served by each worker (snakepit-trio): "
            + "; ".join(
                f"{name} w={w}: {s['per_worker_requests']}"
                for w, samples in results["throughput"].items()
                for name, s in samples.items()
                if "per_worker_requests" in s and int(w) > 1
            ),
        ]
    if results.get("big"):
        out += ["", "## (4) 1 MiB bytes echo round trip, 1 caller, 1 worker", ""]
        out.append(_request_table(results["big"], 1000.0, "ms"))
    startup = results.get("startup")
    if startup:
        out += [
            "",
            "## (5) Start-up (generic Python bridge; medians)",
            "",
            _table(
                ["what", "seconds"],
                [
                    [what, f"{startup[key]:.3f}"]
                    for what, key in (
                        ("open_pool(size=8): all 8 ready (concurrent)", "concurrent_s"),
                        ("8 x open_pool(size=1), one after another", "sequential_s"),
                        ("open_pool(size=1): spawn -> first reply", "single_s"),
                        ("closing the pool of 8", "close8_s"),
                        ("`python -c 'import msgpack'`", "python_import_msgpack_s"),
                        ("`python -c pass`", "python_pass_s"),
                    )
                ],
            ),
        ]
    streaming = results.get("streaming")
    if streaming:
        out += ["", "## (6) Streaming over stdio (1 worker)", ""]
        out.append(
            _table(
                ["command", "chunks", "chunks/s", "parent CPU µs/chunk", "worker CPU µs/chunk"],
                [
                    [
                        r["command"],
                        r["chunks"],
                        r["chunks_per_s"],
                        r["parent_cpu_us_per_chunk"],
                        r["worker_cpu_us_per_chunk"],
                    ]
                    for r in streaming["rates"]
                ],
            )
        )
        out.append("")
        out.append(
            _table(
                [
                    "stream_credits",
                    "MiB streamed",
                    "consumer sleep",
                    "pool RSS before MB",
                    "pool RSS growth MB",
                    "pool RSS after MB",
                    "worker RSS growth MB",
                ],
                [
                    [
                        m["credits"],
                        m["bytes"] / (1 << 20),
                        f"{m['consumer_delay_s'] * 1000:.0f} ms/chunk",
                        m["pool_rss_base_mb"],
                        m["pool_rss_growth_mb"],
                        m["pool_rss_after_mb"],
                        m["worker_rss_growth_mb"],
                    ]
                    for m in streaming["memory"]
                ],
            )
        )
    queued = results.get("queued")
    if queued:
        out += [
            "",
            f"## (7) Memory per queued request ({queued['queued']:,} queued behind 2 blocked workers)",
            "",
            _table(
                ["what", "RSS bytes each", "tracemalloc bytes each"],
                [
                    [
                        "pool.execute() waiting in the queue",
                        queued["pool_rss_bytes_per_request"],
                        queued["pool_traced_bytes_per_request"],
                    ],
                    [
                        "a bare trio task parked on an Event (for scale)",
                        queued["bare_task_rss_bytes"],
                        queued["bare_task_traced_bytes"],
                    ],
                    [
                        "the pool's own share (the difference)",
                        queued["pool_rss_bytes_per_request"] - queued["bare_task_rss_bytes"],
                        queued["pool_traced_bytes_per_request"] - queued["bare_task_traced_bytes"],
                    ],
                ],
            ),
            "",
            "Largest allocations per queued request (tracemalloc, by line):",
            "",
            _table(
                ["bytes", "where", "code"],
                [
                    [t["bytes_per_item"], t["where"], f"`{t.get('code', '')}`"]
                    for t in queued["pool_top_allocations"]
                ],
            ),
        ]
    out += ["", "## Targets (ratios measured in this run)", ""]
    out.append(
        _table(
            ["target", "measured", "goal", "verdict", "raw floor in its place"],
            [
                [
                    t["target"],
                    f"{_fmt(t['value'], 2)} {t['unit']}",
                    f"{t['op']} {_fmt(t['limit'], 2)} {t['unit']}",
                    t["verdict"],
                    "" if math.isnan(t["floor"]) else f"{_fmt(t['floor'], 2)} {t['unit']}",
                ]
                for t in results["targets"]
            ],
        )
    )
    if results.get("errors"):
        out += ["", "## Errors", ""]
        out += [f"- {name}: {error}" for name, error in results["errors"].items()]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- plot


def render_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    by_workers = results["throughput"]
    worker_counts = [int(w) for w in by_workers]
    names: list[str] = []
    for samples in by_workers.values():
        names += [n for n in samples if n not in names]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.2))
    for name in names:
        xs = [w for w in worker_counts if name in by_workers[str(w)]]
        rates = [by_workers[str(w)][name]["rate_per_s"] for w in xs]
        medians = [by_workers[str(w)][name]["median_us"] for w in xs]
        style = "-" if name.startswith("snakepit") else ("--" if "raw" in name else ":")
        width = 2.6 if name.startswith("snakepit") else 1.6
        left.plot(xs, rates, style, marker="o", linewidth=width, label=name)
        right.plot(xs, medians, style, marker="o", linewidth=width, label=name)
    left.set_title("Throughput, 16 concurrent callers")
    left.set_ylabel("requests / s (log scale)")
    right.set_title("Median latency per request, 16 concurrent callers")
    right.set_ylabel("µs (log scale)")
    plain = FuncFormatter(lambda value, _pos: f"{value:,.0f}")
    for axis in (left, right):
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(plain)
        axis.tick_params(axis="y", which="minor", labelsize=7)
        axis.set_xlabel("worker processes")
        axis.set_xticks(worker_counts)
        axis.grid(True, which="both", alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    machine = results["machine"]
    pinned = (
        f"pinned to CPU {machine['pinned_cpu']}"
        if machine["pinned_cpu"] is not None
        else "not pinned"
    )
    lat = results.get("latency", {})
    single = ", ".join(
        f"{n}: {s['median_us']:.0f} µs"
        for n, s in lat.items()
        if n in (SNAKEPIT, FLOOR, PPE, TRIO_PARALLEL)
    )
    fig.suptitle(
        f"snakepit-trio vs peers, small (~100 B) echo; {machine['cpu_count']} CPUs, {pinned}, "
        f"load {machine['loadavg'][0]}\n1 caller/1 worker median latency: {single}\n"
        "(the raw floors run one loop per pipe: no queueing, so their latency is per round trip)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
