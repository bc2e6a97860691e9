"""A hot loop for profilers: one scenario of bench/run.py, run for a fixed time.

    python bench/tools/hotloop.py latency|throughput|mux|mux1|stream|big [seconds]
        [--mallopt] [--worker-tunables]

Scenarios: ``latency`` (1 caller, 1 worker), ``throughput`` (16 callers, 2 workers, one
request in flight each), ``mux`` (the same with ``max_in_flight=16``), ``mux1`` (16 callers,
1 worker, ``max_in_flight=16``), ``stream`` (small chunks from one worker), ``big`` (a 1 MiB
echo). It prints the rate it reached.

``--mallopt`` sets glibc's mmap and trim thresholds in this (the pool's) process with
mallopt(3), so that freed megabyte buffers are kept for reuse instead of unmapped (each fresh
mapping costs a page fault per 4 KiB page). Python workers get such settings from the pool
already (``GLIBC_TUNABLES``, blocks up to 4 MiB); ``--worker-tunables`` gives them this
tool's larger thresholds instead.

Profile it with py-spy, and fold the stacks per process role with ``stacks.py``:

    py-spy record --subprocesses -f raw -o out.txt -- python bench/tools/hotloop.py mux 10
    python bench/tools/stacks.py out.txt --match snakepit_trio

or with ``perf record -g`` (page faults: ``perf record -e page-faults -g``).
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path
from time import perf_counter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio
from workloads import SMALL, big_payload

import snakepit_trio as sp

# Only workloads and the library are imported (not contenders, which needs the bench extra):
# the tool runs wherever the library does.
BENCH_DIR = Path(__file__).resolve().parent.parent
HANDLER = "bench_handler:BenchHandler"
TUNABLES = "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=134217728"
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# workers, callers, requests in flight per worker, payload (None: the 1 MiB one)
SCENARIOS = {
    "latency": (1, 1, 1, SMALL),
    "throughput": (2, 16, 1, SMALL),
    "mux": (2, 16, 16, SMALL),
    "mux1": (1, 16, 16, SMALL),
    "stream": (1, 1, 1, SMALL),
    "big": (1, 1, 1, None),
}


def keep_freed_memory() -> None:
    """mallopt(3) with the values of TUNABLES, in this process."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
    libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)


async def main(mode: str, seconds: float, worker_tunables: bool) -> None:
    workers, callers, in_flight, payload = SCENARIOS[mode]
    if payload is None:
        payload = big_payload()
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=SCENARIOS)
    parser.add_argument("seconds", type=float, nargs="?", default=5.0)
    parser.add_argument("--mallopt", action="store_true", help="keep freed memory (this process)")
    parser.add_argument("--worker-tunables", action="store_true", help="the same in the workers")
    args = parser.parse_args()
    if args.mallopt:
        keep_freed_memory()
    trio.run(main, args.mode, args.seconds, args.worker_tunables)
