"""Pool-side defects found by a new user's trial and an attack (issue 14), one test each.

Real worker processes, both anyio backends.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

TESTING = "snakepit_trio_bridge.testing:TestingHandler"
HANDLERS = str(Path(__file__).parent / "handlers")
FAST = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0, cancel_grace=2.0)


def pool_adapter(**kwargs: Any) -> sp.PythonAdapter:
    return sp.PythonAdapter(TESTING, **kwargs)


def lead_adapter(handler: str, **env: str) -> sp.PythonAdapter:
    return sp.PythonAdapter(f"lead_handlers:{handler}", env={"PYTHONPATH": HANDLERS, **env})


# ---------------------------------------------------------------- 3: invalid timeouts


@pytest.mark.parametrize("bad", [math.nan, -math.nan])
async def test_a_nan_timeout_is_refused_at_the_call_site_and_the_pool_lives_on(bad: float) -> None:
    async with sp.open_pool(pool_adapter(), size=1, config=FAST) as pool:
        async with anyio.create_task_group() as tg:
            results: list[Any] = []

            async def slow() -> None:
                results.append(await pool.execute("block", {"seconds": 0.3}))

            tg.start_soon(slow)
            await anyio.sleep(0.05)
            with pytest.raises(ValueError, match="NaN"):
                await pool.execute("ping", timeout=bad)
            with pytest.raises(ValueError, match="NaN"):
                async with pool.stream("count_stream", {"count": 1}, timeout=bad):
                    pass  # pragma: no cover - never entered
        assert results == [{"slept": 0.3}]  # the call in flight was not cancelled
        assert (await pool.execute("ping"))["status"] == "ok"


@pytest.mark.parametrize("bad", ["1", True, [1]])
async def test_a_timeout_that_is_not_a_number_is_a_type_error(bad: Any) -> None:
    async with sp.open_pool(pool_adapter(), size=1, config=FAST) as pool:
        with pytest.raises(TypeError, match="timeout"):
            await pool.execute("ping", timeout=bad)
        assert (await pool.execute("ping"))["status"] == "ok"


@pytest.mark.parametrize("expired", [0, 0.0, -1.0, -math.inf])
async def test_an_expired_deadline_sends_nothing(expired: float) -> None:
    async with sp.open_pool(pool_adapter(), size=1, config=FAST) as pool:
        before = pool.workers()[0].total_requests
        with pytest.raises(sp.QueueTimeout, match="not sent"):
            await pool.execute("echo", {"x": 1}, timeout=expired)
        with pytest.raises(sp.QueueTimeout, match="not sent"):
            async with pool.stream("count_stream", {"count": 1}, timeout=expired):
                pass  # pragma: no cover - never entered
        assert pool.workers()[0].total_requests == before  # the worker saw neither
        stats = pool.stats()  # rejections: nothing ran
        assert (stats["queue_timeouts"], stats["requests"], stats["timeouts"]) == (2, 0, 0)
        assert (await pool.execute("ping"))["status"] == "ok"


async def test_an_adapter_hook_returning_nan_is_refused_at_the_call_site() -> None:
    class NanTimeouts(sp.PythonAdapter):
        def command_timeout(self, command: str, args: Any) -> float | None:
            return math.nan if command == "echo" else None

    async with sp.open_pool(NanTimeouts(TESTING), size=1, config=FAST) as pool:
        with pytest.raises(ValueError, match="NaN"):
            await pool.execute("echo", {})
        assert (await pool.execute("ping"))["status"] == "ok"


# ---------------------------------------------------------------- 14: exceptions as raised


async def test_an_exception_leaves_the_block_with_its_cause() -> None:
    cause = KeyError("k")
    with pytest.raises(ValueError) as caught:
        async with sp.open_pool(sp.PythonAdapter(), size=1, config=FAST):
            raise ValueError("v") from cause
    assert caught.value.__cause__ is cause
    assert caught.value.__suppress_context__


async def test_an_implicit_context_is_kept() -> None:
    with pytest.raises(ValueError) as caught:
        async with sp.open_pool(sp.PythonAdapter(), size=1, config=FAST):
            try:
                raise KeyError("first")
            except KeyError:
                raise ValueError("second")  # noqa: B904 - the implicit context is the point
    assert isinstance(caught.value.__context__, KeyError)
    assert not caught.value.__suppress_context__


@pytest.mark.parametrize("members", [1, 2])
async def test_a_users_exception_group_leaves_the_block_as_raised(members: int) -> None:
    group = ExceptionGroup("mine", [ValueError(str(i)) for i in range(members)])
    with pytest.raises(ExceptionGroup) as caught:
        async with sp.open_pool(sp.PythonAdapter(), size=1, config=FAST):
            raise group
    assert caught.value is group


async def test_a_cancelled_block_is_still_a_plain_cancellation() -> None:
    with anyio.move_on_after(0.2) as scope:
        async with sp.open_pool(sp.PythonAdapter(), size=1, config=FAST):
            await anyio.sleep(10)
    assert scope.cancelled_caught


# ---------------------------------------------------------------- 10: drain on cancellation


async def test_cancelling_the_enclosing_scope_still_drains_calls_in_flight() -> None:
    config = sp.PoolConfig(drain_timeout=10.0, shutdown_grace=1.0, kill_grace=1.0)
    results: list[Any] = []
    async with anyio.create_task_group() as outer:
        with anyio.CancelScope() as block_scope:
            async with sp.open_pool(pool_adapter(), size=1, config=config) as pool:

                async def caller() -> None:
                    results.append(await pool.execute("block", {"seconds": 0.5}))

                outer.start_soon(caller)  # outside the cancelled scope
                await anyio.sleep(0.1)
                block_scope.cancel()
                await anyio.sleep(10)
    assert results == [{"slept": 0.5}]


# ---------------------------------------------------------------- 7: exit watched directly


async def test_a_worker_killed_while_a_descendant_holds_its_stdout_fails_its_calls_at_once() -> (
    None
):
    async with sp.open_pool(lead_adapter("ForkingHandler"), size=1, config=FAST) as pool:
        child = (await pool.execute("fork_child"))["pid"]  # holds the protocol's stdout
        try:
            victim = pool.workers()[0].pid
            assert victim is not None
            async with anyio.create_task_group() as tg:

                async def kill_soon() -> None:
                    await anyio.sleep(0.3)
                    os.kill(victim, signal.SIGKILL)

                tg.start_soon(kill_soon)
                start = time.monotonic()
                with pytest.raises(sp.WorkerCrashed, match="SIGKILL"):
                    await pool.execute("block", {"seconds": 60}, timeout=60)
                assert time.monotonic() - start < 5  # not the call's 60 s
            # The slot is replaced; the dead worker takes no new call.
            assert (await pool.execute("info")) is not None
            assert pool.workers()[0].pid != victim
        finally:
            os.kill(child, signal.SIGKILL)


async def test_a_stream_on_a_worker_killed_while_a_descendant_holds_stdout_ends() -> None:
    async with sp.open_pool(lead_adapter("ForkingHandler"), size=1, config=FAST) as pool:
        child = (await pool.execute("fork_child"))["pid"]
        try:
            victim = pool.workers()[0].pid
            assert victim is not None
            with anyio.fail_after(10), pytest.raises(sp.WorkerCrashed):
                async with pool.stream("count", {"count": 10**9}) as chunks:
                    async for _ in chunks:
                        os.kill(victim, signal.SIGKILL)
        finally:
            os.kill(child, signal.SIGKILL)


async def test_an_idle_worker_that_dies_with_a_descendant_holding_stdout_is_replaced() -> None:
    async with sp.open_pool(lead_adapter("ForkingHandler"), size=1, config=FAST) as pool:
        child = (await pool.execute("fork_child"))["pid"]
        try:
            victim = pool.workers()[0].pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            with anyio.fail_after(10):
                while pool.workers()[0].pid == victim or pool.workers()[0].state != "idle":
                    await anyio.sleep(0.02)
            assert (await pool.execute("ping"))["status"] == "ok"
        finally:
            os.kill(child, signal.SIGKILL)


# ---------------------------------------------------------------- 8: the crash breaker


async def test_killing_healthy_workers_again_and_again_never_trips_the_breaker() -> None:
    config = sp.PoolConfig(max_restarts=2, restart_window=60, shutdown_grace=0.5, kill_grace=0.5)
    async with sp.open_pool(pool_adapter(), size=1, config=config) as pool:
        for _ in range(6):  # three times max_restarts
            reply = await pool.execute("getpid")
            os.kill(reply["pid"], signal.SIGKILL)
            with anyio.fail_after(10):
                while pool.workers()[0].pid == reply["pid"] or pool.workers()[0].state != "idle":
                    await anyio.sleep(0.02)
        assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.workers()[0].restarts == 6


async def test_an_open_breaker_says_so_and_closes_after_restart_window(tmp_path: Path) -> None:
    marker = tmp_path / "crash"
    adapter = lead_adapter("CrashOnStartHandler", CRASH_MARKER=str(marker))
    config = sp.PoolConfig(
        max_restarts=2, restart_window=2.0, restart_backoff=0.01, shutdown_grace=0.5
    )
    async with sp.open_pool(adapter, size=1, config=config) as pool:
        marker.touch()
        pid = pool.workers()[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a fresh worker: its restarts now crash at start
        with anyio.fail_after(10):
            while not pool._workers[0].broken:
                await anyio.sleep(0.02)
        with pytest.raises(sp.StartupError, match="crash breaker open") as caught:
            await pool.execute("ping")
        assert "exit code 5" in str(caught.value)
        marker.unlink()
        with anyio.fail_after(15):
            while pool.workers()[0].state != "idle":
                await anyio.sleep(0.05)
        assert (await pool.execute("ping"))["status"] == "ok"


# ---------------------------------------------------------------- 2: slow handler start


async def test_a_handler_slower_than_startup_and_negotiation_timeouts_starts() -> None:
    config = sp.PoolConfig(startup_timeout=0.5, negotiation_timeout=1.0, worker_init_timeout=20)
    async with sp.open_pool(
        lead_adapter("SlowStartHandler", SLOW_START="2.5"), size=1, config=config
    ) as pool:
        assert pool.workers()[0].protocol == "msgpack"
        assert (await pool.execute("ping"))["status"] == "ok"


async def test_a_handler_slower_than_worker_init_timeout_names_the_phase() -> None:
    config = sp.PoolConfig(worker_init_timeout=1.0, max_restarts=1, shutdown_grace=0.5)
    with pytest.raises(sp.StartupError) as caught:
        async with sp.open_pool(
            lead_adapter("SlowStartHandler", SLOW_START="30"), size=1, config=config
        ):
            pass  # pragma: no cover - never entered
    message = str(caught.value)
    assert "worker_init_timeout=1.0" in message
    assert "init command 'ping'" in message


# ---------------------------------------------------------------- friction


async def test_a_program_that_writes_text_on_stdout_is_told_so() -> None:
    for wire in ("auto", "json"):
        adapter = sp.Adapter("/bin/echo", script_args=("hello",), wire=wire)
        with pytest.raises(sp.StartupError, match="not a response frame") as caught:
            async with sp.open_pool(adapter, size=1, config=sp.PoolConfig(max_restarts=1)):
                pass  # pragma: no cover - never entered
        assert "hello" in str(caught.value)


async def test_a_workers_first_stderr_line_is_shown_once_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from snakepit_trio import _local as _worker

    _worker._stderr_hint_pending = True
    caplog.set_level(logging.WARNING, logger="snakepit_trio.worker")
    async with sp.open_pool(pool_adapter(), size=1, config=FAST) as pool:
        await pool.execute("stderr_flood", {"bytes": 3000})
        with anyio.fail_after(5):
            while not any("wrote on stderr" in r.getMessage() for r in caplog.records):
                await anyio.sleep(0.02)
        await pool.execute("stderr_flood", {"bytes": 3000})
        await anyio.sleep(0.2)
    hints = [r for r in caplog.records if "wrote on stderr" in r.getMessage()]
    assert len(hints) == 1
    assert hints[0].levelno == logging.WARNING
    assert "logging.basicConfig" in hints[0].getMessage()


# ---------------------------------------------------------------- 9: the real worker's pid


async def test_worker_info_names_the_real_worker_behind_its_nanny() -> None:
    config = sp.PoolConfig(hardened=True, shutdown_grace=0.5, kill_grace=0.5)
    async with sp.open_pool(pool_adapter(), size=1, config=config) as pool:
        info = pool.workers()[0]
        real = (await pool.execute("getpid"))["pid"]
        assert info.pid != real  # the nanny
        assert info.worker_pid == real
        assert info.rss is not None and info.node
    async with sp.open_pool(pool_adapter(), size=1, config=FAST) as pool:
        info = pool.workers()[0]
        assert info.worker_pid == info.pid == (await pool.execute("getpid"))["pid"]


@pytest.mark.parametrize("args", [[1, 2], "text", 7, (("a", 1),)])
async def test_arguments_that_are_not_a_mapping_are_a_clear_type_error(args: Any) -> None:
    async with sp.open_pool(pool_adapter(), size=1, config=FAST) as pool:
        with pytest.raises(TypeError, match="must be a mapping"):
            await pool.execute("echo", args)
        assert (await pool.execute("ping"))["status"] == "ok"
