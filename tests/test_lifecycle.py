"""Lifecycle: the shutdown ladder, zero orphans, health checks, recycling, the crash breaker.

Timing logic runs under trio's MockClock; everything about signals uses real processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from proc_support import kill_quietly, pid_alive, wait_dead

import snakepit_trio as sp
from snakepit_trio._orphans import OrphanInfo, kill_orphans, new_run_id
from snakepit_trio._process import spawn_worker

HANDLERS = str(Path(__file__).parent / "handlers")
TESTING = "snakepit_trio_bridge.testing:TestingHandler"


# ---------------------------------------------------------------- pipes


@pytest.mark.anyio
async def test_closing_stdin_wakes_a_writer_blocked_on_it() -> None:
    """A caller blocked writing to a worker that stopped reading must not outlive the close."""
    proc = spawn_worker(
        [sys.executable, "-c", "import time; time.sleep(30)"], env=dict(os.environ), cwd=None
    )
    try:
        with contextlib.suppress(BlockingIOError):
            while True:  # fill the pipe: the child never reads
                os.write(proc.stdin_fd, b"x" * 65536)
        woke = anyio.Event()

        async def blocked_writer() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                await anyio.wait_writable(proc.stdin_fd)
            woke.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(blocked_writer)
                await anyio.sleep(0.1)
                proc.close_stdin()
                await woke.wait()
    finally:
        proc.kill_now()
        proc.close()


# ---------------------------------------------------------------- the ladder, on a mock clock

STUBBORN = textwrap.dedent(
    """
    import os, signal, sys, time
    mode = sys.argv[1]
    if mode in ("ignore_term", "ignore_all"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.write(1, b"ready\\n")
    if mode == "exit_on_eof":
        sys.stdin.buffer.read()
        sys.exit(0)
    time.sleep(1000)
    """
)


async def start_stubborn(mode: str) -> Any:
    proc = spawn_worker([sys.executable, "-c", STUBBORN, mode], env=dict(os.environ), cwd=None)
    await trio.lowlevel.wait_readable(proc.stdout_fd)
    assert os.read(proc.stdout_fd, 100) == b"ready\n"
    return proc


@pytest.mark.trio
@pytest.mark.parametrize(
    ("mode", "expected_step"),
    [("exit_on_eof", "graceful"), ("sleep", "sigterm"), ("ignore_term", "sigkill")],
)
async def test_ladder_steps_and_bounds(mode: str, expected_step: str) -> None:
    # Real processes and signals; a MockClock that jumps whenever everything waits, so the
    # 100-second graces pass in an instant of real time but are honoured in virtual time.
    proc = await start_stubborn(mode)
    real_start = time.monotonic()

    async def graceful() -> None:
        proc.close_stdin()

    step = await proc.terminate_ladder(graceful=graceful, shutdown_grace=0.5, kill_grace=0.5)
    elapsed = time.monotonic() - real_start
    assert step == expected_step
    assert proc.returncode is not None
    bound = {"graceful": 0.5, "sigterm": 1.0, "sigkill": 1.5}[expected_step]
    assert elapsed < bound + 0.5
    proc.close()


def test_ladder_waits_its_graces_on_a_mock_clock() -> None:
    """The graces are honoured in (virtual) time and every path ends in SIGKILL."""
    results: dict[str, Any] = {}

    async def main() -> None:
        proc = await start_stubborn("ignore_term")
        start = trio.current_time()

        async def graceful() -> None:
            proc.close_stdin()

        results["step"] = await proc.terminate_ladder(
            graceful=graceful, shutdown_grace=100.0, kill_grace=200.0
        )
        results["virtual"] = trio.current_time() - start
        results["rc"] = proc.returncode
        proc.close()

    real_start = time.monotonic()
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.1))
    assert results["step"] == "sigkill"
    assert results["rc"] == -signal.SIGKILL
    assert results["virtual"] >= 300.0  # it really waited both graces ...
    assert time.monotonic() - real_start < 10  # ... on the mock clock


# ---------------------------------------------------------------- the pool's shutdown


@pytest.mark.anyio
async def test_worker_ignoring_sigterm_is_killed_within_the_bound() -> None:
    config = sp.PoolConfig(shutdown_grace=0.3, kill_grace=0.3, drain_timeout=0.1)
    start = 0.0
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=config) as pool:
        pid = pool.workers()[0].pid
        assert pid is not None
        await pool.execute("ignore_sigterm")
        async with anyio.create_task_group() as tg:

            async def stuck() -> None:
                with pytest.raises(sp.SnakepitError):
                    await pool.execute("block", {"seconds": 60})

            tg.start_soon(stuck)
            await anyio.sleep(0.1)
            start = time.monotonic()
            await pool.aclose()
    assert time.monotonic() - start < 0.1 + 0.3 + 0.3 + 1.0
    assert not pid_alive(pid)


@pytest.mark.anyio
async def test_grandchildren_are_gone_after_shutdown() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=2) as pool:
        children = [(await pool.execute("spawn_child"))["pid"] for _ in range(3)]
        workers = [w.pid for w in pool.workers() if w.pid is not None]
        assert all(pid_alive(p) for p in children)
    assert wait_dead(children + workers, 2.0) == []


@pytest.mark.anyio
async def test_keyboard_interrupt_in_the_block_leaves_no_process() -> None:
    pids: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        async with sp.open_pool(sp.PythonAdapter(TESTING), size=2) as pool:
            pids += [w.pid for w in pool.workers() if w.pid is not None]
            pids.append((await pool.execute("spawn_child"))["pid"])
            raise KeyboardInterrupt
    assert wait_dead(pids, 2.0) == []


@pytest.mark.anyio
async def test_errors_in_the_block_come_out_bare() -> None:
    with pytest.raises(ZeroDivisionError):
        async with sp.open_pool(sp.PythonAdapter(), size=1):
            1 / 0  # noqa: B018


PARENT = textwrap.dedent(
    """
    import sys, anyio, snakepit_trio as sp
    async def main():
        config = sp.PoolConfig(shutdown_grace=0.5, kill_grace=0.5)
        adapter = sp.PythonAdapter("snakepit_trio_bridge.testing:TestingHandler")
        async with sp.open_pool(adapter, size=2, config=config) as pool:
            pids = [w.pid for w in pool.workers()]
            for _ in range(2):
                pids.append((await pool.execute("spawn_child"))["pid"])
            print(" ".join(map(str, pids)), flush=True)
            async with anyio.create_task_group() as tg:
                for _ in range(2):
                    tg.start_soon(pool.execute, "block", {"seconds": 600})
                await anyio.sleep(0.3)
                print("busy", flush=True)
                await anyio.sleep(600)
    anyio.run(main, backend=sys.argv[1])
    """
)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_parent_sigkilled_leaves_no_descendant(backend: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, backend], stdout=subprocess.PIPE, text=True
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 4
        assert parent.stdout.readline().strip() == "busy"
        assert all(pid_alive(p) for p in pids)
        parent.kill()
        parent.wait()
        # The lifelines see EOF, wait their grace (0.5 s), then kill their process groups.
        assert wait_dead(pids, 5.0) == []
    finally:
        parent.kill()
        for pid in pids:
            kill_quietly(pid)


REAL_CTRL_C = textwrap.dedent(
    """
    import trio, snakepit_trio as sp
    async def main():
        adapter = sp.PythonAdapter("snakepit_trio_bridge.testing:TestingHandler")
        async with sp.open_pool(adapter, size=2) as pool:
            pids = [w.pid for w in pool.workers()]
            pids.append((await pool.execute("spawn_child"))["pid"])
            print(" ".join(map(str, pids)), flush=True)
            await pool.execute("block", {"seconds": 600})
    trio.run(main)
    """
)


def test_real_ctrl_c_leaves_no_process() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", REAL_CTRL_C],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        time.sleep(0.2)
        parent.send_signal(signal.SIGINT)
        _, err = parent.communicate(timeout=15)
        assert "KeyboardInterrupt" in err
        assert wait_dead(pids, 2.0) == []
    finally:
        parent.kill()
        for pid in pids:
            kill_quietly(pid)


# ---------------------------------------------------------------- orphans


def test_sweep_orphans_kills_leftovers_of_a_dead_run_only() -> None:
    pool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_run = new_run_id().replace(f"{os.getpid()}-", f"{pool.pid}-", 1)
    pool.kill()  # the pool is gone (and started at another time than this process)
    pool.wait()
    leftover = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "SNAKEPIT_RUN_ID": dead_run, "SNAKEPIT_WORKER_ID": "0"},
    )
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        found = sp.sweep_orphans(dry_run=True)
        assert [o.pid for o in found if o.run_id == dead_run] == [leftover.pid]
        assert pid_alive(leftover.pid)  # a dry run touches nothing
        assert all(o.pid != bystander.pid for o in found)

        # A pid that looks reused (another start time) is refused.
        stale = OrphanInfo(bystander.pid, dead_run, "0", "python", start_ticks=1)
        (result,) = kill_orphans([stale])
        assert not result.killed
        assert pid_alive(bystander.pid)

        swept = sp.sweep_orphans(dry_run=False)
        assert any(o.pid == leftover.pid and o.killed for o in swept)
        leftover.wait(timeout=5)
        assert pid_alive(bystander.pid)
    finally:
        leftover.kill()
        bystander.kill()
        leftover.wait()
        bystander.wait()


@pytest.mark.anyio
async def test_a_live_pool_has_no_orphans() -> None:
    async with sp.open_pool(sp.PythonAdapter(), size=2) as pool:
        mine = {w.pid for w in pool.workers()}
        assert not mine & {o.pid for o in sp.sweep_orphans(dry_run=True)}


# ---------------------------------------------------------------- health and recycling


@pytest.mark.anyio
async def test_recycling_by_request_count_fails_nothing() -> None:
    config = sp.PoolConfig(max_requests=5, shutdown_grace=1.0)
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=config) as pool:
        pids = set()
        with anyio.fail_after(30):
            for _ in range(22):
                pids.add((await pool.execute("getpid"))["pid"])
        assert len(pids) >= 4
        assert pool.stats()["errors"] == 0


@pytest.mark.anyio
async def test_health_pings_do_not_count_toward_max_requests() -> None:
    config = sp.PoolConfig(max_requests=3, shutdown_grace=1.0)
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=config) as pool:
        pids = [(await pool.execute("getpid"))["pid"] for _ in range(2)]
        await pool._health_check(pool._workers[0])  # a ping between two requests
        pids.append((await pool.execute("getpid"))["pid"])
        assert pids == [pids[0]] * 3
        assert pool.workers()[0].requests in (0, 3)  # recycled after the third, not before
        with anyio.fail_after(10):
            assert (await pool.execute("getpid"))["pid"] != pids[0]


@pytest.mark.anyio
async def test_recycling_by_memory() -> None:
    config = sp.PoolConfig(max_memory=150 * 2**20)
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=config) as pool:
        pid = pool.workers()[0].pid
        await pool.execute("allocate", {"mb": 200})
        with anyio.fail_after(10):
            assert (await pool.execute("getpid"))["pid"] != pid
        assert pool.stats()["errors"] == 0


@pytest.mark.anyio
async def test_recycling_by_lifetime() -> None:
    config = sp.PoolConfig(max_lifetime=0.5, health_check_interval=0.2)
    async with sp.open_pool(sp.PythonAdapter(), size=1, config=config) as pool:
        pid = pool.workers()[0].pid
        with anyio.fail_after(10):
            while pool.workers()[0].pid == pid or pool.workers()[0].state != "idle":
                await anyio.sleep(0.05)
        assert (await pool.execute("ping"))["status"] == "ok"


@pytest.mark.anyio
async def test_health_check_replaces_a_frozen_worker_but_not_a_busy_one() -> None:
    config = sp.PoolConfig(
        health_check_interval=0.2, health_check_timeout=0.3, kill_grace=0.3, shutdown_grace=0.3
    )
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=2, config=config) as pool:
        busy_pid = (await pool.execute_in_session("busy", "getpid"))["pid"]
        await pool.execute_in_session("busy", "block", {"seconds": 1.2})
        assert busy_pid in {w.pid for w in pool.workers()}  # a long command is not death

        frozen = next(w.pid for w in pool.workers() if w.pid != busy_pid)
        assert frozen is not None
        os.kill(frozen, signal.SIGSTOP)
        try:
            with anyio.fail_after(10):
                while frozen in {w.pid for w in pool.workers()}:
                    await anyio.sleep(0.05)
        finally:
            kill_quietly(frozen)
        assert not pid_alive(frozen) or wait_dead([frozen], 2.0) == []


@pytest.mark.anyio
async def test_restart_storm_trips_the_breaker(tmp_path: Path) -> None:
    marker = tmp_path / "crash"
    adapter = sp.PythonAdapter(
        "flaky_handlers:CrashOnStartHandler",
        env={"PYTHONPATH": HANDLERS, "CRASH_MARKER": str(marker)},
    )
    config = sp.PoolConfig(max_restarts=3, restart_window=30, restart_backoff=0.01)
    async with sp.open_pool(adapter, size=1, config=config) as pool:
        marker.touch()
        with pytest.raises(sp.WorkerCrashed):
            await pool.execute("die")
        with anyio.fail_after(10):
            while pool.workers()[0].state != "stopped":
                await anyio.sleep(0.05)
        start = time.monotonic()
        with pytest.raises(sp.StartupError, match="crash breaker is open"):
            await pool.execute("ping")
        assert time.monotonic() - start < 0.5
        assert pool.workers()[0].restarts == 3


def test_sweep_never_kills_a_process_with_a_foreign_run_id() -> None:
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={**os.environ, "SNAKEPIT_RUN_ID": "not-one-of-ours"},
    )
    try:
        time.sleep(0.2)
        assert all(o.pid != stranger.pid for o in sp.sweep_orphans(dry_run=False))
        assert pid_alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()
