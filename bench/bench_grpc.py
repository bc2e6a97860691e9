"""gRPC transport benchmark: GrpcPythonAdapter against grpclib used natively, in one run.

    python bench/bench_grpc.py [--calls 2000] [--chunks 20000] [--rounds 3] [--listen unix]

Every contender talks to the same worker server (``python -m snakepit_trio_bridge --transport grpc``
with ``snakepit_trio_bridge.testing:TestingHandler``) and runs the same two workloads:

- unary: ``echo {"x": 1}`` called back to back by one caller (latency per call);
- stream: ``count_stream`` of ``--chunks`` chunks read to the end (chunks per second).

Contenders: grpclib on asyncio with the generated stub (the floor: no pool, no thread hop);
a one-worker pool with ``GrpcPythonAdapter`` under trio (the grpclib client on the pool's
asyncio thread) and under asyncio (grpclib on the host loop); and, for scale, the stdio
``PythonAdapter`` under trio. Rounds interleave the contenders so that the noise of a shared
machine hits them alike; the table shows the median over rounds. Start-up is not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bridges" / "python"))

from snakepit_trio_bridge._grpc_generated.snakepit.v1 import (  # noqa: E402
    ExecuteRequest,
    SnakepitBridgeStub,
)
from snakepit_trio_bridge.grpc_wire import SizeLimitedCodec, pack, unpack  # noqa: E402

import snakepit_trio as sp  # noqa: E402

HANDLER = "snakepit_trio_bridge.testing:TestingHandler"
ECHO_ARGS = {"x": 1}


@dataclass
class Sample:
    latencies: list[float] = field(default_factory=list)  # seconds per unary call
    chunks_per_second: float = 0.0


@dataclass
class Options:
    calls: int
    chunks: int
    listen: str


# ---------------------------------------------------------------------- contenders


async def _time_unary(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    for _ in range(min(100, calls)):
        await call()
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    return latencies


def native_grpclib(options: Options) -> Sample:
    """grpclib on asyncio with the generated stub, against a worker started by hand."""
    # The worker answers only calls that carry its token (and refuses TCP without one).
    token = secrets.token_urlsafe(32)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "bridges" / "python"), env.get("PYTHONPATH", "")]
    )
    env["SNAKEPIT_GRPC_TOKEN"] = token
    metadata = [("authorization", f"Bearer {token}")]
    argv = [sys.executable, "-m", "snakepit_trio_bridge", "--transport", "grpc"]
    proc = subprocess.Popen(
        [*argv, "--listen", options.listen, "--handler", HANDLER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    address = proc.stdout.readline().decode().split()[1]

    async def run() -> Sample:
        from grpclib.client import Channel

        kind, _, where = address.partition(":")
        codec = SizeLimitedCodec()
        if kind == "unix":
            channel = Channel(path=where, codec=codec)
        else:
            host, _, port = where.rpartition(":")
            channel = Channel(host, int(port), codec=codec)
        stub = SnakepitBridgeStub(channel)
        echo = ExecuteRequest(command="echo", args=pack(ECHO_ARGS))

        async def unary() -> object:
            reply = await stub.execute(echo, metadata=metadata)
            return unpack(reply.result)

        sample = Sample(await _time_unary(unary, options.calls))
        request = ExecuteRequest(command="count_stream", args=pack({"count": options.chunks}))
        count = 0
        start = time.perf_counter()
        async for message in stub.execute_stream(request, metadata=metadata):
            for data in message.chunks:
                unpack(data)
                count += 1
        sample.chunks_per_second = count / (time.perf_counter() - start)
        channel.close()
        return sample

    try:
        return asyncio.run(run())
    finally:
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def pool_contender(adapter: Callable[[], sp.Adapter], backend: str) -> Callable[[Options], Sample]:
    def measure(options: Options) -> Sample:
        async def run() -> Sample:
            async with sp.open_pool(adapter(), size=1) as pool:

                async def unary() -> object:
                    return await pool.execute("echo", ECHO_ARGS)

                sample = Sample(await _time_unary(unary, options.calls))
                count = 0
                start = time.perf_counter()
                async with pool.stream("count_stream", {"count": options.chunks}) as chunks:
                    async for _ in chunks:
                        count += 1
                sample.chunks_per_second = count / (time.perf_counter() - start)
                return sample

        return anyio.run(run, backend=backend)

    return measure


# ---------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--listen", choices=("unix", "tcp"), default="unix")
    parsed = parser.parse_args()
    options = Options(parsed.calls, parsed.chunks, parsed.listen)

    def grpc() -> sp.Adapter:
        return sp.GrpcPythonAdapter(HANDLER, listen=parsed.listen)

    contenders: dict[str, Callable[[Options], Sample]] = {
        "grpclib native (asyncio, generated stub)": native_grpclib,
        "GrpcPythonAdapter (trio, loop thread)": pool_contender(grpc, "trio"),
        "GrpcPythonAdapter (asyncio, host loop)": pool_contender(grpc, "asyncio"),
        "PythonAdapter stdio (trio), for scale": pool_contender(
            lambda: sp.PythonAdapter(HANDLER), "trio"
        ),
    }
    results: dict[str, list[Sample]] = {name: [] for name in contenders}
    for round_ in range(parsed.rounds):
        for name, measure in contenders.items():
            results[name].append(measure(options))
            print(f"round {round_ + 1}/{parsed.rounds}: {name} done", file=sys.stderr)

    print(
        f"\ngRPC transport, {options.listen} socket, {os.cpu_count()} CPUs, "
        f"{parsed.rounds} rounds (median), {options.calls} calls, {options.chunks} chunks\n"
    )
    print("| contender | unary mean (µs) | unary p50 (µs) | unary p99 (µs) | stream (chunks/s) |")
    print("|---|---:|---:|---:|---:|")
    floor_mean = None
    for name, samples in results.items():
        means = [statistics.fmean(s.latencies) for s in samples]
        p50s = [statistics.median(s.latencies) for s in samples]
        p99s = [statistics.quantiles(s.latencies, n=100)[98] for s in samples]
        rates = [s.chunks_per_second for s in samples]
        mean = statistics.median(means)
        floor_mean = floor_mean or mean
        print(
            f"| {name} | {mean * 1e6:,.0f} ({mean / floor_mean:.2f}x) "
            f"| {statistics.median(p50s) * 1e6:,.0f} | {statistics.median(p99s) * 1e6:,.0f} "
            f"| {statistics.median(rates):,.0f} |"
        )


if __name__ == "__main__":
    main()
