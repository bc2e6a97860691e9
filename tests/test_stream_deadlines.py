"""A stream's deadline is the pool's to enforce, never a cancel scope around the caller's code.

Streams are often consumed inside async generators (a web framework's streaming response
body). An async generator cannot hold a cancel scope across its ``yield``, so the pool times
a stream out itself: the worker-side stream is cancelled at the deadline and the next
iteration raises ``WorkerTimeout``. Real workers, both anyio backends.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

TESTING = "snakepit_trio_bridge.testing:TestingHandler"
FAST = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0, cancel_grace=2.0)


async def body(pool: sp.Pool, timeout: float) -> AsyncIterator[Any]:
    """What a streaming web response does: the stream's block around ``yield``."""
    async with pool.stream("count_stream", {"count": 10**9}, timeout=timeout) as chunks:
        async for chunk in chunks:
            yield chunk


async def test_a_deadline_passing_while_a_generator_is_suspended_times_the_stream_out() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=FAST) as pool:
        gen = body(pool, timeout=0.5)
        first = await gen.__anext__()
        assert first == {"i": 0}
        await anyio.sleep(1.0)  # suspended past the deadline, as a slow HTTP client makes it
        # The worker-side stream was cancelled at the deadline: the worker is free again.
        with anyio.fail_after(5):
            while pool.workers()[0].state != "idle":
                await anyio.sleep(0.02)
        assert (await pool.execute("ping"))["status"] == "ok"
        with pytest.raises(sp.WorkerTimeout):
            while True:
                await gen.__anext__()
        await gen.aclose()
        stats = pool.stats()
        assert stats["timeouts"] == 1
        assert stats["cancelled"] == 0


async def test_a_stream_deadline_does_not_cancel_the_callers_own_code() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=FAST) as pool:
        survived = False
        with pytest.raises(sp.WorkerTimeout):
            async with pool.stream("count_stream", {"count": 10**9}, timeout=0.3) as chunks:
                async for _ in chunks:
                    await anyio.sleep(0.6)  # the caller's own await is not cancelled
                    survived = True
        assert survived
        assert pool.stats()["timeouts"] == 1


async def test_a_stream_that_ends_before_its_deadline_is_ok() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=FAST) as pool:
        async with pool.stream("count_stream", {"count": 3}, timeout=30) as chunks:
            got = [chunk async for chunk in chunks]
        assert got == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert chunks.result == {"count": 3}
        stats = pool.stats()
        assert (stats["timeouts"], stats["errors"], stats["cancelled"]) == (0, 0, 0)


async def test_a_generator_dropped_without_aclose_releases_its_worker() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=FAST) as pool:
        gen = body(pool, timeout=3600)
        await gen.__anext__()
        assert pool.workers()[0].state == "busy"
        del gen  # never closed: the event loop's async-generator finalizer closes it
        gc.collect()
        with anyio.fail_after(5):
            while pool.workers()[0].state != "idle":
                await anyio.sleep(0.02)
        assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.stats()["cancelled"] == 1
