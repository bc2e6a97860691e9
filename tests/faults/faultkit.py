"""Helpers of the reliability suite: hostile adapters, a tight config, and the checks every
fault test makes (a typed error in bounded time, bounded memory, a pool that keeps serving).

A plain module (not conftest) so that test modules can import it by name."""

from __future__ import annotations

import contextlib
import json
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

import snakepit_trio as sp

HOSTILE_BRIDGE = Path(__file__).resolve().parents[1] / "standins" / "hostile_bridge.py"

#: Every fault test body runs under ``anyio.fail_after(BOUND)``: a hang is a failure.
BOUND = 15.0

#: Tight enough that a broken worker is cleaned up fast, loose enough for a loaded machine.
FAULT_CONFIG = sp.PoolConfig(
    startup_timeout=5.0,
    worker_init_timeout=3.0,
    negotiation_timeout=1.0,
    queue_timeout=3.0,
    cancel_grace=0.3,
    shutdown_grace=0.3,
    kill_grace=0.3,
    restart_backoff=0.01,
    restart_backoff_max=0.05,
    health_check_interval=None,
)


class FaultKit:
    """Builds hostile adapters and reads what the stand-in recorded."""

    def __init__(self, tmp_path: Path) -> None:
        self.record = tmp_path / "frames.jsonl"
        self.marker = tmp_path / "poisoned"

    def adapter(
        self,
        fault: str = "none",
        *,
        at: str = "command",
        workers: str = "",
        protocol: str = "json",
        features: str = "",
        poison: bool = False,
        **adapter_options: Any,
    ) -> sp.Adapter:
        args = ["--fault", fault, "--at", at, "--workers", workers, "--protocol", protocol]
        if features:
            args += ["--features", features]
        if poison:
            args += ["--marker", str(self.marker)]
        env = {"STANDIN_RECORD": str(self.record), **adapter_options.pop("env", {})}
        wire = "auto" if protocol == "auto" else protocol
        return sp.Adapter(
            sys.executable, HOSTILE_BRIDGE, args, wire=wire, env=env, **adapter_options
        )

    def frames(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def starts(self, worker: str | None = None) -> int:
        """How many bridge processes started (for one worker slot, or all)."""
        return sum(
            1
            for f in self.frames()
            if f["phase"] == "start" and (worker is None or f["worker"] == worker)
        )


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    with anyio.move_on_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def assert_pool_serves(pool: sp.Pool, calls: int = 6) -> None:
    """Healthy calls succeed (on whichever workers are up) and the pool is whole again."""
    for i in range(calls):
        result = await pool.execute("echo", {"i": i}, timeout=5.0)
        assert result == {"status": "ok", "command": "echo", "args": {"i": i}}
    await wait_until(
        lambda: pool.stats()["workers"] == pool.size and pool.stats()["available"] == pool.size,
        f"all {pool.size} workers to be serving again",
    )
    for i in range(calls):
        assert (await pool.execute("echo", {"i": i}, timeout=5.0))["args"] == {"i": i}


@contextlib.contextmanager
def traced_peak() -> Iterator[Callable[[], int]]:
    """Track the peak of Python allocations in this process while the block runs."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    peak = 0

    def read() -> int:
        return peak

    try:
        yield read
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if not was_tracing:
            tracemalloc.stop()


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
