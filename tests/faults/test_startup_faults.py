"""Workers that fail to start, fail negotiation, or crash in a loop (issue 10).

The contract: a broken slot costs a bounded number of spawns (the crash breaker,
``PoolConfig(max_restarts=, restart_window=)``), never a spin; a pool starts with the workers that
could start; when no worker can serve, callers get a ``StartupError`` that says why, at once.
"""

from __future__ import annotations

import time

import anyio
import attrs
import pytest
from faultkit import BOUND, FAULT_CONFIG, FaultKit, assert_pool_serves, wait_until

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

BREAKER = attrs.evolve(
    FAULT_CONFIG,
    max_restarts=1,
    restart_window=30.0,
    # A healthy bridge answers negotiation and the init ping well within these, even on a
    # loaded machine; a late negotiation answer would be read as a protocol error.
    negotiation_timeout=0.8,
    worker_init_timeout=1.0,
)

START_FAULTS = [
    # fault, when, what the StartupError must say
    ("exit", "start", "fault 'exit' now"),
    ("mute", "start", "did not finish within worker_init_timeout=1.0 s"),
    ("half_frame_exit", "negotiation", "exited during protocol negotiation"),
    ("garbage", "negotiation", "not a response frame: b'stray print from a handler"),
    ("bad_payload", "negotiation", "unreadable negotiation reply"),
]


@pytest.mark.parametrize(("fault", "at", "cause"), START_FAULTS)
async def test_start_fault_on_one_slot_trips_only_its_breaker(
    kit: FaultKit, fault: str, at: str, cause: str
) -> None:
    adapter = kit.adapter(fault, at=at, workers="0", protocol="auto")
    with anyio.fail_after(BOUND):
        async with sp.open_pool(adapter, size=2, config=BREAKER) as pool:
            await wait_until(lambda: pool.workers()[0].state == "stopped", "slot 0's breaker")
            # max_restarts=1: the first start and one restart, then the slot gives up.
            assert kit.starts("0") == 2
            for i in range(4):
                assert (await pool.execute("echo", {"i": i}))["args"] == {"i": i}
            assert pool.stats()["workers"] == 1
            await anyio.sleep(0.1)  # a spinning slot would start several processes by now
            assert kit.starts("0") == 2, "a broken slot must not keep spawning"
            assert pool.workers()[1].state == "idle"


@pytest.mark.parametrize(("fault", "at", "cause"), START_FAULTS)
async def test_start_fault_on_every_slot_is_a_startup_error_saying_why(
    kit: FaultKit, fault: str, at: str, cause: str
) -> None:
    adapter = kit.adapter(fault, at=at, protocol="auto")
    with anyio.fail_after(BOUND):
        started = time.monotonic()
        with pytest.raises(sp.StartupError) as caught:
            async with sp.open_pool(adapter, size=2, config=BREAKER):
                pytest.fail("the pool must not start")  # pragma: no cover
        failed_after = time.monotonic() - started
    assert "no worker could be started" in str(caught.value)
    assert cause in str(caught.value)
    # Bounded by the start-up bounds, not by restarts.
    assert failed_after < BREAKER.worker_init_timeout + BREAKER.shutdown_grace + 1.0
    assert kit.starts() <= 4


async def test_crash_loop_after_start_gives_callers_startup_error_not_a_spin(
    kit: FaultKit,
) -> None:
    # "poison": the first hostile call kills its worker and makes every later process of this
    # bridge die on its next request or at start. Both slots crash-loop into their breakers.
    config = attrs.evolve(FAULT_CONFIG, max_restarts=2, restart_window=30.0)
    errors: list[type[sp.SnakepitError]] = []
    with anyio.fail_after(BOUND):
        async with sp.open_pool(kit.adapter("poison", poison=True), size=2, config=config) as pool:
            with pytest.raises(sp.WorkerCrashed):
                await pool.execute("hostile")
            while True:
                try:
                    await pool.execute("ping")
                except sp.StartupError:
                    break
                except sp.SnakepitError as exc:  # the other worker dying under this call
                    errors.append(type(exc))
                else:  # pragma: no cover - no process of this bridge can answer any more
                    pytest.fail("a poisoned bridge answered")
            # From now on every call is refused at once, with the reason.
            refused_at = time.monotonic()
            with pytest.raises(sp.StartupError) as caught:
                await pool.execute("ping")
            assert time.monotonic() - refused_at < 0.5  # at once, not after a start-up attempt
            assert all(w.state == "stopped" for w in pool.workers())
            starts = kit.starts()
            await anyio.sleep(0.3)
            assert kit.starts() == starts, "a broken pool must not keep spawning"
    assert set(errors) <= {sp.WorkerCrashed}
    # Each slot: its first start and max_restarts restarts.
    assert starts == 2 * (config.max_restarts + 1)
    assert "poisoned" in str(caught.value)


async def test_bridge_that_never_answers_negotiation_falls_back_to_json(kit: FaultKit) -> None:
    adapter = kit.adapter("silent", at="negotiation", protocol="auto")
    config = attrs.evolve(FAULT_CONFIG, negotiation_timeout=0.5)
    with anyio.fail_after(BOUND):
        started = time.monotonic()
        async with sp.open_pool(adapter, size=2, config=config) as pool:
            ready_after = time.monotonic() - started
            assert {w.protocol for w in pool.workers()} == {"json"}
            assert pool.features == frozenset()
            await assert_pool_serves(pool)
    assert config.negotiation_timeout <= ready_after < config.negotiation_timeout + 2.0
