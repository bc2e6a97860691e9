"""Finding and killing workers whose pool is gone (Linux ``/proc``).

Every worker a pool starts carries ``SNAKEPIT_RUN_ID=<pool pid>-<pool start, epoch s>-<random>``
in its environment, and so do the processes it spawns. A process is an orphan when the pool
named by its run id is no longer running: no process has that pid, or the one that has it
started after the run began (the pid was reused). Before killing, the candidate's own start
time and environment are read again, so a pid reused in between is never touched.
"""

from __future__ import annotations

import os
import signal
import time

import attrs
from snakepit_bridge.protocol.constants import ENV_RUN_ID, ENV_WORKER_ID

__all__ = ["OrphanInfo", "kill_orphans", "sweep_orphans"]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@attrs.frozen
class OrphanInfo:
    """A leftover process of a dead pool."""

    pid: int
    run_id: str
    worker_id: str | None
    cmdline: str
    start_ticks: int
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22)."""
    killed: bool = False


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0  # pragma: no cover


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start ticks) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode(), int(fields[19])
    except (IndexError, ValueError):
        return None


def _environ(pid: int) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key in (ENV_RUN_ID.encode(), ENV_WORKER_ID.encode()):
            env[key.decode()] = value.decode("utf-8", "replace")
    return env


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _pool_alive(run_id: str, boot_time: float) -> bool:
    """Whether the pool process named in ``run_id`` still runs."""
    try:
        pool_pid_text, started_text, _ = run_id.split("-", 2)
        pool_pid, run_started = int(pool_pid_text), int(started_text)
    except ValueError:
        return True  # not a run id we wrote: never treat its owner as dead
    stat = _stat(pool_pid)
    if stat is None or stat[0] == "Z":
        return False
    pool_started = boot_time + stat[1] / _CLK_TCK
    # The pool process must have started before the run began (else the pid was reused).
    return pool_started <= run_started + 1


def find_orphans() -> list[OrphanInfo]:
    """Every live process that carries a run id whose pool is gone (zombies excluded)."""
    boot = _boot_time()
    me = os.getpid()
    alive_cache: dict[str, bool] = {}
    found: list[OrphanInfo] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == me:
            continue
        env = _environ(pid)
        if not env or ENV_RUN_ID not in env:
            continue
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":
            continue
        run_id = env[ENV_RUN_ID]
        if run_id not in alive_cache:
            alive_cache[run_id] = _pool_alive(run_id, boot)
        if alive_cache[run_id]:
            continue
        found.append(OrphanInfo(pid, run_id, env.get(ENV_WORKER_ID), _cmdline(pid), stat[1]))
    return found


def kill_orphans(orphans: list[OrphanInfo]) -> list[OrphanInfo]:
    """SIGKILL each orphan after checking it is still the same process (start time and run id).

    Returns the list with ``killed`` set; a process that changed is left alone.
    """
    result: list[OrphanInfo] = []
    for orphan in orphans:
        stat = _stat(orphan.pid)
        env = _environ(orphan.pid)
        same = (
            stat is not None
            and stat[0] != "Z"
            and stat[1] == orphan.start_ticks
            and env is not None
            and env.get(ENV_RUN_ID) == orphan.run_id
        )
        killed = False
        if same:
            try:
                os.kill(orphan.pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        result.append(attrs.evolve(orphan, killed=killed))
    return result


def sweep_orphans(*, dry_run: bool = True, wait: float = 1.0) -> list[OrphanInfo]:
    """Find leftovers of dead pools; with ``dry_run=False`` kill them (verified first).

    Returns what was found (``killed`` tells what was killed). Waits up to ``wait`` seconds
    for killed processes to disappear.
    """
    orphans = find_orphans()
    if dry_run or not orphans:
        return orphans
    result = kill_orphans(orphans)
    deadline = time.monotonic() + wait
    pending = [o for o in result if o.killed]
    while pending and time.monotonic() < deadline:
        pending = [o for o in pending if (s := _stat(o.pid)) is not None and s[0] != "Z"]
        if pending:
            time.sleep(0.01)
    return result
