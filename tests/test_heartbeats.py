"""Heartbeats that act: a busy worker that stops saying it is alive is replaced mid-call.

The Python bridge announces ``heartbeat`` when the pool sets an interval, and a thread of it
sends one frame per interval while a request runs. A stopped process (SIGSTOP) or a handler
that starves that thread goes silent; a worker that is merely busy does not. Real workers,
both anyio backends.
"""

from __future__ import annotations

import os
import signal
import time

import anyio
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

TESTING = "snakepit_trio_bridge.testing:TestingHandler"
BEATING = sp.PoolConfig(
    heartbeat_interval=0.1, heartbeat_timeout=1.0, shutdown_grace=0.5, kill_grace=0.5
)


async def test_a_busy_worker_announces_and_sends_heartbeats() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=BEATING) as pool:
        assert "heartbeat" in pool.workers()[0].features
        slot = pool._workers[0]
        before = slot.last_heartbeat
        assert (await pool.execute("block", {"seconds": 0.5}))["slept"] == 0.5
        assert slot.last_heartbeat > before


async def test_a_stopped_busy_worker_is_replaced_within_the_heartbeat_timeout() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=BEATING) as pool:
        victim = pool.workers()[0].pid
        assert victim is not None

        async def stop_soon() -> None:
            await anyio.sleep(0.3)
            os.kill(victim, signal.SIGSTOP)

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_soon)
            start = time.monotonic()
            with pytest.raises(sp.WorkerCrashed, match="no heartbeat"):
                await pool.execute("block", {"seconds": 60}, timeout=60)
            # heartbeat_timeout (1 s) + 1 s, and the ladder's bounded SIGTERM step
            assert time.monotonic() - start < 0.3 + 1.0 + 1.0 + 0.5 + 1.0
        assert (await pool.execute("ping"))["status"] == "ok"
        assert pool.workers()[0].pid != victim


async def test_a_worker_busy_longer_than_the_heartbeat_timeout_is_not_replaced() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=BEATING) as pool:
        pid = pool.workers()[0].pid
        assert (await pool.execute("block", {"seconds": 2.5}, timeout=30))["slept"] == 2.5
        assert pool.workers()[0].pid == pid
        assert pool.workers()[0].restarts == 0


async def test_heartbeats_can_be_turned_off() -> None:
    config = sp.PoolConfig(heartbeat_timeout=None)
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=config) as pool:
        assert "heartbeat" not in pool.workers()[0].features
