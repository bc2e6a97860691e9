"""Hardened mode: a nanny per worker kills even descendants that escaped the process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from select import select

import anyio
import pytest
import snakepit_trio_bridge.nanny as nanny
from proc_support import kill_quietly, pid_alive, wait_dead

import snakepit_trio as sp
from snakepit_trio._process import spawn_worker

TESTING = "snakepit_trio_bridge.testing:TestingHandler"
HARDENED = sp.PoolConfig(hardened=True, shutdown_grace=0.5, kill_grace=0.5)


@pytest.mark.anyio
async def test_escaped_grandchildren_die_with_the_pool() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=HARDENED) as pool:
        assert (await pool.execute("ping"))["status"] == "ok"
        escaped = (await pool.execute("spawn_child", {"new_session": True}))["pid"]
        worker = (await pool.execute("getpid"))["pid"]
        assert pool.workers()[0].pid != worker  # the pool sees the nanny
    try:
        assert wait_dead([escaped, worker], 3.0) == []
    finally:
        kill_quietly(escaped)


@pytest.mark.anyio
async def test_crash_and_restart_under_a_nanny() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=HARDENED) as pool:
        escaped = (await pool.execute("spawn_child", {"new_session": True}))["pid"]
        with pytest.raises(sp.WorkerCrashed) as info:
            await pool.execute("crash", {"code": 9})
        assert info.value.exit_code == 9
        with anyio.fail_after(10):
            assert (await pool.execute("ping"))["status"] == "ok"
    try:
        assert wait_dead([escaped], 3.0) == []
    finally:
        kill_quietly(escaped)


PARENT = textwrap.dedent(
    """
    import anyio, snakepit_trio as sp
    async def main():
        config = sp.PoolConfig(hardened=True, shutdown_grace=0.3, kill_grace=0.3)
        adapter = sp.PythonAdapter("snakepit_trio_bridge.testing:TestingHandler")
        async with sp.open_pool(adapter, size=1, config=config) as pool:
            await pool.execute("ignore_sigterm")
            pids = [(await pool.execute("getpid"))["pid"], pool.workers()[0].pid]
            pids.append((await pool.execute("spawn_child", {"new_session": True}))["pid"])
            print(" ".join(map(str, pids)), flush=True)
            await pool.execute("block", {"seconds": 600})
    anyio.run(main)
    """
)


def test_parent_sigkilled_escaped_and_stubborn_descendants_die() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3 and all(pid_alive(p) for p in pids)
        time.sleep(0.2)
        parent.kill()
        parent.wait()
        assert wait_dead(pids, 5.0) == []
    finally:
        parent.kill()
        for pid in pids:
            kill_quietly(pid)


@pytest.mark.anyio
async def test_the_worker_dies_with_a_killed_nanny_and_is_replaced() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=HARDENED) as pool:
        nanny = pool.workers()[0].pid
        worker = (await pool.execute("getpid"))["pid"]
        assert nanny is not None and worker != nanny
        os.kill(nanny, signal.SIGKILL)
        try:
            assert wait_dead([worker], 2.0) == []  # its death signal: SIGKILL, at once
            with anyio.fail_after(20):
                while True:
                    with contextlib.suppress(sp.WorkerCrashed):
                        replacement = (await pool.execute("getpid"))["pid"]
                        break
            assert replacement != worker
            pids = [replacement, *(w.pid for w in pool.workers() if w.pid is not None)]
        finally:
            kill_quietly(worker)
    assert wait_dead([nanny, worker, *pids], 3.0) == []


@pytest.mark.anyio
async def test_a_killed_nanny_leaves_nothing_of_the_worker_group_after_the_block() -> None:
    async with sp.open_pool(sp.PythonAdapter(TESTING), size=1, config=HARDENED) as pool:
        nanny = pool.workers()[0].pid
        worker = (await pool.execute("getpid"))["pid"]
        child = (await pool.execute("spawn_child"))["pid"]  # in the worker's process group
        assert nanny is not None and pid_alive(child)
        os.kill(nanny, signal.SIGKILL)
        try:
            assert wait_dead([worker], 2.0) == []
        finally:
            kill_quietly(worker)
    # The worker's lifeline watcher outlives the worker while its group is not empty, and
    # kills the group once the pool lets go of the lifeline.
    try:
        assert wait_dead([nanny, worker, child], 3.0) == []
    finally:
        kill_quietly(child)


CHILD = (
    "import os, sys; "
    "print(os.getpid(), os.getppid(), os.environ.get('SNAKEPIT_CHILD_PID_FD'), flush=True); "
    "sys.stdin.read()"
)


@pytest.mark.parametrize("report", [True, False])
def test_the_nanny_reports_the_pid_of_the_program_it_runs(report: bool) -> None:
    argv = [sys.executable, "-I", "-S", nanny.__file__, "--", sys.executable, "-c", CHILD]
    proc = spawn_worker(argv, env=dict(os.environ), cwd=None, lifeline=False, report_child=report)
    try:
        out = b""
        while not out.endswith(b"\n"):
            assert select([proc.stdout_fd], [], [], 10)[0]
            out += os.read(proc.stdout_fd, 100)
        pid, ppid, seen = out.decode().split()
        assert int(ppid) == proc.pid and seen == "None", out  # the program never sees the pipe
        assert proc.child_pid() == (int(pid) if report else None)
        assert proc.child_pid() == (int(pid) if report else None)  # cached
        if report:
            names = os.listdir(f"/proc/{pid}/fd")
            assert sorted(names) == ["0", "1", "2"]  # nor holds it
    finally:
        proc.kill_now()
        proc.close()
