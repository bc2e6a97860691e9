"""More members of issue 14's defect classes, found by an attack on the fixed pool.

Real worker processes (stand-ins that misbehave on purpose, and the gRPC bridge), both anyio
backends.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
MISBEHAVING = str(HERE / "standins" / "misbehaving_worker.py")
HANDLERS = str(HERE / "handlers")
FAST = sp.PoolConfig(shutdown_grace=0.5, kill_grace=0.5)


async def test_a_call_the_chosen_workers_codec_cannot_carry_gives_back_the_worker() -> None:
    adapter = sp.Adapter(sys.executable, MISBEHAVING, script_args=["mixed"])
    async with sp.open_pool(adapter, size=2, config=FAST) as pool:
        assert sorted(w.protocol or "" for w in pool.workers()) == ["json", "msgpack"]
        outcomes: list[str] = []

        async def nan() -> None:  # NaN is MessagePack, but not JSON
            try:
                await pool.execute("echo", {"x": math.nan})
                outcomes.append("ok")
            except TypeError as exc:
                assert "cannot be sent as json" in str(exc)
                outcomes.append("refused")

        async with anyio.create_task_group() as tg:
            tg.start_soon(nan)
            tg.start_soon(nan)
        assert "refused" in outcomes
        assert [w.free for w in pool._workers] == [1, 1]  # nobody's place was lost
        served: set[str] = set()
        async with anyio.create_task_group() as tg:
            for _ in range(8):

                async def call() -> None:
                    served.add((await pool.execute("x", {}))["worker"])

                tg.start_soon(call)
        assert served == {"json", "msgpack"}


@pytest.mark.parametrize("features", ["stream,credit,cancel,shutdown", "stream,cancel,shutdown"])
async def test_a_stream_that_outruns_its_credits_or_bounds_is_a_protocol_error(
    features: str,
) -> None:
    adapter = sp.Adapter(sys.executable, MISBEHAVING, script_args=["flood", features])
    config = sp.PoolConfig(
        shutdown_grace=0.5, kill_grace=0.5, stream_window=65536, max_frame_size=65536
    )
    async with sp.open_pool(adapter, size=1, config=config) as pool:
        with anyio.fail_after(20), pytest.raises(sp.ProtocolError):
            async with pool.stream("s", {"n": 20_000}) as chunks:
                async for _ in chunks:
                    if chunks.count == 1:
                        await anyio.sleep(2)  # a slow consumer: the worker must not run ahead
        # A well-behaved stream on the replacement still works.
        async with pool.stream("s", {"n": 3}) as chunks:
            assert len([c async for c in chunks]) == 3


async def test_a_grpc_result_is_decoded_within_the_same_bounds_as_over_stdio() -> None:
    pytest.importorskip("grpclib")
    adapter = sp.GrpcPythonAdapter("lead_handlers:BombHandler", env={"PYTHONPATH": HANDLERS})
    async with sp.open_pool(adapter, size=1, config=FAST) as pool:
        with pytest.raises(sp.ProtocolError, match="max_containers"):
            await pool.execute("bomb", {"n": 2_000_000})
        assert (await pool.execute("bomb", {"n": 10}))[:1] == [[]]


@pytest.mark.parametrize("huge", [10**400, -(10**400)])
async def test_a_timeout_too_big_for_a_float_is_a_value_error(huge: Any) -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=1, config=FAST) as pool:
        with pytest.raises(ValueError, match="timeout"):
            await pool.execute("ping", timeout=huge)
        with pytest.raises(ValueError, match="timeout"):
            async with pool.stream("ping_stream", {"count": 1}, timeout=huge):
                pass  # pragma: no cover - never entered


async def test_closing_while_a_worker_builds_its_handler_does_not_wait_shutdown_grace() -> None:
    adapter = sp.PythonAdapter(
        "lead_handlers:SlowStartHandler", env={"PYTHONPATH": HANDLERS, "SLOW_START": "30"}
    )
    config = sp.PoolConfig(shutdown_grace=6.0, kill_grace=2.0)
    start = anyio.current_time()
    with anyio.move_on_after(0.5) as scope:
        async with sp.open_pool(adapter, size=1, config=config):
            pass  # pragma: no cover - never ready in time
    assert scope.cancelled_caught
    # Straight to SIGTERM (the bridge exits on it), not the graceful step's 6 s wait.
    assert anyio.current_time() - start < 4.0


def test_a_grpc_adapter_without_the_grpc_extra_says_so_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_grpclib(name: str, *args: Any) -> Any:
        return None if name == "grpclib" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_grpclib)
    with pytest.raises(ImportError, match=r"snakepit-trio\[grpc\]"):
        sp.GrpcPythonAdapter()


@pytest.mark.parametrize("kind", ["stdio", "grpc"])
async def test_max_containers_bounds_what_a_worker_sends(kind: str) -> None:
    if kind == "grpc":
        pytest.importorskip("grpclib")
        adapter: sp.Adapter = sp.GrpcPythonAdapter(
            "lead_handlers:BombHandler", env={"PYTHONPATH": HANDLERS}
        )
    else:
        adapter = sp.PythonAdapter("lead_handlers:BombHandler", env={"PYTHONPATH": HANDLERS})
    config = sp.PoolConfig(shutdown_grace=0.5, kill_grace=0.5, max_containers=1000)
    async with sp.open_pool(adapter, size=1, config=config) as pool:
        assert len(await pool.execute("bomb", {"n": 900})) == 900
        with pytest.raises(sp.ProtocolError, match="1000"):
            await pool.execute("bomb", {"n": 100_000})
