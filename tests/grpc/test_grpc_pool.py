"""GrpcPythonAdapter through the pool: real workers, real gRPC servers, both anyio backends."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

HERE = str(Path(__file__).resolve().parent)
HANDLER = "grpc_handlers:GrpcTestHandler"
# cancel_grace: tests that expect a confirmed cancel (same pid) need margin on a loaded machine.
CONFIG = sp.PoolConfig(cancel_grace=2.0, shutdown_grace=1.0, kill_grace=1.0)


def adapter(**kwargs: Any) -> sp.GrpcPythonAdapter:
    return sp.GrpcPythonAdapter(HANDLER, env={"PYTHONPATH": HERE}, **kwargs)


def record(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


async def wait_for(predicate: Any, timeout: float, step: float = 0.002) -> float:
    """Poll ``predicate()`` until true; returns the seconds it took (fails after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        await anyio.sleep(step)
    return time.monotonic() - start


def listening_socket_path(pid: int) -> str:
    # The listening socket and the accepted connection both name the path.
    paths = {c.laddr for c in psutil.Process(pid).net_connections(kind="unix") if c.laddr}
    assert len(paths) == 1, paths
    return str(paths.pop())


async def test_execute_error_and_unknown_command() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        result = await pool.execute("compute", {"operation": "multiply", "a": 6, "b": 7})
        assert result["result"] == 42
        echoed = await pool.execute("echo", {"blob": b"\x00\xff" * 10, "n": [1, 2.5, None]})
        assert echoed["echoed"] == {"blob": b"\x00\xff" * 10, "n": [1, 2.5, None]}
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("raise_error", {"message": "boom"})
        assert info.value.error_type == "ValueError"
        assert info.value.message == "boom"
        assert info.value.traceback is not None
        assert "handle_raise_error" in info.value.traceback
        assert "grpc_server.py" not in info.value.traceback
        with pytest.raises(sp.UnsupportedCommand):
            await pool.execute("no_such_command")
        # A generator asked for without a stream returns its values as a list.
        assert await pool.execute("count_stream", {"count": 3}) == [{"i": 0}, {"i": 1}, {"i": 2}]
        info_ = pool.workers()[0]
        assert info_.protocol == "grpc"
        assert {"stream", "cancel"} <= info_.features
        stats = pool.stats()
        assert stats["requests"] == 5
        assert stats["errors"] == 2
        # The worker imports neither trio nor anyio.
        loaded = await pool.execute("loaded_modules", {"names": ["trio", "anyio", "grpc"]})
        assert loaded == []


async def test_sessions_stick_to_a_worker_and_reach_the_handler() -> None:
    async with sp.open_pool(adapter(), size=2, config=CONFIG) as pool:
        first = await pool.execute_in_session("s-1", "getpid")
        for _ in range(3):
            assert await pool.execute_in_session("s-1", "getpid") == first
        echoed = await pool.execute_in_session("s-1", "echo", {"x": 1})
        assert echoed["echoed"] == {"x": 1, "session_id": "s-1"}
        assert pool.sessions.session_exists("s-1")


async def test_timeouts_cancel_cooperative_handlers_and_replace_stuck_workers() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        started = time.monotonic()
        with pytest.raises(sp.WorkerTimeout):
            await pool.execute("sleep", {"seconds": 10}, timeout=0.3)
        assert time.monotonic() - started < 2.0
        # The cooperative handler stopped: the same worker serves the next call.
        assert (await pool.execute("getpid"))["pid"] == pid
        with pytest.raises(sp.WorkerTimeout):
            await pool.execute("async_sleep", {"seconds": 10}, timeout=0.2)
        assert (await pool.execute("getpid"))["pid"] == pid
        # A handler deaf to cancellation: the worker exits after cancel_grace and is replaced.
        with pytest.raises(sp.WorkerTimeout):
            await pool.execute("block", {"seconds": 30}, timeout=0.2)
        await wait_for(lambda: pool.workers()[0].pid not in (None, pid), timeout=10)
        assert (await pool.execute("getpid", timeout=10))["pid"] != pid


async def test_stream_chunks_arrive_in_order_with_the_final_result() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        async with pool.stream("count_stream", {"count": 500}) as chunks:
            seen = [chunk["i"] async for chunk in chunks]
        assert seen == list(range(500))
        assert chunks.result == {"count": 500}
        async with pool.stream("async_stream", {"count": 5}) as chunks:
            assert [chunk["i"] async for chunk in chunks] == list(range(5))
        async with pool.stream("ping") as chunks:  # not a generator: one chunk
            assert len([chunk async for chunk in chunks]) == 1
        got: list[Any] = []
        assert await pool.execute_stream("count_stream", {"count": 4}, got.append) == {"count": 4}
        assert got == [{"i": i} for i in range(4)]


@pytest.mark.parametrize("command", ["count_stream", "async_record_stream"])
async def test_leaving_a_stream_runs_the_handlers_finally_within_100_ms(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "record.json"
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        async with pool.stream(command, {"count": 1_000_000, "record_path": str(path)}) as chunks:
            async for chunk in chunks:
                if chunk["i"] == 10:
                    break
        took = await wait_for(lambda: record(path).get("finally") is True, timeout=2.0)
        assert took < 0.3, f"the handler's finally ran {took * 1000:.1f} ms after the close"
        # Backpressure: the generator ran at most a window ahead of the consumer.
        assert record(path)["produced"] < 11 + 200
        await wait_for(lambda: pool.stats()["available"] == 1, timeout=2.0)
        assert (await pool.execute("getpid"))["pid"] == pid
        assert pool.stats()["cancelled"] == 1


async def test_sixteen_streams_cancelled_at_once_leave_nothing_running(tmp_path: Path) -> None:
    config = sp.PoolConfig(cancel_grace=0.5, shutdown_grace=1.0, kill_grace=1.0, max_in_flight=8)
    paths = [tmp_path / f"stream-{i}.json" for i in range(16)]
    async with sp.open_pool(adapter(), size=2, config=config) as pool:
        pids = {w.pid for w in pool.workers()}
        started = 0

        async def consume(path: Path) -> None:
            nonlocal started
            async with pool.stream(
                "count_stream", {"count": 1_000_000, "record_path": str(path)}
            ) as chunks:
                async for _ in chunks:
                    started += 1
                    await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            for path in paths:
                tg.start_soon(consume, path)
            await wait_for(lambda: started == 16, timeout=10)
            tg.cancel_scope.cancel()
        await wait_for(lambda: all(record(p).get("finally") for p in paths), timeout=2.0)
        await wait_for(lambda: pool.stats()["available"] == 2, timeout=2.0)
        stats = pool.stats()
        assert stats["busy"] == 0 and stats["cancelling"] == 0
        assert stats["cancelled"] == 16
        assert {w.pid for w in pool.workers()} == pids  # nobody was killed for it
        assert (await pool.execute("ping"))["status"] == "ok"


async def test_a_worker_killed_mid_stream_raises_worker_crashed_and_is_replaced() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        assert pid is not None
        with pytest.raises(sp.WorkerCrashed) as info:
            async with pool.stream("count_stream", {"count": 1_000_000}) as chunks:
                async for chunk in chunks:
                    if chunk["i"] == 3:
                        os.kill(pid, signal.SIGKILL)
        assert info.value.signal == signal.SIGKILL
        await wait_for(
            lambda: pool.workers()[0].pid not in (None, pid) and pool.stats()["available"] == 1,
            timeout=10,
        )
        assert (await pool.execute("getpid"))["pid"] != pid
        assert pool.stats()["restarts"] == 1


async def test_no_tcp_listener_by_default_and_a_private_socket_removed_on_close() -> None:
    async with sp.open_pool(adapter(), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        assert pid is not None
        assert psutil.Process(pid).net_connections(kind="inet") == []
        path = listening_socket_path(pid)
        directory = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert not any(map(os.path.lexists, (path, directory)))


async def test_listen_tcp_binds_loopback_only() -> None:
    async with sp.open_pool(adapter(listen="tcp"), size=1, config=CONFIG) as pool:
        pid = pool.workers()[0].pid
        assert pid is not None
        listening = [
            c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == "LISTEN"
        ]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
        # TCP_NODELAY applies (the listening socket is IPPROTO_TCP): no 40 ms per call.
        await pool.execute("ping")
        took = []
        for _ in range(10):
            started = time.monotonic()
            await pool.execute("ping")
            took.append(time.monotonic() - started)
        assert sorted(took)[5] < 0.03  # the median: one stall of a loaded machine is not Nagle


async def test_no_thread_is_left_after_the_pool_closes() -> None:
    before = set(threading.enumerate())
    async with sp.open_pool(adapter(), size=2, config=CONFIG) as pool:
        await pool.execute("ping")
        async with pool.stream("count_stream", {"count": 1000}) as chunks:
            async for chunk in chunks:
                if chunk["i"] == 5:
                    break
    assert set(threading.enumerate()) <= before  # threads may end, none may be left


async def test_message_size_limits() -> None:
    config = sp.PoolConfig(cancel_grace=0.5, shutdown_grace=1.0, max_frame_size=256 * 1024)
    async with sp.open_pool(adapter(), size=1, config=config) as pool:
        with pytest.raises(sp.ProtocolError):
            await pool.execute("echo", {"data": b"x" * 300_000})
        with pytest.raises(sp.CommandError) as info:
            await pool.execute("big_result", {"size": 300_000})
        assert info.value.error_type == "MessageTooLarge"
        assert len(await pool.execute("big_result", {"size": 200_000})) == 200_000


async def test_health_checks_and_recycling_work_over_grpc() -> None:
    config = sp.PoolConfig(
        cancel_grace=0.5, shutdown_grace=1.0, health_check_interval=0.05, max_requests=3
    )
    async with sp.open_pool(adapter(), size=1, config=config) as pool:
        pid = pool.workers()[0].pid
        await anyio.sleep(0.3)  # a few health pings: not counted as requests, nobody replaced
        assert pool.stats()["requests"] == 0
        assert pool.workers()[0].pid == pid
        pids = [(await pool.execute("getpid"))["pid"] for _ in range(4)]
        assert pids[:3] == [pid] * 3 and pids[3] != pid  # recycled after max_requests
        stats = pool.stats()
        assert stats["errors"] == 0 and stats["requests"] == 4
