"""``demo``: a few-second tour of the pool on this machine, needing nothing but this package."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from typing import TextIO

import anyio

import snakepit_trio as sp

from .._progress import Progress
from ._common import EXIT_OK, PROG, CliError, Style, describe, dist_version, ms, run_async, table

__all__ = ["cmd_demo"]


class _Tour:
    """Prints the demo's steps: a tag column, then what happened."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.style = Style(out)

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def step(self, tag: str, text: str) -> None:
        self.line(f"  {self.style.bold(f'{tag:<9}')} {text}")

    def note(self, tag: str, text: str) -> None:
        self.line(f"  {self.style.bold(f'{tag:<9}')} {self.style.warn(text)}")


def _session_pid(pool: sp.Pool, session_id: str) -> int | None:
    session = pool.sessions.get_session(session_id)
    if session is None or session.last_worker_id is None:
        return None
    return pool.workers()[session.last_worker_id].pid


async def _demo(ns: argparse.Namespace, tour: _Tour) -> None:
    size = ns.workers or max(2, min(4, 2 * (os.cpu_count() or 1)))
    style = tour.style
    tour.line(
        style.bold(f"snakepit-trio {sp.__version__} demo")
        + style.dim(f"  (Python {sys.version.split()[0]}, trio {dist_version('trio')})")
    )
    tour.line()
    began = time.perf_counter()
    async with sp.open_pool(sp.PythonAdapter(), size=size) as pool:
        ready = time.perf_counter() - began
        live = [w for w in pool.workers() if w.pid is not None]
        wire = live[0].protocol if live else "?"
        tour.step(
            "start",
            f"{len(live)} Python workers started concurrently, ready in {ms(ready)} "
            f"(wire: {wire}; features: {', '.join(sorted(pool.features)) or 'none'})",
        )

        trips = []
        for _ in range(20):
            t = time.perf_counter()
            pong = await pool.execute("ping")
            trips.append(time.perf_counter() - t)
        tour.step(
            "ping",
            f"status {pong['status']!r}; round trip {ms(statistics.median(trips))} "
            f"(median of {len(trips)}, first {ms(trips[0])})",
        )

        calls = 2 * size
        t = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(pool.execute, "sleep", {"seconds": 0.2})
        tour.step(
            "parallel",
            f"{calls} concurrent sleep(0.2 s) calls on {size} workers took "
            f"{ms(time.perf_counter() - t)} (one after another: {calls * 0.2:.1f} s)",
        )

        product = await pool.execute("compute", {"operation": "multiply", "a": 6, "b": 7})
        try:
            await pool.execute("compute", {"operation": "divide", "a": 1, "b": 0})
            failure = "no error?"
        except sp.CommandError as exc:
            failure = f"CommandError({exc.error_type}: {exc.message})"
        tour.step("compute", f"6 * 7 = {product['result']}; 1 / 0 raises {failure}")

        blob = os.urandom(256 * 1024)
        t = time.perf_counter()
        echoed = await pool.execute("echo", {"blob": blob})
        elapsed = time.perf_counter() - t
        back = echoed["echoed"]["blob"]
        if back != blob:
            raise CliError("echo returned different bytes than it was sent")
        tour.step(
            "bytes",
            f"256 KiB of random bytes echoed back identical over {wire} "
            f"(sha256 {hashlib.sha256(back).hexdigest()[:16]}) in {ms(elapsed)}",
        )

        first = await pool.execute_in_session("demo-user", "info")
        second = await pool.execute_in_session("demo-user", "info")
        pids = (first["system_info"]["pid"], second["system_info"]["pid"])
        if pids[0] != pids[1]:
            raise CliError(f"session affinity failed: pids {pids[0]} then {pids[1]}")
        tour.step("session", f"two calls in session 'demo-user' both ran on worker pid {pids[0]}")

        items = [f"photo-{i:02d}.jpg" for i in range(24)]
        predictions: Counter[str] = Counter()
        t = time.perf_counter()
        with Progress("  batch_inference", len(items)) as bar:
            async with pool.stream("batch_inference", {"items": items, "delay": 0.04}) as chunks:
                async for chunk in chunks:
                    predictions[chunk["prediction"]] += 1
                    bar.update(chunk["index"] + 1, chunk["item"])
        tour.step(
            "stream",
            f"batch_inference streamed {chunks.count} chunks in {ms(time.perf_counter() - t)}: "
            f"{dict(sorted(predictions.items()))}, final value {chunks.result}",
        )

        await _demo_cancel(tour, pool)

        if ns.no_node:
            tour.note("node", "skipped (--no-node)")
        elif shutil.which("node") is None:
            tour.note("node", "skipped: 'node' is not on PATH (install Node.js 18+ to try it)")
        else:
            await _demo_node(tour)

        _show_stats(tour, pool)
    tour.line()
    tour.line(
        style.good(f"demo finished in {ms(time.perf_counter() - began)}")
        + style.dim("; every worker was shut down on leaving the pool's `async with`")
    )


