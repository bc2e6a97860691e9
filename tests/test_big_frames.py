"""A big frame is decoded off the event loop: it never stalls the other workers' calls.

Real workers, both anyio backends. The decoding is made slow on purpose (a patched
``PendingFrame.decode``) so that a stall of the event loop would show as a slow ping.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import anyio
import pytest
from snakepit_trio_bridge.protocol import messages

import snakepit_trio as sp
from snakepit_trio._stdio import DEFER_OVER

pytestmark = pytest.mark.anyio

CONFIG = sp.PoolConfig(shutdown_grace=1.0, kill_grace=1.0)


async def test_a_big_frame_is_decoded_in_a_thread_while_other_calls_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded_on: list[threading.Thread] = []
    real_decode = messages.PendingFrame.decode

    def slow_decode(self: messages.PendingFrame) -> None:
        decoded_on.append(threading.current_thread())
        time.sleep(1.5)  # as 20 MB of tiny containers would take
        real_decode(self)

    monkeypatch.setattr(messages.PendingFrame, "decode", slow_decode)
    # Nine bytes each in MessagePack: a frame over DEFER_OVER with fewer containers than the
    # codec's limit (max_containers).
    big = [[0] * 8 for _ in range(DEFER_OVER // 9 + 1000)]
    async with sp.open_pool(sp.PythonAdapter(), size=2, config=CONFIG) as pool:
        results: dict[str, Any] = {}

        async def big_call() -> None:
            results["big"] = await pool.execute("echo", {"x": big}, timeout=60)

        async with anyio.create_task_group() as tg:
            tg.start_soon(big_call)
            with anyio.fail_after(30):
                while not decoded_on:
                    await anyio.sleep(0.01)
            started = time.monotonic()
            assert (await pool.execute("ping"))["status"] == "ok"  # on the other worker
            assert time.monotonic() - started < 1.0  # not behind the 1.5 s decode
        assert len(results["big"]["echoed"]["x"]) == len(big)
        assert decoded_on[0] is not threading.main_thread()


async def test_frames_behind_a_big_one_keep_their_order() -> None:
    big = [0] * (DEFER_OVER + 10)  # many items: deferred (one big bin would decode inline)
    async with sp.open_pool(sp.PythonAdapter(), size=1, config=CONFIG) as pool:
        async with pool.stream("ping_stream", {"count": 3, "interval": 0}) as chunks:
            assert [c["ping_number"] async for c in chunks] == [1, 2, 3]
        for _ in range(3):
            assert (await pool.execute("echo", {"b": big}))["echoed"]["b"] == big
            assert (await pool.execute("ping"))["status"] == "ok"
