"""What a queued request could cost: tracemalloc bytes per parked caller, for models of the
queueing path (not the library's code).

    python bench/experiments/queue_model.py [n]

- bare: a trio task parked on an Event (what any caller costs, whatever the pool does)
- stock: pool.execute() queued behind blocked workers (the real thing, for reference)
- flat: one coroutine between the caller and the wait (dispatch inlined), a slotted waiter
  holding the pre-encoded frame and a native trio.Event, the deadline in a heap shared by all
  waiters instead of a cancel scope per waiter, and the argument dict dropped once encoded
"""

from __future__ import annotations

import gc
import heapq
import itertools
import sys
import tracemalloc
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgpack
import trio
from contenders import bench_adapter
from workloads import SMALL

import snakepit_trio as sp


class Waiter:
    __slots__ = ("deadline", "event", "frame", "worker")

    def __init__(self, frame: bytes, deadline: float) -> None:
        self.frame = frame
        self.deadline = deadline
        self.event = trio.Event()
        self.worker: object = None


class FlatPool:
    """Just enough of a pool to queue: the shape of the proposed path."""

    def __init__(self) -> None:
        self.waiters: deque[Waiter] = deque()
        self.deadlines: list[tuple[float, int, Waiter]] = []
        self.ids = itertools.count()
        self.packer = msgpack.Packer(use_bin_type=True, autoreset=True)

    async def execute(self, command: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        request_id = next(self.ids)
        payload = self.packer.pack({"id": request_id, "command": command, "args": dict(args)})
        deadline = trio.current_time() + timeout
        waiter = Waiter(len(payload).to_bytes(4, "big") + payload, deadline)
        del payload, args
        self.waiters.append(waiter)
        heapq.heappush(self.deadlines, (deadline, request_id, waiter))
        await waiter.event.wait()
        return waiter.worker


async def measure(n: int, start: Callable[[trio.Nursery], Awaitable[Callable[[], bool]]]) -> float:
    async with trio.open_nursery() as nursery:
        ready = await start(nursery)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        spawn = nursery.start_soon
        for _ in range(n):
            spawn(_PARKER[0])
        while not ready():
            await trio.sleep(0.005)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        nursery.cancel_scope.cancel()
    return sum(d.size_diff for d in after.compare_to(before, "filename")) / n


_PARKER: list[Callable[[], Awaitable[object]]] = []


async def bare(n: int) -> float:
    event = trio.Event()
    parked = [0]

    async def park() -> None:
        parked[0] += 1
        await event.wait()

    async def start(_nursery: trio.Nursery) -> Callable[[], bool]:
        _PARKER[:] = [park]
        return lambda: parked[0] == n

    return await measure(n, start)


async def flat(n: int) -> float:
    pool = FlatPool()

    async def call() -> None:
        await pool.execute("bench_echo", SMALL)

    async def start(_nursery: trio.Nursery) -> Callable[[], bool]:
        _PARKER[:] = [call]
        return lambda: len(pool.waiters) == n

    return await measure(n, start)


async def stock(n: int) -> float:
    config = sp.PoolConfig(
        health_check_interval=None, max_queue=n + 10, queue_timeout=3600, drain_timeout=0.5
    )
    async with sp.open_pool(bench_adapter(), size=1, config=config) as pool:

        async def call() -> None:
            try:
                await pool.execute("bench_echo", SMALL, timeout=3600)
            except sp.SnakepitError:
                pass

        async def start(nursery: trio.Nursery) -> Callable[[], bool]:
            nursery.start_soon(pool.execute, "block", {"seconds": 3600})
            while pool.stats()["busy"] < 1:
                await trio.sleep(0.005)
            _PARKER[:] = [call]
            return lambda: pool.stats()["queued"] == n

        return await measure(n, start)


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    for name, model in (("bare", bare), ("stock", stock), ("flat", flat)):
        print(f"{name:6} {trio.run(model, count):7.0f} traced bytes per queued caller")
