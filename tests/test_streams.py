"""Streaming results and cancellation that reaches the worker (real processes, both backends)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

HANDLERS = str(Path(__file__).parent / "handlers")
# cancel_grace: tests that expect a confirmed cancel (same pid) need margin on a loaded machine.
CONFIG = sp.PoolConfig(cancel_grace=2.0, shutdown_grace=1.0, kill_grace=1.0)


def make_testing() -> sp.PythonAdapter:
    return sp.PythonAdapter("snakepit_trio_bridge.testing:TestingHandler")


def streams() -> sp.PythonAdapter:
    return sp.PythonAdapter("stream_handlers:StreamHandler", env={"PYTHONPATH": HANDLERS})


def read_record(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


async def test_chunks_arrive_in_order_as_they_are_produced() -> None:
    async with sp.open_pool(streams(), size=1, config=CONFIG) as pool:
        arrivals: list[float] = []
        produced: list[float] = []
        async with pool.stream("timed_stream", {"count": 5, "interval": 0.1}) as chunks:
            async for stamp in chunks:
                arrivals.append(time.time())
                produced.append(stamp)
        assert chunks.result == "finished"
        assert produced == sorted(produced)
        # Each chunk is delivered right after it is produced, not in a burst at the end.
        assert all(a - p < 0.25 for a, p in zip(arrivals, produced, strict=True))
        assert arrivals[-1] - arrivals[0] > 0.3


async def test_break_closes_the_generator_and_the_worker_serves_again(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    async with sp.open_pool(make_testing(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        seen = []
        async with pool.stream(
            "count_stream", {"count": 10_000, "record_path": str(record)}
        ) as chunks:
            async for chunk in chunks:
                seen.append(chunk["i"])
                if len(seen) == 3:
                    break
        assert seen == [0, 1, 2]
        with anyio.fail_after(5):
            assert (await pool.execute("getpid"))["pid"] == pid
        assert read_record(record)["finally"] is True
        assert pool.workers()[0].pid == pid
        assert pool.stats()["cancelled"] == 1


async def test_a_slow_consumer_pauses_the_producer(tmp_path: Path) -> None:
    record = tmp_path / "record.json"
    credits = 8
    config = sp.PoolConfig(stream_credits=credits, cancel_grace=2.0)
    async with sp.open_pool(make_testing(), size=1, config=config) as pool:
        async with pool.stream(
            "count_stream", {"count": 100_000, "record_path": str(record)}
        ) as chunks:
            async for _ in chunks:
                await anyio.sleep(0.5)  # the consumer stalls
                produced = read_record(record)["produced"]
                assert produced <= 2 * credits + 2
                break
        with anyio.fail_after(5):
            await pool.execute("ping")  # runs once the bridge confirmed the cancel
        assert read_record(record)["finally"] is True


async def test_handler_exception_mid_stream_is_a_command_error() -> None:
    async with sp.open_pool(streams(), size=1, config=CONFIG) as pool:
        got: list[int] = []
        with pytest.raises(sp.CommandError) as info:
            async with pool.stream("fail_after", {"good": 2}) as chunks:
                async for chunk in chunks:
                    got.append(chunk["i"])
        assert got == [0, 1]
        assert info.value.error_type == "RuntimeError"
        assert info.value.traceback and "fail_after" in info.value.traceback
        assert (await pool.execute("ping"))["status"] == "ok"


async def test_callback_forms_and_final_value() -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=2, config=CONFIG) as pool:
        got: list[Any] = []
        await pool.execute_stream("ping_stream", {"count": 3, "interval": 0}, got.append)
        assert [c["ping_number"] for c in got] == [1, 2, 3]

        async_got: list[Any] = []

        async def collect(chunk: Any) -> None:
            await anyio.lowlevel.checkpoint()
            async_got.append(chunk)

        await pool.execute_in_session_stream(
            "sess", "ping_stream", {"count": 2, "interval": 0}, collect
        )
        assert len(async_got) == 2
        assert pool.sessions.session_exists("sess")


async def test_generator_command_without_stream_returns_a_list() -> None:
    async with sp.open_pool(make_testing(), size=1, config=CONFIG) as pool:
        assert await pool.execute("count_stream", {"count": 3}) == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_stream_timeout_bounds_the_block() -> None:
    async with sp.open_pool(streams(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        with pytest.raises(sp.WorkerTimeout):
            async with pool.stream(
                "timed_stream", {"count": 100, "interval": 0.05}, timeout=0.3
            ) as chunks:
                async for _ in chunks:
                    pass
        with anyio.fail_after(5):
            await pool.execute("ping")
        assert pool.workers()[0].pid == pid


async def seconds_to_return_after_cancel(
    pool: sp.Pool, command: str, args: dict[str, Any]
) -> float:
    """Start ``command``, cancel its caller 0.2 s in; how long the caller took to return."""
    returned: list[float] = []
    async with anyio.create_task_group() as tg:

        async def caller() -> None:
            try:
                await pool.execute(command, args)
            finally:
                returned.append(time.monotonic())

        tg.start_soon(caller)
        await anyio.sleep(0.2)
        cancelled_at = time.monotonic()
        tg.cancel_scope.cancel()
    return returned[0] - cancelled_at


async def test_cancel_a_cooperative_unary_request_promptly() -> None:
    async with sp.open_pool(streams(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        assert await seconds_to_return_after_cancel(pool, "cooperative_spin", {"seconds": 30}) < 0.2
        with anyio.fail_after(5):
            assert (await pool.execute("ping"))["status"] == "ok"
        # The handler saw the cancel and stopped: the same process serves on.
        assert pool.workers()[0].pid == pid
        assert pool.stats()["cancelled"] == 1

        # A call made in an already-cancelled scope sends nothing.
        with anyio.CancelScope() as scope:
            scope.cancel()
            await pool.execute("cooperative_spin", {"seconds": 30})
        assert pool.stats()["cancelled"] == 1
        assert pool.workers()[0].state == "idle"


async def test_cancelled_caller_returns_within_50ms_and_uncooperative_worker_is_replaced() -> None:
    async with sp.open_pool(make_testing(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        assert await seconds_to_return_after_cancel(pool, "block", {"seconds": 30}) < 0.2
        assert pool.workers()[0].state in ("cancelling", "stopping", "starting")
        with anyio.fail_after(10):
            assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.workers()[0].pid != pid


async def test_async_handler_is_cancelled() -> None:
    async with sp.open_pool(make_testing(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        with anyio.move_on_after(0.2):
            await pool.execute("async_sleep", {"seconds": 30})
        with anyio.fail_after(5):
            assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.workers()[0].pid == pid


async def test_hundred_streams_cancelled_at_once(tmp_path: Path) -> None:
    config = sp.PoolConfig(max_in_flight=50, cancel_grace=3.0, queue_timeout=10)
    async with sp.open_pool(make_testing(), size=2, config=config) as pool:
        pids = {w.pid for w in pool.workers()}
        started = 0

        async def consume(i: int) -> None:
            nonlocal started
            async with pool.stream("count_stream", {"count": 1_000_000}) as chunks:
                async for _ in chunks:
                    started += 1
                    await anyio.sleep(0.01)

        with anyio.move_on_after(0.5):
            async with anyio.create_task_group() as tg:
                for i in range(100):
                    tg.start_soon(consume, i)
        assert started > 0
        with anyio.fail_after(5):
            while any(w.state != "idle" for w in pool.workers()):
                await anyio.sleep(0.02)
        assert {w.pid for w in pool.workers()} == pids
        assert pool.stats()["queued"] == 0
        assert all(w.in_flight == 0 for w in pool.workers())
        for _ in range(4):
            assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.stats()["cancelled"] == 100


async def test_streams_run_on_the_session_worker() -> None:
    async with sp.open_pool(make_testing(), size=3, config=CONFIG) as pool:
        home = (await pool.execute_in_session("s1", "getpid"))["pid"]
        async with pool.stream("count_stream", {"count": 2}, session_id="s1") as chunks:
            assert [c async for c in chunks] == [{"i": 0}, {"i": 1}]
        assert (await pool.execute_in_session("s1", "getpid"))["pid"] == home
        _ = os.getpid()
