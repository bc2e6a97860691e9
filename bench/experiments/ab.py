"""A/B measurements of proposed changes, prototyped as patches that live only in this script.

    python bench/experiments/ab.py EXPERIMENT VARIANT [VARIANT ...] [--rounds R] [--n N]
                                   [--pin CPU]

EXPERIMENT: latency (1 caller, 1 worker), throughput (16 callers, 2 workers, 1 in flight
each), mux (16 callers, 2 workers, max_in_flight=16), big (1 MiB echo), stream (small chunks
per second), gap (16 callers, 2 workers: how long a worker sits idle between its response
and its next request, seen from the pool), muxcpu (mux with a handler burning 300 µs of CPU).

VARIANT: ``ppe`` or ``floor`` (ProcessPoolExecutor or the raw trio pipe, for the ratio; request
experiments only), ``stock``, or ``+``-joined tweaks, e.g. ``balance``, ``read4m``, ``batch64+credits64``:

- ``balance``  (pool)   multiplexing dispatch picks the idle worker with the most free slots
                        (stock: the most recently parked one, so one worker takes them all)
- ``read4m``   (both)   read stdout/stdin 4 MiB at a time (stock: 256 KiB)
- ``batchK``   (bridge) stream chunks leave K per write (see tuned_bridge.py)
- ``lean``     (bridge) short request path for plain handlers (see tuned_bridge.py)
- ``copyless`` (both)   one copy per received payload, writev instead of header + payload
                        (see copyless.py)
- ``tunables`` (bridge) start workers with GLIBC_TUNABLES keeping freed memory mapped
- ``creditsN`` (config) PoolConfig(stream_credits=N)
- ``grantK``   (pool)   grant stream credit once ``credits / K`` chunks were consumed (stock:
                        K=2, i.e. every 16 chunks of 32)
- ``syncgrant`` (pool)  write a credit frame at once (one non-blocking os.write) instead of
                        spawning a task to write it

Every variant runs once per round, interleaved, so a noisy machine hits all alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import copyless  # noqa: E402
import trio  # noqa: E402
from contenders import BENCH_DIR, HANDLER, Job, PoolExecutor, RawTrio, drive  # noqa: E402
from harness import Stopwatch, percentile  # noqa: E402
from snakepit_bridge.protocol.messages import Response  # noqa: E402
from workloads import SMALL, big_payload  # noqa: E402

import snakepit_trio as sp  # noqa: E402
from snakepit_trio import _pool, _worker  # noqa: E402

TUNED_BRIDGE = HERE / "tuned_bridge.py"
TUNABLES = "glibc.malloc.mmap_threshold=67108864:glibc.malloc.trim_threshold=134217728"


class TunedAdapter(sp.PythonAdapter):
    """The Python bridge started through tuned_bridge.py with ``tweaks``."""

    def __init__(self, tweaks: str) -> None:
        super().__init__(HANDLER, env={"PYTHONPATH": f"{BENCH_DIR}{os.pathsep}{HERE}"})
        self.tweaks = tweaks

    def argv(self) -> list[str]:
        argv = super().argv()
        at = argv.index("-m")
        return [*argv[:at], str(TUNED_BRIDGE), *argv[at + 2 :]]

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["SNAKEPIT_BENCH_TWEAKS"] = self.tweaks
        return env


# ---------------------------------------------------------------------- pool-side patches


@contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def _balanced_take_now(stock: Any) -> Any:
    def take_now(self: Any, prefer: Any, command: str) -> Any:
        idle = self._idle
        if prefer is None and len(idle) > 1:
            worker = max(idle, key=lambda w: w.free)
            self._take(worker)
            return worker
        return stock(self, prefer, command)

    return take_now


def _anext_granting(divisor: int) -> Any:
    """ChunkStream.__anext__ (as of this writing) granting credit every credits/divisor chunks."""

    async def anext(self: Any) -> Any:
        call = self._call
        chunks = call.chunks
        while True:
            if chunks:
                item = chunks.popleft()
                self.count += 1
                if self._credits is not None:
                    self._ungranted += 1
                    if self._ungranted * divisor >= self._credits:
                        self._worker.grant_credit(call, self._ungranted)
                        self._ungranted = 0
                return item
            if call.done:
                if call.error is not None:
                    raise call.error
                if not call.response.success:
                    raise _pool._response_error(call.response)
                self.result = call.response.result
                raise StopAsyncIteration
            call.chunk_event = self._worker.pool._new_event()
            await call.chunk_event.wait()

    return anext


def _sync_grant(self: Any, call: Any, credits: int) -> None:
    """Worker.grant_credit writing the frame now when the pipe takes it whole."""
    conn = self.conn
    if conn is None or call.done or self._tg is None:
        return
    frame = conn.send_credit(call.id, credits)
    if not frame:
        return
    proc = self.proc
    if not self._writing and proc is not None and not proc.stdin_closed:
        try:
            if os.write(proc.stdin_fd, frame) == len(frame):
                return
        except BlockingIOError:
            pass
        except OSError:
            return
        raise RuntimeError("prototype: a partial credit write is not handled")
    self._tg.start_soon(self.write, frame)


class Variant:
    def __init__(self, spec: str) -> None:
        self.spec = spec
        parts = set() if spec == "stock" else set(spec.split("+"))
        self.balance = "balance" in parts
        self.read4m = "read4m" in parts
        self.sync_grant = "syncgrant" in parts
        self.copyless = "copyless" in parts
        self.tunables = "tunables" in parts
        self.credits: int | None = None
        self.grant_divisor: int | None = None
        bridge: list[str] = []
        for part in parts:
            if part.startswith("batch"):
                bridge.append(f"chunk_batch={part[5:] or 64}")
            elif part.startswith("credits"):
                self.credits = int(part[7:])
            elif part.startswith("grant") and part != "grant":
                self.grant_divisor = int(part[5:])
            elif part == "lean":
                bridge.append("lean")
            elif part == "copyless":
                bridge.append("copyless")
            elif part not in ("balance", "read4m", "syncgrant", "tunables"):
                raise SystemExit(f"unknown tweak {part!r}")
        if self.read4m:
            bridge.append(f"read_size={4 << 20}")
        self.bridge = ",".join(bridge)

    def adapter(self) -> sp.PythonAdapter:
        adapter = (
            TunedAdapter(self.bridge)
            if self.bridge
            else sp.PythonAdapter(HANDLER, env={"PYTHONPATH": str(BENCH_DIR)})
        )
        if self.tunables:
            adapter.env["GLIBC_TUNABLES"] = TUNABLES
        return adapter

    @contextmanager
    def pool_patches(self) -> Iterator[None]:
        with (
            patched(
                _pool.Pool,
                "_take_now",
                _balanced_take_now(_pool.Pool._take_now) if self.balance else _pool.Pool._take_now,
            ),
            patched(_worker, "_READ_SIZE", 4 << 20 if self.read4m else _worker._READ_SIZE),
            patched(
                _pool.ChunkStream,
                "__anext__",
                _anext_granting(self.grant_divisor)
                if self.grant_divisor
                else _pool.ChunkStream.__anext__,
            ),
            patched(
                _worker.Worker,
                "grant_credit",
                _sync_grant if self.sync_grant else _worker.Worker.grant_credit,
            ),
        ):
            saved = copyless.install_pool() if self.copyless else {}
            try:
                yield
            finally:
                copyless.restore(saved)

    @asynccontextmanager
    async def pool(self, workers: int, in_flight: int) -> AsyncIterator[sp.Pool]:
        extra = {"stream_credits": self.credits} if self.credits else {}
        config = sp.PoolConfig(max_in_flight=in_flight, health_check_interval=None, **extra)
        with self.pool_patches():
            async with sp.open_pool(self.adapter(), size=workers, config=config) as pool:
                yield pool


# ---------------------------------------------------------------------- experiments

SHAPES = {
    "latency": (1, 1, 1, SMALL),
    "throughput": (2, 16, 1, SMALL),
    "mux": (2, 16, 16, SMALL),
    "big": (1, 1, 1, None),
    "gap": (2, 16, 1, SMALL),
    "muxcpu": (2, 16, 16, {"us": 300}),
}


def peer_experiment(spec: str, name: str, n: int) -> dict[str, Any]:
    workers, callers, _, payload = SHAPES[name]
    contender = PoolExecutor() if spec == "ppe" else RawTrio("floor", pipelined=False)
    job = Job(name, workers, callers, n, big_payload() if payload is None else payload)
    sample = contender.run(job)
    return {
        "rate": sample.rate,
        "latencies": sample.latencies,
        "parent_cpu_us": sample.parent_cpu / n * 1e6,
        "worker_cpu_us": sample.worker_cpu / n * 1e6,
    }


async def request_experiment(variant: Variant, name: str, n: int) -> dict[str, Any]:
    workers, callers, in_flight, payload = SHAPES[name]
    if payload is None:
        payload = big_payload()
    async with variant.pool(workers, in_flight) as pool:
        command = "spin" if name == "muxcpu" else "bench_echo"

        async def call(value: Any) -> Any:
            return await pool.execute(command, value)

        await drive(call, payload, max(50, callers * 4), callers)
        with Stopwatch() as watch:
            latencies = await drive(call, payload, n, callers)
        spread = [w.total_requests for w in pool.workers()]
    return {
        "rate": n / watch.elapsed,
        "latencies": latencies,
        "parent_cpu_us": watch.parent_cpu / n * 1e6,
        "worker_cpu_us": watch.worker_cpu / n * 1e6,
        "faults": (watch.parent_faults / n, watch.worker_faults / n),
        "per_worker": spread,
    }


async def gap_experiment(variant: Variant, name: str, n: int) -> dict[str, Any]:
    """Idle time of a worker between its response being routed and its next frame written."""
    gaps: list[float] = []
    freed: dict[int, float] = {}
    stock_route = _worker.Worker._route
    stock_write = _worker.Worker.write

    def route(self: Any, event: Any) -> None:
        if type(event) is Response:
            freed[self.id] = perf_counter()
        stock_route(self, event)

    async def write(self: Any, data: bytes) -> None:
        at = freed.pop(self.id, None)
        if at is not None:
            gaps.append(perf_counter() - at)
        await stock_write(self, data)

    with patched(_worker.Worker, "_route", route), patched(_worker.Worker, "write", write):
        result = await request_experiment(variant, "gap", n)
    result["gap_median_us"] = statistics.median(gaps) * 1e6
    result["gap_p90_us"] = percentile(gaps, 90) * 1e6
    return result


async def stream_experiment(variant: Variant, name: str, n: int) -> dict[str, Any]:
    async with variant.pool(1, 1) as pool:
        async with pool.stream("count_stream", {"n": 200}) as warm:
            async for _ in warm:
                pass
        count = 0
        with Stopwatch() as watch:
            async with pool.stream("count_stream", {"n": n}) as chunks:
                async for _ in chunks:
                    count += 1
    return {
        "rate": count / watch.elapsed,
        "latencies": [],
        "parent_cpu_us": watch.parent_cpu / count * 1e6,
        "worker_cpu_us": watch.worker_cpu / count * 1e6,
    }


EXPERIMENTS = {
    "latency": (request_experiment, 3000),
    "throughput": (request_experiment, 4000),
    "mux": (request_experiment, 8000),
    "muxcpu": (request_experiment, 3000),
    "big": (request_experiment, 60),
    "gap": (gap_experiment, 4000),
    "stream": (stream_experiment, 50_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int)
    parser.add_argument("--pin", type=int)
    args = parser.parse_args()
    if args.pin is not None:
        os.sched_setaffinity(0, {args.pin})
    function, default_n = EXPERIMENTS[args.experiment]
    n = args.n or default_n
    peers = ("ppe", "floor")
    variants = [spec if spec in peers else Variant(spec) for spec in args.variants]
    runs: dict[str, list[dict[str, Any]]] = {spec: [] for spec in args.variants}
    for _ in range(args.rounds):
        for variant in variants:
            if isinstance(variant, str):
                runs[variant].append(peer_experiment(variant, args.experiment, n))
            else:
                runs[variant.spec].append(trio.run(function, variant, args.experiment, n))
    print(f"{args.experiment}: n={n} x {args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
    for spec, results in runs.items():
        latencies = [x for r in results for x in r["latencies"]]
        rates = [r["rate"] for r in results]
        line = (
            f"  {spec:22} {statistics.median(rates):9.0f}/s (rounds: "
            + " ".join(f"{r:.0f}" for r in rates)
            + ")"
        )
        if latencies:
            line += (
                f"  median {statistics.median(latencies) * 1e6:8.1f} µs"
                f"  p99 {percentile(latencies, 99) * 1e6:8.1f} µs"
            )
        line += (
            f"  CPU/req parent {statistics.median(r['parent_cpu_us'] for r in results):6.1f} µs"
            f" workers {statistics.median(r['worker_cpu_us'] for r in results):6.1f} µs"
        )
        if "faults" in results[0]:
            line += "  page faults/req parent {:.0f} workers {:.0f}".format(
                statistics.median(r["faults"][0] for r in results),
                statistics.median(r["faults"][1] for r in results),
            )
        if "gap_median_us" in results[0]:
            line += (
                f"  idle gap median {statistics.median(r['gap_median_us'] for r in results):.1f}"
                f" µs p90 {statistics.median(r['gap_p90_us'] for r in results):.1f} µs"
            )
        if "per_worker" in results[0]:
            line += f"  per worker {results[-1]['per_worker']}"
        print(line)


if __name__ == "__main__":
    main()
