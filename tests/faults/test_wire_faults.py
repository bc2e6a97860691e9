"""A worker that breaks the wire while serving (issue 10).

Every bridge process here misbehaves when it receives the command ``hostile`` (so the pool is
up first). The contract each test checks: the caller of the hostile request gets a typed
``SnakepitError`` subclass that says what happened, within a bound; the pool's own memory stays
bounded (a hostile length or nesting allocates nothing); the other worker keeps serving during
the fault; the broken worker is replaced; and no bridge process outlives the pool.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import attrs
import psutil
import pytest
from faultkit import (
    BOUND,
    FAULT_CONFIG,
    FaultKit,
    assert_pool_serves,
    traced_peak,
    wait_until,
)

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

#: The pool must never hold more than this in Python objects because of a fault. A hostile
#: header announces 4 GiB and a hostile MessagePack array 2**32 - 1 items; 64 MiB is the
#: default frame limit.
MEMORY_LIMIT = 16 * 1024 * 1024

WIRE_FAULTS = [
    # fault, wire, the error, what its message must say
    ("garbage", "json", sp.ProtocolError, "frame header announces 1937011297 bytes"),
    ("bad_payload", "json", sp.ProtocolError, "invalid JSON payload"),
    ("bad_payload", "msgpack", sp.ProtocolError, "invalid MessagePack payload"),
    ("huge_header", "json", sp.ProtocolError, "announces 4294967295 bytes, over the limit"),
    ("huge_header", "msgpack", sp.ProtocolError, "announces 4294967295 bytes, over the limit"),
    ("half_frame_exit", "json", sp.ProtocolError, "stream ended inside a frame"),
    ("unknown_id", "json", sp.ProtocolError, "request id 987654321, which is not in flight"),
    ("deep_json", "json", sp.ProtocolError, "nested deeper than"),
    ("deep_msgpack", "msgpack", sp.ProtocolError, "nested deeper than"),
    ("huge_msgpack", "msgpack", sp.ProtocolError, "invalid MessagePack payload"),
    ("exit", "json", sp.WorkerCrashed, "exit code 3"),
    ("silent", "json", sp.WorkerTimeout, "did not finish within 0.5 s"),
    ("slow", "msgpack", sp.WorkerTimeout, "did not finish within 0.5 s"),
]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def bridge_pids(kit: FaultKit) -> list[int]:
    return [f["pid"] for f in kit.frames() if f["phase"] == "start"]


@pytest.mark.parametrize(("fault", "wire", "error", "message"), WIRE_FAULTS)
async def test_wire_fault_is_a_typed_error_in_bounded_time(
    kit: FaultKit, fault: str, wire: str, error: type[sp.SnakepitError], message: str
) -> None:
    caught: list[BaseException] = []

    timeout = 0.5 if error is sp.WorkerTimeout else 5.0

    async def hostile_call(pool: sp.Pool) -> None:
        try:
            await pool.execute("hostile", {"seconds": 30}, timeout=timeout)
        except sp.SnakepitError as exc:
            caught.append(exc)

    def hostile_received() -> bool:
        return any(f.get("command") == "hostile" for f in kit.frames())

    with anyio.fail_after(BOUND), traced_peak() as peak:
        async with sp.open_pool(
            kit.adapter(fault, protocol=wire), size=2, config=FAULT_CONFIG
        ) as pool:
            async with anyio.create_task_group() as tg:
                tg.start_soon(hostile_call, pool)
                await wait_until(hostile_received, "the hostile request to reach a bridge")
                # The other worker serves while this one is broken (or hanging).
                for i in range(3):
                    assert (await pool.execute("echo", {"during": i}))["args"] == {"during": i}
            await wait_until(lambda: pool.stats()["restarts"] == 1, "the broken worker to restart")
            await assert_pool_serves(pool)
            stats = pool.stats()
    assert len(caught) == 1
    assert type(caught[0]) is error
    assert message in str(caught[0])
    assert peak() < MEMORY_LIMIT, f"the pool held {peak()} bytes at its peak"
    assert stats["errors"] == 1
    pids = bridge_pids(kit)
    assert len(pids) == 3  # two workers and one replacement: no restart storm
    assert all(_gone(pid) for pid in pids), "a bridge process outlived the pool"


async def test_crash_reports_exit_code_and_stderr_tail(kit: FaultKit) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(kit.adapter("exit"), size=1, config=FAULT_CONFIG) as pool:
            with pytest.raises(sp.WorkerCrashed) as caught:
                await pool.execute("hostile")
            await assert_pool_serves(pool)
    assert caught.value.exit_code == 3
    assert caught.value.signal is None
    assert "fault 'exit' now" in caught.value.stderr_tail


async def test_bridge_that_closes_stdout_and_ignores_sigterm_is_killed(kit: FaultKit) -> None:
    with anyio.fail_after(BOUND):
        async with sp.open_pool(kit.adapter("close_stdout"), size=1, config=FAULT_CONFIG) as pool:
            with pytest.raises(sp.WorkerCrashed) as caught:
                await pool.execute("hostile")
            assert caught.value.signal == signal.SIGKILL
            await assert_pool_serves(pool)
    assert all(_gone(pid) for pid in bridge_pids(kit))


@pytest.mark.parametrize("apart", [False, True], ids=["one-write", "two-writes"])
async def test_answering_twice_delivers_the_first_answer_then_replaces_the_worker(
    kit: FaultKit, apart: bool
) -> None:
    fault = "answer_twice_apart" if apart else "answer_twice"
    with anyio.fail_after(BOUND):
        async with sp.open_pool(kit.adapter(fault), size=1, config=FAULT_CONFIG) as pool:
            result = await pool.execute("hostile")
            await wait_until(lambda: pool.stats()["restarts"] == 1, "the worker to be replaced")
            await assert_pool_serves(pool)
    assert result == "first"


async def test_a_caller_queued_behind_a_protocol_violation_is_served_by_the_replacement(
    kit: FaultKit,
) -> None:
    """The worker is handed to the queued caller, then breaks before that caller runs: the
    caller must not get the broken worker (nothing was sent); it waits for the next one."""
    outcomes: dict[str, object] = {}

    async def call(name: str, command: str, args: dict[str, float]) -> None:
        try:
            outcomes[name] = await pool.execute(command, args)
        except Exception as exc:  # recorded: the assertion below names it
            outcomes[name] = exc

    with anyio.fail_after(BOUND):
        async with sp.open_pool(kit.adapter("answer_twice"), size=1, config=FAULT_CONFIG) as pool:
            hostile_pid = pool.workers()[0].pid
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "hostile", "hostile", {"delay": 0.3})
                await wait_until(lambda: pool.stats()["busy"] == 1, "the hostile call to start")
                tg.start_soon(call, "queued", "whoami", {})
                await wait_until(lambda: pool.stats()["queued"] == 1, "the caller to queue")
    assert outcomes["hostile"] == "first"
    queued = outcomes["queued"]
    assert isinstance(queued, dict), f"the queued caller got {queued!r}"
    assert queued["pid"] != hostile_pid


async def test_a_fail_fast_session_requeued_after_a_violation_is_not_rejected(
    kit: FaultKit, tmp_path: Path
) -> None:
    """affinity="fail": a session caller queued while its worker was down is handed the other
    worker, which breaks before the caller wakes. By then the session's worker is back and
    busy; the caller was queued, not rejected, so it must wait again, not get PoolSaturated."""
    hold, gate = tmp_path / "hold", tmp_path / "gate"
    config = attrs.evolve(FAULT_CONFIG, affinity="fail")
    adapter = kit.adapter("answer_twice", env={"STANDIN_HOLD": str(hold)})
    outcomes: dict[str, object] = {}

    async def call(name: str, command: str, args: dict[str, object], session: str | None) -> None:
        try:
            if session is None:
                outcomes[name] = await pool.execute(command, args)
            else:
                outcomes[name] = await pool.execute_in_session(session, command, args)
        except Exception as exc:  # recorded: the assertion below names it
            outcomes[name] = exc

    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=2, config=config) as pool:
            await pool.execute_in_session("s", "whoami", {})
            session = pool.sessions.get_session("s")
            assert session is not None and session.last_worker_id is not None
            home = session.last_worker_id
            home_pid = pool.workers()[home].pid
            assert home_pid is not None
            hold.touch()  # the session's worker will not come back until released
            gate.touch()  # the hostile answer waits for this file to go
            os.kill(home_pid, signal.SIGKILL)
            await wait_until(lambda: pool.workers()[home].state == "starting", "the restart")
            async with anyio.create_task_group() as tg:
                tg.start_soon(call, "hostile", "hostile", {"gate": str(gate)}, None)
                await wait_until(lambda: pool.stats()["busy"] == 1, "the hostile call to start")
                tg.start_soon(call, "filler", "sleep", {"seconds": 2.0}, None)
                await wait_until(lambda: pool.stats()["queued"] == 1, "the filler to queue")
                tg.start_soon(call, "session", "whoami", {}, "s")
                await wait_until(lambda: pool.stats()["queued"] == 2, "the session to queue")
                hold.unlink()  # the session's worker comes back and takes the filler
                await wait_until(lambda: pool.workers()[home].in_flight == 1, "the filler")
                gate.unlink()  # the other worker answers twice: handed over, then broken
    assert outcomes["hostile"] == "first"
    assert outcomes["filler"] == "slept"
    served = outcomes["session"]
    assert isinstance(served, dict), f"the session caller got {served!r}"


async def test_lying_bridge_that_announces_cancel_but_ignores_it_is_replaced(
    kit: FaultKit,
) -> None:
    adapter = kit.adapter("slow", protocol="auto", features="cancel")
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=1, config=FAULT_CONFIG) as pool:
            assert pool.features == frozenset({"cancel"})
            old_pid = pool.workers()[0].pid
            with pytest.raises(sp.WorkerTimeout):
                await pool.execute("hostile", {"seconds": 30}, timeout=0.3)
            # Abandoned, not busy: the pool waits cancel_grace for a confirmation.
            assert pool.workers()[0].state in ("cancelling", "stopping")
            await wait_until(
                lambda: pool.workers()[0].pid != old_pid and pool.workers()[0].state == "idle",
                "the replacement after cancel_grace",
            )
            await assert_pool_serves(pool)
    assert any(f.get("type") == "protocol_negotiation" for f in kit.frames())


async def test_stderr_flood_while_serving_keeps_memory_bounded(kit: FaultKit) -> None:
    megabytes = 100
    with anyio.fail_after(BOUND), traced_peak() as peak:
        async with sp.open_pool(kit.adapter("flood_stderr"), size=1, config=FAULT_CONFIG) as pool:
            assert await pool.execute("hostile", {"mb": megabytes}) == "flooding"
            for i in range(20):  # served while the flood goes on
                assert (await pool.execute("echo", {"i": i}))["args"] == {"i": i}
            flooded = await pool.execute("flood_wait")
            # The tail the pool keeps of a worker's stderr is bounded too: kill the worker
            # under a request to see the tail that request's error carries.
            pid = pool.workers()[0].pid
            assert pid is not None
            crashes: list[sp.WorkerCrashed] = []

            async def doomed_call() -> None:
                with pytest.raises(sp.WorkerCrashed) as caught:
                    await pool.execute("sleep", {"seconds": 30})
                crashes.append(caught.value)

            async with anyio.create_task_group() as tg:
                tg.start_soon(doomed_call)
                await wait_until(
                    lambda: any(f.get("command") == "sleep" for f in kit.frames()),
                    "the request to reach the bridge",
                )
                os.kill(pid, signal.SIGKILL)
    assert flooded == megabytes * ((1 << 20) // 118) * 118
    tail = crashes[0].stderr_tail
    assert "stderr flood" in tail
    assert len(tail.encode()) <= FAULT_CONFIG.stderr_tail_bytes
    assert peak() < MEMORY_LIMIT, f"the pool held {peak()} bytes at its peak"
