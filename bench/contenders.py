"""The contenders: every way the benchmark runs ``echo`` in another process.

Each contender's ``run(job)`` starts its workers, warms them up (every worker serves at least
once), measures ``job.n`` requests from ``job.callers`` concurrent callers while counting CPU,
and tears everything down again before returning a :class:`~harness.Sample`.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any

import anyio
import anyio.to_process
import msgpack
import trio
import trio_parallel
from harness import Sample, Stopwatch
from workloads import echo

import snakepit_trio as sp

BENCH_DIR = Path(__file__).resolve().parent
RAW_CHILD = BENCH_DIR / "raw_echo_child.py"
HANDLER = "bench_handler:BenchHandler"

Call = Callable[[Any], Awaitable[Any]]


@dataclass
class Job:
    scenario: str
    workers: int
    callers: int
    n: int
    payload: Any
    warmup: int = 50

    def sample(
        self,
        contender: str,
        watch: Stopwatch,
        latencies: list[float],
        *,
        callers: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Sample:
        return Sample(
            self.scenario,
            contender,
            self.workers,
            callers or self.callers,
            self.n,
            watch.elapsed,
            latencies,
            watch.parent_cpu,
            watch.worker_cpu,
            extra or {},
        )


class Contender:
    name = "?"

    def run(self, job: Job) -> Sample:
        raise NotImplementedError


def bench_adapter(wire: sp.Wire = "auto") -> sp.PythonAdapter:
    """A Python bridge worker serving ``bench_handler.BenchHandler``."""
    return sp.PythonAdapter(HANDLER, wire=wire, env={"PYTHONPATH": str(BENCH_DIR)})


def _check_echo(payload: Any, result: Any, who: str) -> None:
    if result != payload:
        raise AssertionError(f"{who} did not echo the payload back")


# ---------------------------------------------------------------------- async contenders


async def drive(call: Call, payload: Any, n: int, callers: int) -> list[float]:
    """``n`` calls from ``callers`` concurrent tasks; returns each call's latency."""
    latencies: list[float] = []
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = perf_counter()
            await call(payload)
            latencies.append(perf_counter() - started)

    if callers == 1:
        await caller()
    else:
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
    return latencies


class AsyncContender(Contender):
    """A contender driven from trio tasks through an async ``call(payload)``."""

    def open(self, workers: int) -> contextlib.AbstractAsyncContextManager[Call]:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        """Extra facts about the run just measured (read before teardown)."""
        return {}

    def run(self, job: Job) -> Sample:
        return trio.run(self._run, job)

    async def _run(self, job: Job) -> Sample:
        async with self.open(job.workers) as call:
            _check_echo(job.payload, await call(job.payload), self.name)
            await drive(call, job.payload, max(job.warmup, job.callers * 4), job.callers)
            with Stopwatch() as watch:
                latencies = await drive(call, job.payload, job.n, job.callers)
            extra = self.details()
        return job.sample(self.name, watch, latencies, extra=extra)


class Snakepit(AsyncContender):
    """snakepit-trio with the Python bridge; ``max_in_flight > 1`` pipelines per worker."""

    def __init__(self, name: str, *, wire: sp.Wire = "auto", max_in_flight: int = 1) -> None:
        self.name = name
        self.wire = wire
        self.max_in_flight = max_in_flight
        self._pool: sp.Pool | None = None

    @asynccontextmanager
    async def open(self, workers: int) -> AsyncIterator[Call]:
        config = sp.PoolConfig(
            max_in_flight=self.max_in_flight, health_check_interval=None, max_queue=100_000
        )
        async with sp.open_pool(bench_adapter(self.wire), size=workers, config=config) as pool:
            if self.max_in_flight > 1 and "multiplex" not in pool.features:
                raise RuntimeError("the bridge does not announce 'multiplex'")
            self._pool = pool
            execute = pool.execute

            async def call(payload: Any) -> Any:
                return await execute("bench_echo", payload)

            try:
                yield call
            finally:
                self._pool = None

    def details(self) -> dict[str, Any]:
        assert self._pool is not None
        return {"per_worker_requests": [w.total_requests for w in self._pool.workers()]}


