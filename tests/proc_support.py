"""Process helpers shared by the tests."""

from __future__ import annotations

import os
import signal


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as dead: this sandbox reaps lazily)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def wait_dead(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid is gone; return those still alive at the deadline."""
    import time

    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        if alive:
            time.sleep(0.02)
    return alive
