"""A hot loop for profilers: one scenario of bench/run.py, run for a fixed time.

    python bench/experiments/hotloop.py latency|throughput|mux|mux1|stream|big [seconds]
        [--mallopt] [--worker-tunables]

``--mallopt`` sets glibc's mmap and trim thresholds in this (the pool's) process with
mallopt(3); ``--worker-tunables`` starts the workers with the same settings through
GLIBC_TUNABLES. Both keep freed megabyte buffers for reuse instead of unmapping them (each
fresh mapping costs a page fault per 4 KiB page).

Profile it with py-spy (``py-spy record --subprocesses -f raw -o out.txt -- python ...``) and
fold the stacks with ``stacks.py``.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from contenders import BENCH_DIR, HANDLER
from workloads import SMALL, big_payload

import snakepit_trio as sp

TUNABLES = "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=134217728"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """mallopt(3) with the values of TUNABLES, in this process."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)


async def main(mode: str, seconds: float, worker_tunables: bool) -> None:
    workers, callers, in_flight, payload = {
        "latency": (1, 1, 1, SMALL),
        "throughput": (2, 16, 1, SMALL),
        "mux": (2, 16, 16, SMALL),
        "mux1": (1, 16, 16, SMALL),
        "stream": (1, 1, 1, SMALL),
        "big": (1, 1, 1, big_payload()),
    }[mode]
    config = sp.PoolConfig(max_in_flight=in_flight, health_check_interval=None)
    env = {"PYTHONPATH": str(BENCH_DIR)}
    if worker_tunables:
        env["GLIBC_TUNABLES"] = TUNABLES
    adapter = sp.PythonAdapter(HANDLER, env=env)
    async with sp.open_pool(adapter, size=workers, config=config) as pool:
        done = 0
        deadline = perf_counter() + seconds
        started = perf_counter()
        if mode == "stream":
            while perf_counter() < deadline:
                async with pool.stream("count_stream", {"n": 20_000}) as chunks:
                    async for _ in chunks:
                        done += 1
        else:

            async def caller() -> None:
                nonlocal done
                while perf_counter() < deadline:
                    await pool.execute("bench_echo", payload)
                    done += 1

            async with trio.open_nursery() as nursery:
                for _ in range(callers):
                    nursery.start_soon(caller)
        elapsed = perf_counter() - started
    print(f"{mode}: {done / elapsed:.0f} per second ({done} in {elapsed:.1f} s)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--mallopt" in sys.argv:
        keep_freed_memory()
    trio.run(
        main, args[0], float(args[1]) if len(args) > 1 else 5.0, "--worker-tunables" in sys.argv
    )