class TrioParallel(AsyncContender):
    name = "trio-parallel"

    @asynccontextmanager
    async def open(self, workers: int) -> AsyncIterator[Call]:
        limiter = trio.CapacityLimiter(workers)
        async with trio_parallel.open_worker_context() as ctx:

            async def call(payload: Any) -> Any:
                return await ctx.run_sync(echo, payload, limiter=limiter)

            yield call


class AnyioToProcess(AsyncContender):
    name = "anyio.to_process"

    @asynccontextmanager
    async def open(self, workers: int) -> AsyncIterator[Call]:
        limiter = anyio.CapacityLimiter(workers)

        async def call(payload: Any) -> Any:
            return await anyio.to_process.run_sync(echo, payload, limiter=limiter)

        yield call


# ---------------------------------------------------------------------- the raw floor


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)


class RawPipe:
    """One child echoing MessagePack frames; the parent side is bare trio low-level I/O."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(RAW_CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        for fd in (self.wfd, self.rfd):
            os.set_blocking(fd, False)
            _grow_pipe(fd)
        self.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self.buffer = bytearray()

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def frame(self, value: Any) -> bytes:
        body = self.packer.pack(value)
        return len(body).to_bytes(4, "big") + body

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                pass
            if view:
                await trio.lowlevel.wait_writable(self.wfd)

    def frames(self) -> list[Any]:
        """Decode every whole frame buffered so far."""
        buffer = self.buffer
        out: list[Any] = []
        pos = 0
        while len(buffer) - pos >= 4:
            size = int.from_bytes(buffer[pos : pos + 4], "big")
            if len(buffer) - pos - 4 < size:
                break
            out.append(msgpack.unpackb(buffer[pos + 4 : pos + 4 + size], raw=False))
            pos += 4 + size
        del buffer[:pos]
        return out

    async def read_some(self) -> list[Any]:
        """Wait (one checkpoint) until the child wrote something; return the frames completed."""
        while True:
            await trio.lowlevel.wait_readable(self.rfd)
            try:
                data = os.read(self.rfd, 1 << 20)
            except BlockingIOError:
                continue
            if not data:
                raise EOFError("the raw echo child exited")
            self.buffer += data
            frames = self.frames()
            if frames:
                return frames

    async def roundtrip(self, value: Any) -> Any:
        await self.write(self.frame(value))
        (reply,) = await self.read_some()
        return reply


class RawTrio(Contender):
    """The floor: one loop per child, one request at a time; or, pipelined, each child kept
    busy with ``callers / workers`` requests in flight."""

    def __init__(self, name: str, *, pipelined: bool = False) -> None:
        self.name = name
        self.pipelined = pipelined

    def run(self, job: Job) -> Sample:
        return trio.run(self._run, job)

    async def _run(self, job: Job) -> Sample:
        pipes = [RawPipe() for _ in range(job.workers)]
        try:
            for pipe in pipes:
                _check_echo(job.payload, await pipe.roundtrip(job.payload), self.name)
                for _ in range(job.warmup):
                    await pipe.roundtrip(job.payload)
            shares = [job.n // len(pipes) + (i < job.n % len(pipes)) for i in range(len(pipes))]
            latencies: list[float] = []
            with Stopwatch() as watch:
                async with trio.open_nursery() as nursery:
                    for pipe, share in zip(pipes, shares, strict=True):
                        if self.pipelined:
                            window = max(1, job.callers // len(pipes))
                            nursery.start_soon(
                                _pipelined, pipe, job.payload, share, window, latencies
                            )
                        else:
                            nursery.start_soon(_sequential, pipe, job.payload, share, latencies)
        finally:
            for pipe in pipes:
                pipe.close()
        return job.sample(
            self.name, watch, latencies, callers=job.callers if self.pipelined else len(pipes)
        )


async def _sequential(pipe: RawPipe, payload: Any, n: int, latencies: list[float]) -> None:
    for _ in range(n):
        started = perf_counter()
        await pipe.roundtrip(payload)
        latencies.append(perf_counter() - started)


async def _pipelined(
    pipe: RawPipe, payload: Any, n: int, window: int, latencies: list[float]
) -> None:
    """Keep ``window`` requests in flight; the replies read together are refilled in one write."""
    frame = pipe.frame(payload)
    sent_at: list[float] = []
    first = min(window, n)
    now = perf_counter()
    sent_at.extend([now] * first)
    await pipe.write(frame * first)
    sent = first
    received = 0
    while received < n:
        replies = await pipe.read_some()
        now = perf_counter()
        for _ in replies:
            latencies.append(now - sent_at[received])
            received += 1
        more = min(len(replies), n - sent)
        if more:
            sent_at.extend([now] * more)
            sent += more
            await pipe.write(frame * more)


# ---------------------------------------------------------------------- sync peers


class SyncContender(Contender):
    """A peer with a blocking API, driven from this thread (no event loop)."""

    def open(self, workers: int) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def call(self, handle: Any, payload: Any) -> Any:
        """One blocking call."""
        raise NotImplementedError

    def window(
        self, handle: Any, payload: Any, n: int, callers: int, latencies: list[float]
    ) -> None:
        """``n`` calls with ``callers`` outstanding at all times."""
        raise NotImplementedError

    def run(self, job: Job) -> Sample:
        payload = job.payload
        with self.open(job.workers) as handle:
            _check_echo(payload, self.call(handle, payload), self.name)
            warmup = max(job.warmup, job.workers * 4)
            self.window(handle, payload, warmup, max(job.callers, job.workers), [])
            latencies: list[float] = []
            with Stopwatch() as watch:
                if job.callers == 1:
                    for _ in range(job.n):
                        t0 = perf_counter()
                        self.call(handle, payload)
                        latencies.append(perf_counter() - t0)
                else:
                    self.window(handle, payload, job.n, job.callers, latencies)
        return job.sample(self.name, watch, latencies)


class PoolExecutor(SyncContender):
    name = "ProcessPoolExecutor"

    def open(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers)

    def call(self, handle: ProcessPoolExecutor, payload: Any) -> Any:
        return handle.submit(echo, payload).result()

    def window(
        self,
        handle: ProcessPoolExecutor,
        payload: Any,
        n: int,
        callers: int,
        latencies: list[float],
    ) -> None:
        """Futures kept ``callers`` deep, refilled as they complete."""
        pending: dict[Future[Any], float] = {}
        submitted = 0
        while submitted < n or pending:
            while submitted < n and len(pending) < callers:
                pending[handle.submit(echo, payload)] = perf_counter()
                submitted += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            now = perf_counter()
            for future in done:
                future.result()
                latencies.append(now - pending.pop(future))


class MultiprocessingPool(SyncContender):
    name = "multiprocessing.Pool"

    def open(self, workers: int) -> Any:
        return multiprocessing.Pool(processes=workers)

    def call(self, handle: Any, payload: Any) -> Any:
        return handle.apply(echo, (payload,))

    def window(
        self, handle: Any, payload: Any, n: int, callers: int, latencies: list[float]
    ) -> None:
        """``apply_async`` with at most ``callers`` outstanding (a semaphore released by the
        completion callbacks, which run in the pool's result thread)."""
        slots = threading.Semaphore(callers)
        finished = threading.Event()
        errors: list[BaseException] = []
        count = 0

        def completion(t0: float) -> tuple[Callable[[Any], None], Callable[[BaseException], None]]:
            def ok(_result: Any) -> None:
                nonlocal count
                latencies.append(perf_counter() - t0)
                count += 1
                slots.release()
                if count == n:
                    finished.set()

            def failed(exc: BaseException) -> None:
                errors.append(exc)
                finished.set()

            return ok, failed

        for _ in range(n):
            slots.acquire()
            if errors:
                break
            ok, failed = completion(perf_counter())
            handle.apply_async(echo, (payload,), callback=ok, error_callback=failed)
        finished.wait()
        if errors:
            raise errors[0]
