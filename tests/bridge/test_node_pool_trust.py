"""The Node bridge under a real pool (issue 14): slow and broken modules, and a SIGKILLed pool.

Each test starts real ``node`` workers through ``sp.open_pool(sp.NodeAdapter(...))``. The
lifeline test runs the pool in a subprocess of its own, SIGKILLs it while a handler spins in a
synchronous loop, and checks that the worker and its child are gone within the grace plus 1 s.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from proc_support import kill_quietly, pid_alive, wait_dead

import snakepit_trio as sp

pytestmark = [
    pytest.mark.node,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed"),
]

# Loading blocks the whole bridge for `LOAD_SECONDS` (a synchronous model load), then an async
# init takes `INIT_SECONDS` more; `ready` says whether the init was awaited.
SLOW_MODULE = textwrap.dedent(
    """
    'use strict';
    const nap = new Int32Array(new SharedArrayBuffer(4));
    Atomics.wait(nap, 0, 0, Number(process.env.LOAD_SECONDS) * 1000);
    let ready = false;
    module.exports = {
      async init() {
        await new Promise((resolve) => setTimeout(resolve, Number(process.env.INIT_SECONDS) * 1000));
        ready = true;
      },
      commands: { ready: () => ready },
    };
    """
)

NEVER_READY_MODULE = textwrap.dedent(
    """
    'use strict';
    module.exports = {
      init: () => new Promise(() => {}),
      commands: { hello: () => 'hello' },
    };
    """
)

BROKEN_MODULE = "'use strict';\n\nthrow new Error('BROKEN-MODULE');\n"

SPIN_MODULE = textwrap.dedent(
    """
    'use strict';
    const fs = require('node:fs');
    module.exports = {
      commands: {
        spawn_sleeper() {
          const child = require('node:child_process').spawn('sleep', ['600'], { stdio: 'ignore' });
          return { pid: child.pid };
        },
        spin(args) {
          fs.writeFileSync(args.marker, 'spinning');
          for (;;) {}
        },
      },
    };
    """
)


@pytest.mark.anyio
async def test_a_module_slower_than_negotiation_timeout_starts(tmp_path: Path) -> None:
    module = tmp_path / "slow.js"
    module.write_text(SLOW_MODULE)
    # 1.5 s of blocking load + 1.5 s of async init, against a negotiation_timeout of 2 s:
    # only the init ping waits for them, under worker_init_timeout.
    adapter = sp.NodeAdapter(module, env={"LOAD_SECONDS": "1.5", "INIT_SECONDS": "1.5"})
    config = sp.PoolConfig(negotiation_timeout=2.0, worker_init_timeout=30.0)
    with anyio.fail_after(40):
        async with sp.open_pool(adapter, size=1, config=config) as pool:
            assert await pool.execute("ready") is True
            assert (await pool.execute("compute", {"a": 1, "b": 2}))["result"] == 3


@pytest.mark.anyio
async def test_module_init_is_bounded_by_worker_init_timeout(tmp_path: Path) -> None:
    module = tmp_path / "never.js"
    module.write_text(NEVER_READY_MODULE)
    config = sp.PoolConfig(worker_init_timeout=1.0)
    with anyio.fail_after(30), pytest.raises(sp.StartupError):
        async with sp.open_pool(sp.NodeAdapter(module), size=1, config=config):
            pass


@pytest.mark.anyio
async def test_a_broken_module_reaches_the_pool_with_its_cause(tmp_path: Path) -> None:
    module = tmp_path / "broken.js"
    module.write_text(BROKEN_MODULE)
    with anyio.fail_after(30), pytest.raises(sp.StartupError) as caught:
        async with sp.open_pool(sp.NodeAdapter(module), size=1):
            pass
    told = f"{caught.value} {caught.value.stderr_tail}"
    assert "BROKEN-MODULE" in told and f"{module}:3" in told, told


PARENT = textwrap.dedent(
    """
    import sys, anyio, snakepit_trio as sp
    async def main():
        config = sp.PoolConfig(shutdown_grace=float(sys.argv[3]), kill_grace=0.5)
        async with sp.open_pool(sp.NodeAdapter(sys.argv[2]), size=1, config=config) as pool:
            pids = [w.pid for w in pool.workers()]
            pids.append((await pool.execute("spawn_sleeper"))["pid"])
            print(" ".join(map(str, pids)), flush=True)
            await pool.execute("spin", {"marker": sys.argv[4]})
    anyio.run(main, backend=sys.argv[1])
    """
)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_pool_sigkilled_while_a_node_handler_spins(tmp_path: Path, backend: str) -> None:
    module = tmp_path / "spin.js"
    module.write_text(SPIN_MODULE)
    marker = tmp_path / "spinning"
    grace = 0.5
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, backend, str(module), str(grace), str(marker)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert marker.exists(), "the handler never started spinning"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        # The point is the bound: the lifeline's grace (shutdown_grace) plus one second.
        assert wait_dead(pids, grace + 1.0) == [], "the worker outlived its pool"
    finally:
        parent.kill()
        parent.wait()
        for pid in pids:
            kill_quietly(pid)