async def _demo_cancel(tour: _Tour, pool: sp.Pool) -> None:
    """Leave a long stream early, then show which worker serves the session's next call."""
    total = 10_000
    async with pool.stream(
        "batch_inference",
        {"items": list(range(total)), "delay": 0.01},
        session_id="demo-cancel",
    ) as chunks:
        async for chunk in chunks:
            if chunk["index"] == 4:
                break
    left = time.perf_counter()
    pid = _session_pid(pool, "demo-cancel")
    while time.perf_counter() - left < pool.config.cancel_grace + 1:
        states = {w.pid: w.state for w in pool.workers()}
        if states.get(pid) == "idle":
            break
        await anyio.sleep(0.002)
    confirmed = time.perf_counter() - left
    after = await pool.execute_in_session("demo-cancel", "info")
    server = after["system_info"]["pid"]
    outcome = (
        f"worker pid {pid} confirmed the cancel in {ms(confirmed)} and served the next request"
        if server == pid
        else f"worker pid {pid} was replaced; pid {server} served the next request"
    )
    tour.step("cancel", f"left a {total}-item stream after {chunks.count} chunks; {outcome}")


def _show_stats(tour: _Tour, pool: sp.Pool) -> None:
    style = tour.style
    tour.line()
    tour.line(style.bold("  pool.stats()"))
    stats = pool.stats()
    keys = list(stats)
    half = (len(keys) + 1) // 2
    rows = [
        [
            keys[i],
            stats[keys[i]],
            *((keys[i + half], stats[keys[i + half]]) if i + half < len(keys) else ()),
        ]
        for i in range(half)
    ]
    for text in table(rows):
        tour.line(text)
    tour.line()
    tour.line(style.bold("  pool.workers()"))
    rows = [["id", "pid", "state", "requests", "rss"]]
    rows += [
        [w.id, w.pid, w.state, w.requests, f"{w.rss / 2**20:.1f} MiB" if w.rss else "-"]
        for w in pool.workers()
    ]
    for text in table(rows):
        tour.line(text)


async def _demo_node(tour: _Tour) -> None:
    began = time.perf_counter()
    try:
        async with sp.open_pool(sp.NodeAdapter(), size=1) as pool:
            ready = time.perf_counter() - began
            pong = await pool.execute("ping")
            power = await pool.execute("compute", {"operation": "power", "a": 2, "b": 10})
            wire = pool.workers()[0].protocol
    except sp.SnakepitError as exc:
        tour.note("node", f"the Node bridge failed: {describe(exc)} (see `{PROG} doctor`)")
        return
    version = pong.get("node_version", "?")
    tour.step(
        "node",
        f"Node {version} bridge ready in {ms(ready)} (wire: {wire}): ping {pong['status']!r}, "
        f"compute 2 ** 10 = {power['result']}",
    )


def cmd_demo(ns: argparse.Namespace) -> int:
    run_async(_demo, ns, _Tour(sys.stdout))
    return EXIT_OK
