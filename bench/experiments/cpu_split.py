"""User vs system CPU and context switches per request: snakepit-trio vs the raw floor.

    python bench/experiments/cpu_split.py [n] [--pin CPU]

One sequential caller, one worker, the small echo. psutil reads each process's counters
before and after the timed loop.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from time import perf_counter
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil
import trio
from contenders import RawPipe, bench_adapter
from workloads import SMALL

import snakepit_trio as sp


def counters(proc: psutil.Process) -> tuple[float, float, int, int]:
    cpu = proc.cpu_times()
    ctx = proc.num_ctx_switches()
    return cpu.user, cpu.system, ctx.voluntary, ctx.involuntary


def report(
    name: str, n: int, elapsed: float, before: dict[str, Any], after: dict[str, Any]
) -> None:
    print(f"{name}: {elapsed / n * 1e6:.1f} µs per round trip")
    for role in before:
        b, a = before[role], after[role]
        per = [(a[i] - b[i]) / n for i in range(4)]
        print(
            f"  {role:6} user {per[0] * 1e6:6.1f} µs  sys {per[1] * 1e6:6.1f} µs  "
            f"voluntary switches {per[2]:.2f}  involuntary {per[3]:.2f}"
        )


async def snakepit(n: int) -> None:
    config = sp.PoolConfig(health_check_interval=None)
    async with sp.open_pool(bench_adapter(), size=1, config=config) as pool:
        me = psutil.Process()
        child = psutil.Process(pool.workers()[0].pid)
        for _ in range(500):
            await pool.execute("bench_echo", SMALL)
        before = {"pool": counters(me), "worker": counters(child)}
        started = perf_counter()
        for _ in range(n):
            await pool.execute("bench_echo", SMALL)
        elapsed = perf_counter() - started
        after = {"pool": counters(me), "worker": counters(child)}
    report("snakepit-trio", n, elapsed, before, after)


async def floor(n: int) -> None:
    pipe = RawPipe()
    me = psutil.Process()
    child = psutil.Process(pipe.proc.pid)
    for _ in range(500):
        await pipe.roundtrip(SMALL)
    before = {"pool": counters(me), "worker": counters(child)}
    started = perf_counter()
    for _ in range(n):
        await pipe.roundtrip(SMALL)
    elapsed = perf_counter() - started
    after = {"pool": counters(me), "worker": counters(child)}
    pipe.close()
    report("raw trio floor", n, elapsed, before, after)


if __name__ == "__main__":
    if "--pin" in sys.argv:
        os.sched_setaffinity(0, {int(sys.argv[sys.argv.index("--pin") + 1])})
    count = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5000
    for _ in range(2):
        trio.run(snakepit, count)
        trio.run(floor, count)
