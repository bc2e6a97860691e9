"""The lifeline fires whatever the handler does, even while it holds the GIL.

A handler stuck in C code (a catastrophic regular expression, a long builtin loop) never lets
another Python thread run, so a lifeline watched by a thread of the worker cannot fire. The
bridge forks a small watcher process at start; these tests SIGKILL the pool's process while
its worker holds the GIL and expect the worker and its children gone within the lifeline's
grace plus one second (plus slack for a loaded machine; a worker that is never killed fails).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from proc_support import kill_quietly, pid_alive, wait_dead

GRACE = 0.5
# The guarantee is GRACE + 1 s; the rest is slack for a loaded 2-vCPU machine.
BOUND = GRACE + 1.0 + 3.0

HANDLER = textwrap.dedent(
    """
    import os, re

    from snakepit_trio_bridge.testing import TestingHandler


    class GilHandler(TestingHandler):
        def _register_commands(self):
            super()._register_commands()
            self.register_command("hold_gil", self.handle_hold_gil)

        def handle_hold_gil(self, args):
            with open(args["marker"], "w") as f:
                f.write(str(os.getpid()))
            if args["how"] == "regex":  # exponential backtracking, all inside _sre
                re.match(r"(a+)+$", "a" * 40 + "b")
            else:  # one builtin call that runs for hours without releasing the GIL
                sum(range(10**14))
            return {"done": True}
    """
)

PARENT = textwrap.dedent(
    """
    import sys, anyio, snakepit_trio as sp
    backend, transport, how, handlers, marker, grace = sys.argv[1:7]
    async def main():
        config = sp.PoolConfig(shutdown_grace=float(grace), kill_grace=0.5)
        make = sp.GrpcPythonAdapter if transport == "grpc" else sp.PythonAdapter
        adapter = make("gil_handler:GilHandler", env={"PYTHONPATH": handlers})
        async with sp.open_pool(adapter, size=1, config=config) as pool:
            worker = (await pool.execute("getpid"))["pid"]
            child = (await pool.execute("spawn_child"))["pid"]
            print(worker, child, flush=True)
            args = {"how": how, "marker": marker}
            await pool.execute("hold_gil", args, timeout=600)
    anyio.run(main, backend=backend)
    """
)


@pytest.mark.parametrize(
    ("transport", "how", "backend"),
    [
        ("stdio", "regex", "trio"),
        ("stdio", "c_loop", "asyncio"),
        ("grpc", "regex", "asyncio"),
        ("grpc", "c_loop", "trio"),
    ],
)
def test_pool_sigkilled_while_a_handler_holds_the_gil(
    tmp_path: Path, transport: str, how: str, backend: str
) -> None:
    if transport == "grpc":
        pytest.importorskip("grpclib")
    (tmp_path / "gil_handler.py").write_text(HANDLER)
    marker = tmp_path / "holding"
    argv = [sys.executable, "-c", PARENT, backend, transport, how]
    argv += [str(tmp_path), str(marker), str(GRACE)]
    parent = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the handler never started"
        time.sleep(0.2)  # well inside the C call now
        parent.kill()
        parent.wait()
        killed = time.monotonic()
        assert wait_dead(pids, BOUND) == [], "the lifeline did not fire"
        # Generous on purpose: the point is that it fires at all, and about when it should.
        assert time.monotonic() - killed < BOUND
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            kill_quietly(pid)
