"""One behaviour suite, run against every shipped worker: the Python bridge over stdio, the
Node bridge over stdio, and the Python bridge over gRPC; on both anyio backends. It runs
against an in-memory test transport too (``memory_transport.py``), proof that a transport is
one module with no change to the slot or the pool.

What a user relies on whichever worker they pick: results and their shapes, errors, bytes,
sessions, streams, cancellation, crash recovery, and a clean shutdown.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
from collections.abc import Callable

import anyio
import memory_transport
import pytest
from proc_support import wait_dead

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

CONFIG = sp.PoolConfig(cancel_grace=2.0, shutdown_grace=1.0, kill_grace=1.0)


BRIDGES: dict[str, Callable[[], sp.Adapter]] = {
    "python": sp.PythonAdapter,
    "node": sp.NodeAdapter,
    "grpc": lambda: sp.GrpcPythonAdapter(),  # resolved lazily: the grpc extra is optional
    "memory": memory_transport.MemoryAdapter,
}


@pytest.fixture(params=sorted(BRIDGES))
def adapter(request: pytest.FixtureRequest) -> sp.Adapter:
    name = str(request.param)
    if name == "node" and shutil.which("node") is None:
        pytest.skip("node is not installed")
    if name == "grpc" and importlib.util.find_spec("grpclib") is None:
        pytest.skip("the grpc extra is not installed")
    return BRIDGES[name]()


async def worker_pid(pool: sp.Pool, session: str | None = None) -> int:
    info = (
        await pool.execute_in_session(session, "info")
        if session is not None
        else await pool.execute("info")
    )
    return int(info["system_info"]["pid"])


def kill(adapter: sp.Adapter, pid: int) -> None:
    """SIGKILL the worker ``pid`` (the memory transport plays it)."""
    if isinstance(adapter, memory_transport.MemoryAdapter):
        memory_transport.kill(pid)
    else:
        os.kill(pid, signal.SIGKILL)


async def test_results_errors_and_bytes(adapter: sp.Adapter) -> None:
    async with sp.open_pool(adapter, size=2, config=CONFIG) as pool:
        assert (await pool.execute("ping"))["status"] == "ok"
        computed = await pool.execute("compute", {"operation": "add", "a": 2, "b": 3})
        assert computed["result"] == 5
        echoed = await pool.execute("echo", {"text": "h\u00e9llo", "n": [1, 2.5, None, True]})
        assert echoed["echoed"] == {"text": "h\u00e9llo", "n": [1, 2.5, None, True]}
        blob = bytes(range(256)) * 64
        assert (await pool.execute("echo", {"blob": blob}))["echoed"]["blob"] == blob

        with pytest.raises(sp.CommandError) as info:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
        assert info.value.error_type == "ZeroDivisionError"
        with pytest.raises(sp.UnsupportedCommand):
            await pool.execute("no_such_command")
        stats = pool.stats()
        assert stats["requests"] == 6 and stats["errors"] == 2


async def test_sessions_stick_to_their_worker(adapter: sp.Adapter) -> None:
    async with sp.open_pool(adapter, size=3, config=CONFIG) as pool:
        home = await worker_pid(pool, "s1")
        for _ in range(4):
            assert await worker_pid(pool, "s1") == home
        assert pool.sessions.session_exists("s1")


async def test_streams_arrive_in_order_and_can_be_left_early(adapter: sp.Adapter) -> None:
    async with sp.open_pool(adapter, size=1, config=CONFIG) as pool:
        async with pool.stream("ping_stream", {"count": 4, "interval": 0}) as chunks:
            assert [c["ping_number"] async for c in chunks] == [1, 2, 3, 4]
        before = await worker_pid(pool)
        async with pool.stream("ping_stream", {"count": 1000, "interval": 0.01}) as chunks:
            async for _ in chunks:
                break
        with anyio.fail_after(5):
            assert await worker_pid(pool) == before  # the same worker serves on


async def test_cancelled_and_timed_out_calls_leave_the_worker_serving(adapter: sp.Adapter) -> None:
    async with sp.open_pool(adapter, size=1, config=CONFIG) as pool:
        before = await worker_pid(pool)
        with anyio.move_on_after(0.2):
            await pool.execute("sleep", {"seconds": 30})
        with pytest.raises(sp.WorkerTimeout):
            await pool.execute("sleep", {"seconds": 30}, timeout=0.2)
        with anyio.fail_after(5):
            assert await worker_pid(pool) == before  # both bridges cancel cooperatively
        assert pool.stats()["cancelled"] == 1


async def test_a_killed_worker_fails_its_call_and_is_replaced(adapter: sp.Adapter) -> None:
    async with sp.open_pool(adapter, size=1, config=CONFIG) as pool:
        victim = await worker_pid(pool)
        async with anyio.create_task_group() as tg:

            async def doomed() -> None:
                with pytest.raises(sp.WorkerCrashed):
                    await pool.execute("sleep", {"seconds": 30})

            tg.start_soon(doomed)
            await anyio.sleep(0.3)
            kill(adapter, victim)
        with anyio.fail_after(10):
            replacement = await worker_pid(pool)
        assert replacement != victim
        assert pool.stats()["restarts"] == 1


async def test_no_process_outlives_the_pool(adapter: sp.Adapter) -> None:
    async with sp.open_pool(adapter, size=2, config=CONFIG) as pool:
        pids = [w.pid for w in pool.workers() if w.pid is not None]
        pids += [await worker_pid(pool)]
    assert wait_dead(pids, 3.0) == []
    assert not set(pids) & set(memory_transport._live)


def test_every_bridge_is_listed() -> None:
    """The suite must grow with the bridges: a new adapter class needs a row above."""
    shipped = {"PythonAdapter", "NodeAdapter", "GrpcPythonAdapter"}
    assert shipped <= set(dir(sp))
    assert len(BRIDGES) == len(shipped) + 1  # and the memory transport
