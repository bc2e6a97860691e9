"""``bench``: a quick latency and throughput table for one command (the full suite with
baselines is bench/run.py in the source tree)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

import snakepit_trio as sp

from ._common import EXIT_OK, PROG, Style, dumps, parse_args_json, run_async, table
from ._options import make_adapter, pool_config

__all__ = ["cmd_bench"]


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cmd_bench(ns: argparse.Namespace) -> int:
    adapter = make_adapter(ns.adapter, ns.wire)
    command, call_args = ns.command, parse_args_json(ns.args_json)
    config = pool_config(ns)
    report: dict[str, Any] = {"adapter": adapter.name, "workers": ns.workers}

    async def go() -> None:
        began = time.perf_counter()
        async with sp.open_pool(adapter, size=ns.workers, config=config) as pool:
            report["startup_ms"] = (time.perf_counter() - began) * 1000
            report["wire"] = pool.workers()[0].protocol
            for _ in range(min(50, ns.requests)):  # warm-up
                await pool.execute(command, call_args)
            sequential: list[float] = []
            t0 = time.perf_counter()
            for _ in range(ns.requests):
                t = time.perf_counter()
                await pool.execute(command, call_args)
                sequential.append(time.perf_counter() - t)
            report["sequential"] = _summary(sequential, time.perf_counter() - t0)

            burst: list[float] = []

            async def caller(n: int) -> None:
                for _ in range(n):
                    t = time.perf_counter()
                    await pool.execute(command, call_args)
                    burst.append(time.perf_counter() - t)

            share, extra = divmod(ns.burst, ns.concurrency)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(ns.concurrency):
                    tg.start_soon(caller, share + (1 if i < extra else 0))
            report["burst"] = _summary(burst, time.perf_counter() - t0)
            report["burst"]["callers"] = ns.concurrency
            report["stats"] = pool.stats()

    run_async(go)
    if ns.json:
        print(dumps(report))
        return EXIT_OK
    style = Style(sys.stdout)
    print(
        style.bold(
            f"{PROG} bench: {report['adapter']}, {ns.workers} workers, wire {report['wire']}"
        )
    )
    print(style.dim(f"  command {command!r}; pool start-up {report['startup_ms']:.0f} ms"))
    rows: list[list[object]] = [["", "requests", "callers", "p50", "p99", "throughput"]]
    for name, callers in (("sequential", 1), ("burst", ns.concurrency)):
        r = report[name]
        rows.append(
            [
                name,
                r["requests"],
                callers,
                f"{r['p50_ms']:.3f} ms",
                f"{r['p99_ms']:.3f} ms",
                f"{r['per_second']:,.0f} req/s",
            ]
        )
    for text in table(rows, indent="  "):
        print(text)
    print(
        style.dim(
            "  a quick look; the full suite with baselines lives in bench/ of the source tree"
        )
    )
    return EXIT_OK


def _summary(samples: list[float], wall: float) -> dict[str, Any]:
    return {
        "requests": len(samples),
        "seconds": wall,
        "per_second": len(samples) / wall if wall else 0.0,
        "p50_ms": statistics.median(samples) * 1000,
        "p99_ms": _percentile(samples, 0.99) * 1000,
        "mean_ms": statistics.fmean(samples) * 1000,
    }
