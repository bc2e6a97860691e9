"""Chaos soak: many tasks, mixed requests, workers killed at random.

Checked: every request has exactly one outcome (a result or a typed error; never a hang,
never a duplicate), no process is left behind, the pool process's fds and RSS come back to
their baseline, and the stats add up. CI runs a short soak; ``SNAKEPIT_SOAK=full`` (or
``nox -s soak``) runs 20,000 requests.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time

import anyio
import pytest
from proc_support import pid_alive

import snakepit_trio as sp

pytestmark = pytest.mark.anyio

FULL = os.environ.get("SNAKEPIT_SOAK") == "full"
TOTAL = 20_000 if FULL else 6_000
TASKS = 64


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def one_request(pool: sp.Pool, n: int, rng: random.Random) -> str:
    """Run one randomly chosen request; return its outcome's name."""
    kind = rng.choice(["echo", "echo", "session", "sleep", "stream", "stream_break", "cancel"])
    if kind == "echo":
        result = await pool.execute("echo", {"n": n})
        assert result["echoed"] == {"n": n}
        return "ok"
    if kind == "session":
        result = await pool.execute_in_session(f"s{n % 16}", "echo", {"n": n})
        assert result["echoed"]["n"] == n
        return "ok"
    if kind == "sleep":
        await pool.execute("sleep", {"seconds": rng.uniform(0, 0.01)})
        return "ok"
    if kind == "stream":
        async with pool.stream("ping_stream", {"count": 5, "interval": 0}) as chunks:
            got = [c["ping_number"] async for c in chunks]
        assert got == [1, 2, 3, 4, 5]
        return "ok"
    if kind == "stream_break":
        async with pool.stream("ping_stream", {"count": 1000, "interval": 0.001}) as chunks:
            async for _ in chunks:
                break
        return "cancelled"
    with anyio.move_on_after(rng.uniform(0, 0.01)):
        await pool.execute("sleep", {"seconds": 0.05})
        return "ok"
    return "cancelled"


@pytest.mark.parametrize("in_flight", [1, 8], ids=["one-in-flight", "multiplexed"])
async def test_chaos_soak(in_flight: int) -> None:
    config = sp.PoolConfig(
        max_in_flight=in_flight,
        queue_timeout=30,
        max_queue=TASKS,
        max_restarts=10_000,
        restart_backoff=0.01,
        cancel_grace=0.5,
        shutdown_grace=1.0,
        kill_grace=1.0,
    )
    rng = random.Random(20261123)
    fds_before, rss_before = open_fds(), rss()
    outcomes: collections.Counter[str] = collections.Counter()
    done: dict[int, str] = {}
    seen_pids: set[int] = set()
    kills = 0
    start = time.monotonic()
    counter = iter(range(TOTAL))

    async with sp.open_pool(sp.PythonAdapter(), size=4, config=config) as pool:

        async def client() -> None:
            for n in counter:
                try:
                    outcome = await one_request(pool, n, rng)
                except sp.SnakepitError as exc:
                    outcome = type(exc).__name__
                assert n not in done, f"request {n} had two outcomes"
                done[n] = outcome
                outcomes[outcome] += 1

        async def killer() -> None:
            nonlocal kills
            while True:
                await anyio.sleep(rng.uniform(0.05, 0.25))
                serving = ("idle", "busy", "cancelling")
                live = [w.pid for w in pool.workers() if w.pid and w.state in serving]
                if live:
                    victim = rng.choice(live)
                    try:
                        os.kill(victim, signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass

        async def watch_pids() -> None:
            while True:
                seen_pids.update(w.pid for w in pool.workers() if w.pid)
                await anyio.sleep(0.01)

        with anyio.fail_after(600 if FULL else 240):
            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                tg.start_soon(watch_pids)
                async with anyio.create_task_group() as clients:
                    for _ in range(TASKS):
                        clients.start_soon(client)
                tg.cancel_scope.cancel()
        stats = pool.stats()
    duration = time.monotonic() - start

    assert sorted(done) == list(range(TOTAL))  # every request: exactly one outcome
    allowed = {"ok", "cancelled", "WorkerCrashed", "ProtocolError", "QueueTimeout", "WorkerTimeout"}
    assert set(outcomes) <= allowed, outcomes
    assert kills > 0
    assert stats["requests"] == stats["successes"] + stats["errors"]
    assert stats["successes"] == outcomes["ok"]
    assert (
        stats["errors"]
        == outcomes["WorkerCrashed"] + outcomes["ProtocolError"] + outcomes["WorkerTimeout"]
    )
    assert stats["queue_timeouts"] == outcomes["QueueTimeout"]
    assert stats["cancelled"] <= outcomes["cancelled"]  # some were cancelled before being sent

    orphans = [p for p in seen_pids if pid_alive(p)]
    assert orphans == []
    fds_after, rss_after = open_fds(), rss()
    assert fds_after <= fds_before + 2
    assert rss_after - rss_before < 40 * 2**20
    print(
        f"\nsoak ({in_flight} in flight): {TOTAL} requests in {duration:.1f} s, outcomes {dict(outcomes)}, kills {kills}, "
        f"workers seen {len(seen_pids)}, orphans {len(orphans)}, fds {fds_before}->{fds_after}, "
        f"rss {rss_before / 2**20:.1f}->{rss_after / 2**20:.1f} MiB"
    )
